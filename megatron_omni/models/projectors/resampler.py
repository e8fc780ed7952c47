"""3D-Resampler (MiniCPM-V 4.5 style): a fixed number of learnable queries cross-attend to an
image's patch tokens, or jointly to a *package* of consecutive video frames.

Shapes (Q = num_queries, F = frames_per_package, N = patches per frame = grid_h * grid_w)::

    image  [b, N, kv_dim]     -> [b, Q, output_size]                 compression N / Q
    video  [b, T, N, kv_dim]  -> [b, ceil(T / F), Q, output_size]    compression F * N / Q

At the plan's shapes (SigLIP/14 at 448 px: N = 32 × 32 = 1024, Q = 64, F = 6) that is 16× for an
image and 96× for video (6 × 1024 → 64). An image is a package of one frame.

Per package (keys/values = the package's F*N tokens; a last, partial package is padded and the
padding masked out)::

    kv   = LayerNorm(kv_proj(x))                               [F*N, D]
    keys = kv + spatial(h, w) + temporal(frame index in package)   (fixed 2-D / 1-D sin-cos, D wide)
    out  = proj(LayerNorm(MultiheadAttention(LayerNorm(queries), keys, kv)))   [Q, output_size]

The spatial table gives row h the first D/2 channels and column w the last D/2 (each a 1-D
sin-cos table, MAE-style: [sin(p·ω) | cos(p·ω)], ω_i = 10000^(-i/(D/4))). Positions go on the keys
only, as in MiniCPM-V. Parameters are replicated over tensor-parallel ranks.
"""
from __future__ import annotations

import math

import torch

from megatron_omni.contract.projectors import VISION_PROJECTORS


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[len(positions), dim]`` table ``[sin(p·ω) | cos(p·ω)]`` with ω_i = 10000^(-i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embeddings need an even width; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """``[grid_h * grid_w, dim]`` row-major table: row embedding in the first half, column in the second."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need a width divisible by 4; got {dim}")
    rows = sincos_1d(torch.arange(grid_h), dim // 2)[:, None, :].expand(grid_h, grid_w, dim // 2)
    cols = sincos_1d(torch.arange(grid_w), dim // 2)[None, :, :].expand(grid_h, grid_w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, dim)


class Resampler3D(torch.nn.Module):
    """Learnable-query cross-attention compressor for images and packages of video frames.

    Args:
        num_queries: Q, output tokens per image / per package (64 in the plan).
        embed_dim: D, width of queries and attention (divisible by 4 and by num_heads).
        num_heads: attention heads.
        kv_dim: width of the encoder features (e.g. 1152 for SigLIP so400m).
        output_size: width of the output tokens (the LLM hidden size).
        frames_per_package: F, video frames compressed jointly (6 in the plan).
    """

    trainable_group = "projectors"
    """Parameter group for training.trainable (training/freeze.py)."""
    layouts = (VISION_PROJECTORS["resampler"],)
    """Its registry entry: num_queries tokens on a square grid per package of frames."""

    @classmethod
    def for_encoder(cls, omni, encoder, output_size: int, dtype: torch.dtype) -> Resampler3D:
        """The resampler of model.omni (image_tokens queries, resampler_heads, frames_per_package)
        after `encoder`, output_size wide."""
        return cls(omni.image_tokens, output_size, omni.resampler_heads, encoder.cfg.hidden_size,
                   output_size, omni.frames_per_package).to(dtype)

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int, output_size: int,
                 frames_per_package: int = 6, layer_norm_eps: float = 1e-6):
        super().__init__()
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"Resampler3D: embed_dim={embed_dim} must be divisible by 4 and by "
                             f"num_heads={num_heads}")
        self.num_queries, self.embed_dim, self.kv_dim = num_queries, embed_dim, kv_dim
        self.frames_per_package = frames_per_package
        self.query = torch.nn.Parameter(torch.empty(num_queries, embed_dim))
        torch.nn.init.trunc_normal_(self.query, std=0.02)
        self.kv_proj = torch.nn.Linear(kv_dim, embed_dim, bias=False)
        self.ln_q = torch.nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.ln_kv = torch.nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attn = torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_post = torch.nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.proj = torch.nn.Linear(embed_dim, output_size, bias=False)

    def forward(self, features: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Images ``[b, N, kv_dim]`` → ``[b, Q, out]``; video ``[b, T, N, kv_dim]`` →
        ``[b, ceil(T / F), Q, out]``. ``grid_hw`` is the patch grid (default: square, N = g²)."""
        if features.dim() not in (3, 4) or features.shape[-1] != self.kv_dim:
            raise ValueError(f"Resampler3D expects images [b, N, {self.kv_dim}] or video "
                             f"[b, T, N, {self.kv_dim}]; got {tuple(features.shape)}")
        if features.dim() == 3:
            return self._resample(features[:, None], grid_hw)[:, 0]
        return self._resample(features, grid_hw)

    def _grid(self, n: int, grid_hw: tuple[int, int] | None) -> tuple[int, int]:
        if grid_hw is None:
            side = math.isqrt(n)
            grid_hw = (side, side)
        if grid_hw[0] * grid_hw[1] != n:
            raise ValueError(f"Resampler3D: {n} tokens per frame do not form a grid {grid_hw}; pass grid_hw")
        return grid_hw

    def _resample(self, video: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, t, n, _ = video.shape
        f = min(self.frames_per_package, t)
        packages = -(-t // f)
        pad = packages * f - t
        if pad:
            video = torch.cat([video, video.new_zeros(b, pad, n, self.kv_dim)], dim=1)
        kv = self.ln_kv(self.kv_proj(video.reshape(b * packages, f, n, self.kv_dim)))  # [bP, F, N, D]
        pos = (sincos_2d(*self._grid(n, grid_hw), self.embed_dim)[None, :, :]
               + sincos_1d(torch.arange(f), self.embed_dim)[:, None, :]).to(kv)   # [F, N, D]
        keys = (kv + pos).flatten(1, 2)
        padding = torch.arange(packages * f, device=video.device).repeat(b, 1) >= t   # [b, P*F]
        padding = padding.view(b * packages, f, 1).expand(-1, -1, n).flatten(1)     # [bP, F*N]
        queries = self.ln_q(self.query).to(kv)[None].expand(b * packages, -1, -1)
        out, _ = self.attn(queries, keys, kv.flatten(1, 2), key_padding_mask=padding if pad else None,
                           need_weights=False)
        return self.proj(self.ln_post(out)).view(b, packages, self.num_queries, -1)
