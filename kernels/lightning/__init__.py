"""Lightning attention: linear attention with a fixed per-head exponential decay.

`lightning_attn` is the chunked Triton op (forward and backward); `lightning_attn_torch` the same
chunked form in PyTorch (autograd backward; what CPU training runs); `lightning_attn_naive` (the
token recurrence) and `lightning_attn_quadratic` (the masked-decay product) are float64
references. All four share the signature and return values. Slope helpers live in `decay`.
"""
from __future__ import annotations

import torch

from .chunk import LightningAttnFunction, chunk_layout
from .chunk_torch import lightning_attn_torch
from .decay import alibi_slopes, minimax_slopes
from .naive import lightning_attn_naive, lightning_attn_quadratic
from .validate import TRITON_DTYPES, check_inputs, check_triton_device

Tensor = torch.Tensor

__all__ = ["lightning_attn", "lightning_attn_torch", "lightning_attn_naive",
           "lightning_attn_quadratic", "alibi_slopes", "minimax_slopes"]


def lightning_attn(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor,
                   scale: float | None = None, initial_state: Tensor | None = None,
                   output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                   chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Causal Lightning attention, chunked Triton kernels, fp32 accumulation.

    Per head h, with lambda_h = exp(-s_h) and the state S [K, V] (S_0 = initial_state or 0):

        S_t = lambda_h S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; one dtype: float32, bfloat16 or float16. CUDA
            tensors (CPU tensors under TRITON_INTERPRET=1). Batch-first, heads third: convert
            from Megatron's [s, b, h, d] before calling.
        slopes: [H] float, per-head decay slopes s_h >= 0 (log-decay g_h = -s_h), e.g. from
            `alibi_slopes` or `minimax_slopes`. Fixed: it gets no gradient and must not require
            one.
        scale: multiplies q_t S_t; None means K ** -0.5.
        initial_state: [N, H, K, V] any float dtype, the state before the first token of each
            sequence (N = B, or the number of packed sequences with cu_seqlens); gradients flow
            to it.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: int32/int64 [N + 1] offsets of sequences packed along T (B must be 1): the
            state restarts (from initial_state[n] or 0) at each boundary. Read on the host once
            per call (one device sync).
        chunk_size: tokens per chunk BT, a power of two >= 16.

    Returns:
        o: [B, T, H, V] in the dtype of v, and the final state [N, H, K, V] float32 (None unless
        output_final_state). Gradients flow from both to q, k, v and initial_state.
    """
    scale, seqlens = check_inputs(q, k, v, slopes, scale, initial_state, cu_seqlens, chunk_size,
                                  dtypes=TRITON_DTYPES)
    check_triton_device(q)
    layout = chunk_layout(q.shape[0], q.shape[1], chunk_size, cu_seqlens, seqlens)
    h0 = None if initial_state is None else initial_state.contiguous()
    return LightningAttnFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                       slopes.contiguous(), scale, h0, output_final_state, layout)
