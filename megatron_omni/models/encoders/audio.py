"""Whisper-style audio encoder on megatron-core, with tensor parallelism.

    log-mel [b, n_mels, frames]          (16 kHz audio, 10 ms hop: 100 frames per second, ≤ 30 s)
      -> GELU(Conv1d(n_mels, hidden, k=3, pad=1))             (replicated over TP)
      -> GELU(Conv1d(hidden, hidden, k=3, stride=2, pad=1))   (replicated)  → L = (frames-1)//2 + 1
      -> + sinusoidal positions [:L] (Whisper's fixed embed_positions; a buffer, never trained)
      -> num_layers pre-LN encoder layers (models/encoders/spec.py), exact (erf) GELU MLP
      -> final LayerNorm
    -> [b, L, hidden]                    (50 tokens per second; 1500 for 30 s)

GELUs are exact (erf), as Whisper's. Unlike HF's WhisperEncoder, which insists on exactly
``2 * max_source_positions`` frames (30 s padded), any length up to that is accepted; at the full
length the two agree.

Whisper's attention has biases on q, v and out but **none on k**. We keep megatron's fused QKV
with one bias and hold its k-part at zero: it starts at zero, is imported as zeros, and a gradient
hook zeroes its gradient, so no optimizer moves it (its true gradient is zero anyway: a bias on k
adds ``q·b_k`` to every score of a query, the same for all keys, which softmax cancels; but
Adam's normalisation would amplify the rounding noise in it).

Parameter names (what conversion/whisper.py produces; ``transformer.*`` as listed in
models/encoders/spec.py)::

    conv1.{weight, bias}   conv2.{weight, bias}   embed_positions [max_source_positions, hidden] (buffer)
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.config.encoders import AudioEncoderConfig
from megatron_omni.models.encoders.spec import EncoderTower, encoder_transformer_config


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table ``[length, channels]``: [sin | cos] halves with
    geometric timescales from 1 to ``max_timescale``."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even number of channels; got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length).view(-1, 1) * inv_timescales.view(1, -1)
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


def audio_transformer_config(cfg: AudioEncoderConfig, **kwargs) -> TransformerConfig:
    """The encoder's TransformerConfig; kwargs as for ``encoder_transformer_config``."""
    return encoder_transformer_config(cfg, F.gelu, **kwargs)


def _k_bias_zeroed(bias: torch.Tensor, heads: int) -> torch.Tensor:
    """A copy of a fused QKV bias (per head [q; k; v]) with its k-part set to zero."""
    bias = bias.clone()
    bias.view(heads, 3, -1)[:, 1] = 0
    return bias


def _hold_k_bias_at_zero(bias: torch.nn.Parameter, heads: int) -> None:
    """Zero the k-part of a fused QKV bias and of every gradient it receives."""
    with torch.no_grad():
        bias.copy_(_k_bias_zeroed(bias, heads))
    bias.register_hook(functools.partial(_k_bias_zeroed, heads=heads))  # a partial pickles


class AudioEncoder(EncoderTower):
    """Whisper-style encoder: log-mel ``[b, num_mel_bins, frames]`` (frames ≤ max_frames) →
    ``[b, (frames - 1) // 2 + 1, hidden]``.

    ``config`` defaults to ``audio_transformer_config(cfg)`` (TP size from megatron's parallel_state).
    """

    trainable_group = "audio_encoder"
    """Parameter group for training.trainable (training/freeze.py)."""

    def __init__(self, cfg: AudioEncoderConfig, config: TransformerConfig | None = None):
        super().__init__(cfg, config or audio_transformer_config(cfg))
        for layer in self.transformer.layers:
            _hold_k_bias_at_zero(layer.self_attention.linear_qkv.bias,
                                 layer.self_attention.num_attention_heads_per_partition)

    def build_inputs(self, cfg: AudioEncoderConfig, config: TransformerConfig) -> None:
        h, dtype = cfg.hidden_size, config.params_dtype
        self.conv1 = torch.nn.Conv1d(cfg.num_mel_bins, h, kernel_size=3, padding=1, dtype=dtype)
        self.conv2 = torch.nn.Conv1d(h, h, kernel_size=3, stride=2, padding=1, dtype=dtype)
        self.register_buffer("embed_positions", sinusoids(cfg.max_source_positions, h).to(dtype))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``[b, num_mel_bins, frames]`` → ``[b, (frames - 1) // 2 + 1, hidden]``."""
        cfg = self.cfg
        if mel.dim() != 3 or mel.shape[1] != cfg.num_mel_bins or not 0 < mel.shape[2] <= cfg.max_frames:
            raise ValueError(f"AudioEncoder expects log-mel [b, {cfg.num_mel_bins}, frames] with "
                             f"1 ≤ frames ≤ {cfg.max_frames}; got {tuple(mel.shape)}")
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)                  # [b, L, hidden]
        return self.encode(x + self.embed_positions[: x.shape[1]])
