"""RMSNorm usable under megatron-core's sequence parallelism."""
from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in float32 (as Qwen3/HF do).

    Built by megatron's ``build_module(spec, config=..., hidden_size=..., eps=...)``. Under
    sequence parallelism each rank sees a slice of the sequence, so the weight is marked
    ``sequence_parallel`` and megatron's finalize_model_grads sums its gradient over the TP group.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
