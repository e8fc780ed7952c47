"""SigLIP-style vision encoder on megatron-core, with tensor parallelism.

    pixels [b, 3, H, W]  (H = W = image_size)
      -> patch embedding: Conv2d(3, hidden, kernel=stride=patch_size) (replicated over TP)
      -> + learned position embedding [num_patches, hidden] (replicated)
      -> num_layers pre-LN encoder layers (models/encoders/spec.py; heads and MLP split over TP)
         with GELU (tanh approximation, SigLIP's gelu_pytorch_tanh)
      -> post LayerNorm
    -> [b, num_patches, hidden], num_patches = (image_size // patch_size) ** 2, row-major patches

No class token and no pooling head (HF's SiglipVisionModel ``head`` is not part of the tower we
train on; ``last_hidden_state`` is what we match). Video frames ``[b, T, 3, H, W]`` go through the
same encoder as b*T images and come back as ``[b, T, num_patches, hidden]``.

Parameter names (what conversion/siglip.py produces; ``transformer.*`` as listed in
models/encoders/spec.py)::

    patch_embed.weight [hidden, 3, p, p]   patch_embed.bias [hidden]   position_embedding [N, hidden]
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.config.encoders import VisionEncoderConfig
from megatron_omni.models.encoders.spec import EncoderTower, encoder_transformer_config


gelu_tanh = functools.partial(F.gelu, approximate="tanh")
"""SigLIP's ``gelu_pytorch_tanh`` (a partial, so configs stay picklable)."""


def vision_transformer_config(cfg: VisionEncoderConfig, **kwargs) -> TransformerConfig:
    """The encoder's TransformerConfig; kwargs as for ``encoder_transformer_config`` (TP size,
    params_dtype, dropout, recompute...)."""
    return encoder_transformer_config(cfg, gelu_tanh, **kwargs)


class VisionEncoder(EncoderTower):
    """SigLIP-style vision tower: images ``[b, C, H, W]`` → ``[b, num_patches, hidden]``, video
    ``[b, T, C, H, W]`` → ``[b, T, num_patches, hidden]`` (frames encoded independently).

    ``config`` defaults to ``vision_transformer_config(cfg)`` (TP size from megatron's
    parallel_state). Pixels must be ``image_size`` square, already normalised.
    """

    trainable_group = "vision_encoder"
    """Parameter group for training.trainable (training/freeze.py)."""

    def __init__(self, cfg: VisionEncoderConfig, config: TransformerConfig | None = None):
        super().__init__(cfg, config or vision_transformer_config(cfg))

    def build_inputs(self, cfg: VisionEncoderConfig, config: TransformerConfig) -> None:
        dtype = config.params_dtype
        self.patch_embed = torch.nn.Conv2d(cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size,
                                           stride=cfg.patch_size, dtype=dtype)
        self.position_embedding = torch.nn.Parameter(
            torch.empty(cfg.num_patches, cfg.hidden_size, dtype=dtype))
        config.init_method(self.position_embedding)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images ``[b, C, H, W]`` → ``[b, N, hidden]``; video ``[b, T, C, H, W]`` →
        ``[b, T, N, hidden]``."""
        cfg = self.cfg
        expected = (f"images [b, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}] or video frames "
                    f"[b, T, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}]")
        if pixels.dim() not in (4, 5) or tuple(pixels.shape[-3:]) != (
                cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"VisionEncoder expects {expected}; got {tuple(pixels.shape)}")
        if pixels.dim() == 5:
            b, t = pixels.shape[:2]
            return self._encode(pixels.flatten(0, 1)).unflatten(0, (b, t))
        return self._encode(pixels)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype))  # [b, hidden, g, g]
        return self.encode(x.flatten(2).transpose(1, 2) + self.position_embedding)  # [b, N, hidden]
