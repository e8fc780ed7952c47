"""Lightning attention in chunked PyTorch: the path CPU training runs (no Triton interpreter).

The same chunked form as the Triton op (chunk.py), written with torch matmuls, so autograd gives
the backward. Per chunk of C tokens (i, j in [0, C), lambda_h = exp(-s_h)):

    o_i  = scale * (sum_{j<=i} lambda^(i-j) (q_i k_j^T) v_j + lambda^(i+1) q_i S_n)
    S_n  = lambda^(nC) S_0 + sum_{m<n} lambda^(C(n-1-m)) kv_m          state before chunk n
    kv_m = sum_j lambda^(C-1-j) k_j^T v_j                               chunk m's share

Memory and time are linear in T (the [C, C] intra-chunk products and the [N, N] chunk-to-chunk
decay with N = T / C chunks; no [T, T] matrix). Float32 accumulation (float64 inputs stay float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .validate import check_inputs

Tensor = torch.Tensor


def lightning_attn_torch(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor,
                         scale: float | None = None, initial_state: Tensor | None = None,
                         output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                         chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """Causal Lightning attention in chunked PyTorch, differentiable by autograd.

    Arguments, layout and return values as `lightning_attn` (the Triton op): q, k [B, T, H, K],
    v [B, T, H, V], slopes [H], initial_state [N, H, K, V], cu_seqlens [N + 1] (B = 1; the state
    restarts at each boundary), chunk_size a power of two >= 16. Any device and floating dtype;
    returns o [B, T, H, V] in v's dtype and the final state [N, H, K, V] in float32 (float64 for
    float64 inputs), or None unless output_final_state.
    """
    scale, seqlens = check_inputs(q, k, v, slopes, scale, initial_state, cu_seqlens, chunk_size)
    if seqlens is None:
        o, final = _chunked(q, k, v, slopes, scale, initial_state, chunk_size)
    else:
        outs, finals = [], []
        for n, (bos, eos) in enumerate(zip(seqlens, seqlens[1:])):
            h0 = None if initial_state is None else initial_state[n:n + 1]
            o_n, final_n = _chunked(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], slopes, scale,
                                    h0, chunk_size)
            outs.append(o_n)
            finals.append(final_n)
        o, final = torch.cat(outs, dim=1), torch.cat(finals, dim=0)
    return o.to(v.dtype), (final if output_final_state else None)


def _chunked(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor, scale: float,
             initial_state: Tensor | None, C: int) -> tuple[Tensor, Tensor]:
    """One batch of equal-length sequences q, k [B, T, H, K], v [B, T, H, V] -> (o, final)."""
    dt = torch.promote_types(q.dtype, torch.float32)
    B, T, H, K = q.shape
    V = v.shape[-1]
    s = slopes.to(dt)
    h0 = None if initial_state is None else initial_state.to(dt)
    if T == 0:
        final = q.new_zeros(B, H, K, V, dtype=dt) if h0 is None else h0
        return v.new_zeros(B, 0, H, V, dtype=dt), final
    N = -(-T // C)
    # zero rows after the end: their k, v add nothing to any state; their outputs are cut off
    q, k, v = (F.pad(x.to(dt), (0, 0, 0, 0, 0, N * C - T)).reshape(B, N, C, H, -1)
               for x in (q, k, v))  # [B, N, C, H, *]
    i = torch.arange(C, device=q.device, dtype=dt)
    diff = i[:, None] - i[None, :]  # [C, C]
    intra = torch.where(diff >= 0, torch.exp(-s[:, None, None] * diff.clamp(min=0)), 0.0)
    attn = torch.einsum("bnihk,bnjhk->bnhij", q, k) * intra  # [B, N, H, C, C]
    o = torch.einsum("bnhij,bnjhv->bnihv", attn, v)
    to_end = torch.exp(-s[None, :] * (C - 1 - i)[:, None])  # [C, H]
    kv = torch.einsum("bnjhk,bnjhv->bnhkv", k * to_end[:, :, None], v)  # [B, N, H, K, V]
    n = torch.arange(N, device=q.device, dtype=dt)
    gap = n[:, None] - 1 - n[None, :]  # [N, N]: chunks between m and n
    carry = torch.where(gap >= 0, torch.exp(-s[:, None, None] * C * gap.clamp(min=0)), 0.0)
    states = torch.einsum("hnm,bmhkv->bnhkv", carry, kv)  # [B, N, H, K, V] before each chunk
    if h0 is not None:
        from_h0 = torch.exp(-s[None, :] * C * n[:, None])  # [N, H]
        states = states + from_h0[None, :, :, None, None] * h0[:, None]
    from_start = torch.exp(-s[None, :] * (i + 1)[:, None])  # [C, H]
    o = o + torch.einsum("bnihk,bnhkv->bnihv", q * from_start[:, :, None], states)
    o = (scale * o).reshape(B, N * C, H, V)[:, :T]
    # the state after the last real token, from the tokens themselves (exact for a partial chunk)
    t = torch.arange(T, device=q.device, dtype=dt)
    weight = torch.exp(-s[None, :] * (T - 1 - t)[:, None])  # [T, H]
    k_real, v_real = k.reshape(B, N * C, H, K)[:, :T], v.reshape(B, N * C, H, V)[:, :T]
    final = torch.einsum("bthk,bthv->bhkv", k_real * weight[:, :, None], v_real)
    if h0 is not None:
        final = final + torch.exp(-s * T)[None, :, None, None] * h0
    return o, final
