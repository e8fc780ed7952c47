"""Readable references for Lightning attention: the token recurrence and the quadratic form.

Both take the arguments of `omni_kernels.lightning.lightning_attn` (same names, order and return
values; a test pins the signatures equal), compute in float64 and are meant for small shapes:
tests and benchmark correctness checks. Packed batches (`cu_seqlens`) run one sequence at a time.
"""
from __future__ import annotations

from typing import Callable

import torch

from .validate import check_inputs

Tensor = torch.Tensor


def lightning_attn_naive(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor,
                         scale: float | None = None, initial_state: Tensor | None = None,
                         output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                         chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Lightning attention by the recurrence, one token at a time (float64 loop over T):

        S_t = lambda_h S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t,   lambda_h = exp(-s_h).

    Layout and return values as `lightning_attn`; `chunk_size` is checked but not used.
    """
    return _run(_recurrence, q, k, v, slopes, scale, initial_state, output_final_state,
                cu_seqlens, chunk_size)


def lightning_attn_quadratic(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor,
                             scale: float | None = None, initial_state: Tensor | None = None,
                             output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                             chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Lightning attention as one masked-decay product (float64, O(T^2) memory):

        O = scale * [(Q K^T) * D] V + scale * diag(lambda^(t+1)) Q S_0,
        D[t, s] = lambda^(t-s) for t >= s else 0,
        S_T = lambda^T S_0 + sum_s lambda^(T-1-s) k_s^T v_s.

    Layout and return values as `lightning_attn`; `chunk_size` is checked but not used.
    """
    return _run(_quadratic, q, k, v, slopes, scale, initial_state, output_final_state,
                cu_seqlens, chunk_size)


def _run(fn: Callable, q, k, v, slopes, scale, initial_state, output_final_state, cu_seqlens,
         chunk_size) -> tuple[Tensor, Tensor | None]:
    """Validate, then run `fn` on the whole batch or once per packed sequence."""
    scale, seqlens = check_inputs(q, k, v, slopes, scale, initial_state, cu_seqlens, chunk_size)
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    s = slopes.double()
    if seqlens is None:
        o, final = fn(q.double(), k.double(), v.double(), s, scale, initial_state)
    else:
        outs, finals = [], []
        for n, (bos, eos) in enumerate(zip(seqlens, seqlens[1:])):
            h0 = None if initial_state is None else initial_state[n:n + 1]
            o_n, final_n = fn(q[:, bos:eos].double(), k[:, bos:eos].double(),
                              v[:, bos:eos].double(), s, scale, h0)
            outs.append(o_n)
            finals.append(final_n)
        o, final = torch.cat(outs, dim=1), torch.cat(finals, dim=0)
    return o.to(v.dtype), (final.to(state_dtype) if output_final_state else None)


def _recurrence(q, k, v, s, scale, initial_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    decay = torch.exp(-s)[None, :, None, None]  # [1, H, 1, 1]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.double()
    o = q.new_zeros(B, T, H, V)
    for t in range(T):
        S = decay * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, K, V]
        o[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S


def _quadratic(q, k, v, s, scale, initial_state):
    B, T, H, K = q.shape
    t = torch.arange(T, device=q.device, dtype=torch.float64)
    diff = t[:, None] - t[None, :]  # [T, T]
    D = torch.where(diff >= 0, torch.exp(-s[:, None, None] * diff.clamp(min=0)), 0.0)  # [H, T, T]
    A = torch.einsum("bthk,bshk->bhts", q, k) * D  # [B, H, T, T]
    o = scale * torch.einsum("bhts,bshv->bthv", A, v)
    to_end = torch.exp(-s[:, None] * (T - 1 - t))  # [H, T]
    final = torch.einsum("bshk,bshv,hs->bhkv", k, v, to_end)
    if initial_state is not None:
        h0 = initial_state.double()
        from_start = torch.exp(-s[:, None] * (t + 1)).T  # [T, H]
        o = o + scale * from_start[None, :, :, None] * torch.einsum("bthk,bhkv->bthv", q, h0)
        final = final + torch.exp(-s * T)[None, :, None, None] * h0
    return o, final
