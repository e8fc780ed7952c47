"""Per-head decay slopes for Lightning attention.

Every Lightning op takes the decay as per-head slopes s_h >= 0 (a float tensor [H]): the state
decays by lambda_h = exp(-s_h) per token, i.e. the log-decay is g_h = -s_h (FLA's `g_gamma`).
A larger slope forgets faster; s_h = 0 is plain causal linear attention.
"""
from __future__ import annotations

import torch


def alibi_slopes(num_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """ALiBi-style slopes s_h = 2^(-8 (h + 1) / H) for h = 0 .. H-1, float32 [H].

    The formula is applied as is for every H (for H not a power of two this differs from ALiBi's
    interleaved closest-power-of-two construction). For H = 8: 2^-1, 2^-2, ..., 2^-8.
    """
    return torch.tensor(_alibi(num_heads), dtype=torch.float32, device=device)


def minimax_slopes(num_heads: int, layer_idx: int, num_layers: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """MiniMax-01 per-layer slopes s_h * (1 - l / (L - 1) + 1e-5), float32 [H].

    `layer_idx` l counts from 0 over the L = `num_layers` Lightning layers: the first layer decays
    fastest, the last layer's slopes shrink to 1e-5 of the ALiBi ones (almost no decay). With
    L == 1 the single layer takes l / (L - 1) as 0 (factor 1 + 1e-5).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must be in [0, {num_layers}), got {layer_idx}")
    depth = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    slopes = [s * (1.0 - depth + 1e-5) for s in _alibi(num_heads)]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


def _alibi(num_heads: int) -> list[float]:
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]
