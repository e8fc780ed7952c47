"""Readable float64 references for every InfLLM-V2 stage: explicit loops and masks, no Triton.

Same names, signatures and return values as the fast ops (a test pins the signatures equal).
"""
from __future__ import annotations

import torch

from .checks import check_attention_args, check_block_args, check_qkv, check_selection_args
from .layout import num_windows, pool_geometry


def _split(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> list[torch.Tensor]:
    """[B, T, H, D] -> per-sequence [T_i, H, D] (rows of a packed batch when cu_seqlens is set)."""
    if cu_seqlens is None:
        return list(x)
    bounds = cu_seqlens.tolist()
    return [x[0, s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def _num_qblocks(len_q: int, len_k: int, block_size: int) -> int:
    return (len_k - 1) // block_size - (len_k - len_q) // block_size + 1


def _stack(parts: list[torch.Tensor], packed: bool) -> torch.Tensor:
    return torch.cat(parts)[None] if packed else torch.stack(parts)


def compress_keys(k: torch.Tensor, kernel_size: int, kernel_stride: int,
                  cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Reference mean pooling: out[c] = mean(k[c·stride : c·stride + kernel_size]) per sequence."""
    outs = []
    for x in _split(k, cu_seqlens):
        windows = [x[c * kernel_stride: c * kernel_stride + kernel_size].double().mean(0)
                   for c in range(num_windows(x.shape[0], kernel_size, kernel_stride))]
        outs.append(torch.stack(windows) if windows else x.new_zeros(0, *x.shape[1:]).double())
    return _stack(outs, cu_seqlens is not None).to(k.dtype)


def _select_one(q, k, block_size, topk, init_blocks, local_blocks, kernel_size, kernel_stride,
                lse_kernel_size, lse_kernel_stride, scale):
    """Block indices [NQB, Hkv, K] for one sequence: q [Tq, Hq, D], k [Tk, Hkv, D]."""
    Tq, Hq, _ = q.shape
    Tk, Hkv, _ = k.shape
    G, off = Hq // Hkv, Tk - Tq
    kc1 = compress_keys(k[None], kernel_size, kernel_stride)[0].double()
    kc2 = compress_keys(k[None], lse_kernel_size, lse_kernel_stride)[0].double()
    end1 = torch.arange(kc1.shape[0]) * kernel_stride + kernel_size - 1  # last token of window
    end2 = torch.arange(kc2.shape[0]) * lse_kernel_stride + lse_kernel_size - 1
    pool_k, pool_s, pool_pad = pool_geometry(block_size, kernel_size, kernel_stride)
    num_slots = init_blocks + local_blocks + topk
    rows = []
    for blk in range(off // block_size, (Tk - 1) // block_size + 1):
        per_head = []
        for hk in range(Hkv):
            summed = torch.zeros(kc1.shape[0], dtype=torch.float64)
            for t in range(max(blk * block_size, off), min((blk + 1) * block_size, Tk)):
                vis1, vis2 = end1 <= t, end2 <= t
                for h in range(hk * G, hk * G + G):
                    qt = q[t - off, h].double()
                    if not vis2.any():
                        continue  # no normaliser window yet: this token adds nothing
                    lse = torch.logsumexp(kc2[vis2, hk] @ qt * scale, 0)
                    summed[vis1] += torch.exp(kc1[vis1, hk] @ qt * scale - lse)
            scores = {}
            for j in range(blk + 1):
                windows = [c for c in range(j * pool_s - pool_pad, j * pool_s - pool_pad + pool_k)
                           if 0 <= c < kc1.shape[0]]
                scores[j] = max((float(summed[c]) for c in windows), default=0.0)
                if j < init_blocks or j > blk - local_blocks:
                    scores[j] = float("inf")
            chosen = sorted(scores, key=lambda j: (-scores[j], j))[:num_slots]
            per_head.append(sorted(chosen) + [-1] * (num_slots - len(chosen)))
        rows.append(per_head)
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, Hkv, num_slots)


def select_blocks(q: torch.Tensor, k: torch.Tensor, block_size: int = 64, topk: int = 64,
                  init_blocks: int = 1, local_blocks: int = 32, kernel_size: int = 32,
                  kernel_stride: int = 16, lse_kernel_size: int = 128,
                  lse_kernel_stride: int = 64, cu_seqlens_q: torch.Tensor | None = None,
                  cu_seqlens_k: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """Reference stage 1: loops over query blocks, KV heads, tokens and query heads."""
    check_qkv(q, k, None, cu_seqlens_q, cu_seqlens_k)
    check_block_args(block_size, kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride)
    check_selection_args(topk, init_blocks, local_blocks)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # The reference loops on the CPU whatever the inputs' device (its index tensors are CPU).
    parts = [_select_one(qs.detach().cpu(), ks.detach().cpu(), block_size, topk, init_blocks, local_blocks,
                         kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride, scale)
             for qs, ks in zip(_split(q, cu_seqlens_q), _split(k, cu_seqlens_k))]
    return _stack(parts, cu_seqlens_q is not None).to(q.device)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           block_idx: torch.Tensor, block_size: int = 64,
                           cu_seqlens_q: torch.Tensor | None = None,
                           cu_seqlens_k: torch.Tensor | None = None,
                           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference stage 2: softmax attention in float64 under an explicit [Tq, Hq, Tk] mask."""
    check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    G = q.shape[2] // k.shape[2]
    packed = cu_seqlens_q is not None
    outs, lses, row0 = [], [], 0
    for i, (qs, ks, vs) in enumerate(zip(_split(q, cu_seqlens_q), _split(k, cu_seqlens_k),
                                         _split(v, cu_seqlens_k))):
        Tq, Tk = qs.shape[0], ks.shape[0]
        off = Tk - Tq
        nqb = _num_qblocks(Tq, Tk, block_size)
        idx = block_idx[0, row0: row0 + nqb] if packed else block_idx[i]
        row0 += nqb
        pos_q, pos_k = torch.arange(off, Tk), torch.arange(Tk)
        qb_row = pos_q // block_size - off // block_size
        allowed = torch.zeros(Tq, ks.shape[1], Tk, dtype=torch.bool)  # [Tq, Hkv, Tk]
        for r in range(nqb):
            for hk in range(ks.shape[1]):
                for j in idx[r, hk].tolist():
                    if j >= 0:
                        allowed[qb_row == r, hk, j * block_size: (j + 1) * block_size] = True
        allowed &= pos_k[None, None, :] <= pos_q[:, None, None]
        mask = allowed.repeat_interleave(G, dim=1).to(q.device)  # [Tq, Hq, Tk]
        kd, vd = ks.double().repeat_interleave(G, 1), vs.double().repeat_interleave(G, 1)
        s = torch.einsum("thd,shd->ths", qs.double(), kd) * scale
        s = s.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(s, -1)  # [Tq, Hq]
        o = torch.einsum("ths,shd->thd", torch.exp(s - lse[..., None]), vd)
        outs.append(o.to(q.dtype))
        lses.append(lse.float())
    return _stack(outs, packed), _stack(lses, packed)


def infllmv2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense_len: int = 8192,
                       block_size: int = 64, topk: int = 64, init_blocks: int = 1,
                       local_blocks: int = 32, kernel_size: int = 32, kernel_stride: int = 16,
                       position_offset: int = 0, cu_seqlens: torch.Tensor | None = None,
                       scale: float | None = None, lse_kernel_size: int = 128,
                       lse_kernel_stride: int = 64) -> torch.Tensor:
    """Reference InfLLM-V2 attention, one sequence at a time: every block (dense) when the
    sequence has fewer than dense_len keys, else the naive selection."""
    check_attention_args(q, k, v, position_offset, cu_seqlens)
    check_block_args(block_size, kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride)
    check_selection_args(topk, init_blocks, local_blocks)
    outs = []
    for qs, ks, vs in zip(_split(q, cu_seqlens), _split(k, cu_seqlens), _split(v, cu_seqlens)):
        qs, ks, vs = qs[None], ks[None], vs[None]
        Tq, Tk = qs.shape[1], ks.shape[1]
        if Tk < dense_len:
            blocks = torch.arange((Tk - 1) // block_size + 1, dtype=torch.int32)
            first = (Tk - Tq) // block_size
            rows = [torch.where(blocks <= b, blocks, -1) for b in range(first, int(blocks[-1]) + 1)]
            idx = torch.stack(rows)[None, :, None, :].expand(-1, -1, ks.shape[2], -1)
        else:
            idx = select_blocks(qs, ks, block_size, topk, init_blocks, local_blocks, kernel_size,
                                kernel_stride, lse_kernel_size, lse_kernel_stride, scale=scale)
        outs.append(block_sparse_attention(qs, ks, vs, idx, block_size, scale=scale)[0][0])
    return _stack(outs, cu_seqlens is not None)
