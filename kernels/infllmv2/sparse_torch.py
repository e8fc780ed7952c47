"""InfLLM-V2 attention in PyTorch: the path CPU training runs (no Triton interpreter).

The same math as the Triton ops, in batched torch code with autograd for the backward:
- dense sequences (fewer than dense_len keys): torch SDPA, causal, with the position offset as an
  explicit [Tq, Tk] mask when the queries are the last positions of longer keys;
- sparse sequences: the block scores of ``select.py`` (K_C1/K_C2 mean pooling, the lse
  normaliser, the sum over a query block and a KV group, the max over the windows that overlap a
  key block) from [Tq, Hq, windows] products in row pieces under no_grad, the shared
  ``topk_blocks``, then per query block SDPA over its gathered key blocks with a causal mask.

Memory: the gathered keys and values, [query blocks, Hkv, slots · block_size, D] each, and the
SDPA masks; no [T, T] matrix unless the slots cover the whole sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_attention_args, check_block_args, check_selection_args
from .layout import pool_geometry
from .select import topk_blocks

SCORE_PIECE = 1 << 24
"""Elements of one [rows, Hq, windows] score piece of the block selection (64 MiB in float32)."""


def infllmv2_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             dense_len: int = 8192, block_size: int = 64, topk: int = 64,
                             init_blocks: int = 1, local_blocks: int = 32, kernel_size: int = 32,
                             kernel_stride: int = 16, position_offset: int = 0,
                             cu_seqlens: torch.Tensor | None = None, scale: float | None = None,
                             lse_kernel_size: int = 128,
                             lse_kernel_stride: int = 64) -> torch.Tensor:
    """InfLLM-V2 attention in PyTorch, differentiable in q, k, v (the block choice is not).

    Arguments, layout and return value as `infllmv2_attention` (the Triton op): q [B, Tq, Hq, D],
    k/v [B, Tk, Hkv, D] with Tk = position_offset + Tq, or a packed batch (B = 1, cu_seqlens
    [N + 1], position_offset 0). Any device; float32, float16 or bfloat16. Returns [B, Tq, Hq, D]
    in q's dtype.
    """
    check_attention_args(q, k, v, position_offset, cu_seqlens)
    check_block_args(block_size, kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride)
    check_selection_args(topk, init_blocks, local_blocks)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        if k.shape[1] < dense_len:
            return _dense(q, k, v, scale)
        seqs = list(zip(q, k, v))
    else:
        bounds = cu_seqlens.tolist()
        seqs = [(q[0, a:b], k[0, a:b], v[0, a:b]) for a, b in zip(bounds, bounds[1:])]
    outs = []
    for qs, ks, vs in seqs:  # [T, H, D] each
        if ks.shape[0] < dense_len:
            outs.append(_dense(qs[None], ks[None], vs[None], scale)[0])
            continue
        idx = _select(qs.detach(), ks.detach(), block_size, topk, init_blocks, local_blocks,
                      kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride, scale)
        outs.append(_block_sparse(qs, ks, vs, idx, block_size, scale))
    return torch.cat(outs)[None] if cu_seqlens is not None else torch.stack(outs)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q [B, Tq, Hq, D] at the last Tq positions of k/v [B, Tk, Hkv, D]."""
    Tq, Tk = q.shape[1], k.shape[1]
    mask = None
    if Tq != Tk:
        pos_q = torch.arange(Tk - Tq, Tk, device=q.device)
        mask = torch.arange(Tk, device=q.device)[None, :] <= pos_q[:, None]  # [Tq, Tk]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, is_causal=mask is None, scale=scale,
                                       enable_gqa=True)
    return o.transpose(1, 2)


def _pool(k: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Mean of k [T, H, D] over full windows [c·stride, c·stride + size): [windows, H, D] fp32."""
    if k.shape[0] < size:
        return k.new_zeros(0, *k.shape[1:], dtype=torch.float32)
    return k.float().unfold(0, size, stride).mean(-1)


def _select(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int, init_blocks: int,
            local_blocks: int, kernel_size: int, kernel_stride: int, lse_kernel_size: int,
            lse_kernel_stride: int, scale: float) -> torch.Tensor:
    """Block indices int32 [NQB, Hkv, slots] of one sequence, q [Tq, Hq, D], k [Tk, Hkv, D]
    (the semantics of select.select_blocks)."""
    Tq, Hq, _ = q.shape
    Tk, Hkv, _ = k.shape
    G, off, bs = Hq // Hkv, Tk - Tq, block_size
    kc1 = _pool(k, kernel_size, kernel_stride).repeat_interleave(G, 1)  # [C1, Hq, D]
    kc2 = _pool(k, lse_kernel_size, lse_kernel_stride).repeat_interleave(G, 1)  # [C2, Hq, D]
    end1 = torch.arange(kc1.shape[0], device=q.device) * kernel_stride + kernel_size - 1
    end2 = torch.arange(kc2.shape[0], device=q.device) * lse_kernel_stride + lse_kernel_size - 1
    first_blk, nqb, nkb = off // bs, (Tk - 1) // bs - off // bs + 1, -(-Tk // bs)
    summed = torch.zeros(nqb, Hkv, kc1.shape[0], device=q.device)  # [NQB, Hkv, C1]
    rows = max(bs, SCORE_PIECE // max(1, Hq * max(kc1.shape[0], kc2.shape[0])) // bs * bs)
    with torch.no_grad():
        for r0 in range(0, Tq, rows):
            qf = q[r0:r0 + rows].float()
            pos = torch.arange(off + r0, off + r0 + qf.shape[0], device=q.device)
            s2 = torch.einsum("thd,chd->thc", qf, kc2) * scale
            s2 = s2.masked_fill((end2[None, :] > pos[:, None])[:, None, :], float("-inf"))
            lse = torch.logsumexp(s2, -1)  # [rows, Hq]
            # a token that sees no K_C2 window adds nothing
            lse = torch.where(lse == float("-inf"), float("inf"), lse)
            s1 = torch.exp(torch.einsum("thd,chd->thc", qf, kc1) * scale - lse[..., None])
            s1 = s1.masked_fill((end1[None, :] > pos[:, None])[:, None, :], 0.0)
            per_group = s1.reshape(qf.shape[0], Hkv, G, -1).sum(2)  # [rows, Hkv, C1]
            summed.index_add_(0, pos // bs - first_blk, per_group)
    # block j: the max over windows [j·ps − pad, j·ps − pad + pk); scores are >= 0, so zero
    # padding outside [0, C1) is the naive reference's "no window: 0"
    pool_k, pool_s, pool_pad = pool_geometry(bs, kernel_size, kernel_stride)
    right = max(0, (nkb - 1) * pool_s + pool_k - pool_pad - kc1.shape[0])
    windows = F.pad(summed, (pool_pad, right)).unfold(-1, pool_k, pool_s)[:, :, :nkb]
    score = windows.amax(-1)  # [NQB, Hkv, NKB]
    qb_blk = torch.arange(first_blk, first_blk + nqb, device=q.device)
    return topk_blocks(score, qb_blk, topk, init_blocks, local_blocks)


def _block_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                  block_size: int, scale: float) -> torch.Tensor:
    """One sequence: q [Tq, Hq, D] at the last Tq positions of k/v [Tk, Hkv, D], each query
    block attending the key blocks idx [NQB, Hkv, slots] (−1: unused) causally -> [Tq, Hq, D]."""
    Tq, Hq, D = q.shape
    Tk, Hkv, _ = k.shape
    G, bs, off = Hq // Hkv, block_size, Tk - Tq
    nqb, nkb, slots = idx.shape[0], -(-Tk // bs), idx.shape[2]
    first = off // bs * bs  # position of the first query row once padded to whole blocks
    qp = F.pad(q, (0, 0, 0, 0, off - first, first + nqb * bs - Tk))  # [NQB·bs, Hq, D]
    kp, vp = (F.pad(x, (0, 0, 0, 0, 0, nkb * bs - Tk)) for x in (k, v))  # [NKB·bs, Hkv, D]
    # queries as [NQB, Hkv, G·bs, D] (a group's heads share its blocks)
    qb = qp.reshape(nqb, bs, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(nqb, Hkv, G * bs, D)
    blocks = idx.long().clamp(min=0)  # [NQB, Hkv, S]
    heads = torch.arange(Hkv, device=q.device)[None, :, None]
    kb, vb = (x.reshape(nkb, bs, Hkv, D)[blocks, :, heads]  # [NQB, Hkv, S, bs, D]
              .reshape(nqb, Hkv, slots * bs, D) for x in (kp, vp))
    pos_q = (first + torch.arange(nqb * bs, device=q.device)).reshape(nqb, 1, bs, 1)
    pos_k = (blocks[..., None] * bs + torch.arange(bs, device=q.device)).reshape(nqb, Hkv, 1, -1)
    valid = (idx >= 0).repeat_interleave(bs, -1)[:, :, None, :]  # [NQB, Hkv, 1, S·bs]
    mask = valid & (pos_k <= pos_q) & (pos_k < Tk)  # [NQB, Hkv, bs, S·bs]
    mask = mask[:, :, None].expand(-1, -1, G, -1, -1).reshape(nqb, Hkv, G * bs, slots * bs)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
    o = o.reshape(nqb, Hkv, G, bs, D).permute(0, 3, 1, 2, 4).reshape(nqb * bs, Hq, D)
    return o[off - first:off - first + Tq]
