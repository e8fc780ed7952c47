"""The one boundary between the S/L layers and their attention ops (model.kernels).

The layers call ``ops.lightning_attn`` / ``ops.infllmv2_attention`` of the KernelOps that
``kernel_ops(model.kernels)`` returns; everything above that call (projections, norms, RoPE, GQA,
packing, context parallelism, the output gate) is one code path. The two implementations take
the same arguments and return the same values (tests/kernels/test_torch_reference.py):
- triton: the Triton ops of omni_kernels (CUDA; on CPU the Triton interpreter);
- torch: their chunked PyTorch counterparts (omni_kernels.lightning.chunk_torch,
  omni_kernels.infllmv2.sparse_torch), autograd for the backward.
Which one ``auto`` means here is decided (and logged) in megatron_omni/platform/backend.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from omni_kernels.infllmv2 import infllmv2_attention, infllmv2_attention_torch
from omni_kernels.lightning import lightning_attn, lightning_attn_torch

from megatron_omni.platform.backend import resolve_kernels


@dataclass(frozen=True)
class KernelOps:
    """The attention ops of the sparse and linear layers, of one implementation."""

    name: str
    """'triton' or 'torch'."""
    lightning_attn: Callable
    """``omni_kernels.lightning.lightning_attn`` signature."""
    infllmv2_attention: Callable
    """``omni_kernels.infllmv2.infllmv2_attention`` signature."""


IMPLEMENTATIONS = {
    "triton": KernelOps("triton", lightning_attn, infllmv2_attention),
    "torch": KernelOps("torch", lightning_attn_torch, infllmv2_attention_torch),
}


def kernel_ops(kernels: str = "auto") -> KernelOps:
    """The ops for model.kernels (auto, triton or torch)."""
    return IMPLEMENTATIONS[resolve_kernels(kernels)]
