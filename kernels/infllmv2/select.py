"""Stage 1 of InfLLM-V2: choose, per query block and KV head, the key blocks to attend (Triton).

Scores follow the paper: S[t, c] = Σ_h exp(q_t,h · K_C1[c] · scale − lse_t,h), summed over the
query heads h of a GQA group, with lse_t,h the logsumexp of q_t,h against the coarser K_C2 (an
approximation of the softmax normaliser). Window c is visible to token t when it ends at or before
t. Selection is per query BLOCK (the key-aligned block of `block_size` tokens): a query block's
score for key block j is the max over the windows overlapping j of Σ_{t in the query block}
S[t, c]; a token that sees no K_C2 window yet adds nothing. Selecting per query block keeps the
fp32 block-score matrix at (T / block)² · Hkv floats (32 MiB at 128K tokens, block 64, 2 KV heads;
no T × T_compressed matrix is stored), the index tensor at (T / block) · Hkv · K, and gives stage 2
full [block, block] tensor-core tiles for any GQA ratio.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .compress import compress_keys, compressed_cu_seqlens
from .checks import check_block_args, check_qkv, check_selection_args
from .layout import Layout, make_layout, pack, pool_geometry
from .tiles import DOT_PRECISION, load_tile, query_block

@triton.jit
def _lse_kernel(q, kc, lse, cu_q, cu_k, cu_c, qb_seq, qb_blk, scale,
                stride_qt, stride_qh, stride_ct, stride_ch, stride_lt, D, G,
                KERNEL: tl.constexpr, STRIDE: tl.constexpr, BS: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    i_n, blk, row0, o_t, m_t, _, _ = query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, 0, BS, BS)
    c_start = tl.load(cu_c + i_n).to(tl.int64)
    n_c = tl.load(cu_c + i_n + 1) - c_start
    # windows visible to the block's last token; never divide a negative number (the interpreter
    # floors, the GPU truncates)
    n_vis = tl.minimum(n_c, tl.maximum(blk * BS + BS - KERNEL + STRIDE, 0) // STRIDE)
    b_q = load_tile(q, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_m = tl.full([BS], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BS], dtype=tl.float32)
    for c0 in range(0, n_vis, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)  # [BC]
        b_kc = load_tile(kc, c_start + c0, o_c < n_vis, i_h // G, stride_ct, stride_ch, D,
                         BLOCK_C, BLOCK_D, 1)  # [BC, BD]
        b_s = tl.dot(b_q, tl.trans(b_kc), input_precision=DOT_PRECISION) * scale  # [BS, BC]
        m_vis = ((o_c * STRIDE + KERNEL - 1)[None, :] <= o_t[:, None]) & (o_c < n_vis)[None, :]
        b_s = tl.where(m_vis, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_l = b_l * tl.exp(b_m - b_m_safe) + tl.sum(tl.exp(b_s - b_m_safe[:, None]), 1)
        b_m = b_m_new
    # a token that sees no window gets lse = +inf: it adds nothing to the block scores
    b_lse = tl.where(b_l > 0, b_m + tl.log(tl.where(b_l > 0, b_l, 1.0)), float("inf"))
    tl.store(lse + row0 * stride_lt + tl.arange(0, BS) * stride_lt + i_h, b_lse, mask=m_t)


@triton.jit
def _block_score_kernel(q, kc, lse, score, cu_q, cu_k, cu_c, qb_seq, qb_blk, scale,
                        stride_qt, stride_qh, stride_ct, stride_ch, stride_lt,
                        stride_sb, stride_sh, D, G, NKB,
                        KERNEL: tl.constexpr, STRIDE: tl.constexpr, POOL_K: tl.constexpr,
                        POOL_S: tl.constexpr, POOL_PAD: tl.constexpr, BS: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i_j, i_hk, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, blk, row0, o_t, m_t, _, _ = query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, 0, BS, BS)
    if i_j * BLOCK_N <= blk:
        c_start = tl.load(cu_c + i_n).to(tl.int64)
        n_c = tl.load(cu_c + i_n + 1) - c_start
        o_j = i_j * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] candidate key blocks
        b_best = tl.zeros([BLOCK_N], dtype=tl.float32)
        for p in tl.static_range(POOL_K):
            o_c = o_j * POOL_S - POOL_PAD + p  # [BN] window pooled into block j at offset p
            m_c = (o_c >= 0) & (o_c < n_c)
            b_kc = load_tile(kc, c_start + i_j * BLOCK_N * POOL_S - POOL_PAD + p, m_c, i_hk,
                             stride_ct, stride_ch, D, BLOCK_N, BLOCK_D, POOL_S)  # [BN, BD]
            m_vis = (m_t[:, None] & m_c[None, :]
                     & ((o_c * STRIDE + KERNEL - 1)[None, :] <= o_t[:, None]))  # [BS, BN]
            b_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for i_h in range(i_hk * G, i_hk * G + G):
                b_q = load_tile(q, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D, 1)
                b_lse = tl.load(lse + row0 * stride_lt + tl.arange(0, BS) * stride_lt + i_h,
                                mask=m_t, other=float("inf"))  # [BS]
                b_s = tl.dot(b_q, tl.trans(b_kc), input_precision=DOT_PRECISION)  # [BS, BN]
                b_p = tl.where(m_vis, tl.exp(b_s * scale - b_lse[:, None]), 0.0)
                b_acc += tl.sum(b_p, 0)
            b_best = tl.maximum(b_best, b_acc)
        tl.store(score + i_b * stride_sb + i_hk * stride_sh + o_j, b_best, mask=o_j < NKB)


def topk_blocks(score: torch.Tensor, qb_blk: torch.Tensor, topk: int, init_blocks: int,
                local_blocks: int) -> torch.Tensor:
    """Turn block scores [NQB, Hkv, NKB] into sorted block indices [NQB, Hkv, K], −1 padded.

    K = init_blocks + local_blocks + topk. Blocks after the query block are excluded, the first
    `init_blocks` and the `local_blocks` most recent (own block included) are forced, and the
    rest is filled by score; equal scores go to the lower block index (stable sort).
    """
    num_slots = init_blocks + local_blocks + topk
    j = torch.arange(score.shape[-1], device=score.device)
    blk = qb_blk.long()[:, None, None]
    forced = (j < init_blocks) | (j > blk - local_blocks)
    score = torch.where(j > blk, float("-inf"), torch.where(forced, float("inf"), score))
    ranked, order = torch.sort(score, dim=-1, descending=True, stable=True)
    ranked, order = ranked[..., :num_slots], order[..., :num_slots]
    big = torch.iinfo(torch.int32).max
    idx = torch.where(ranked == float("-inf"), big, order).sort(dim=-1).values
    idx = torch.where(idx == big, -1, idx).to(torch.int32)
    return torch.nn.functional.pad(idx, (0, num_slots - idx.shape[-1]), value=-1)


def _block_scores(q: torch.Tensor, k: torch.Tensor, layout: Layout, cu_k: torch.Tensor,
                  block_size: int, kernel_size: int, kernel_stride: int, lse_kernel_size: int,
                  lse_kernel_stride: int, scale: float) -> torch.Tensor:
    """Launch the lse and block-score kernels on packed q [Tq, Hq, D]; returns [NQB, Hkv, NKB]."""
    Hq, D, Hkv = q.shape[1], q.shape[2], k.shape[2]
    G, NQB, NKB = Hq // Hkv, layout.num_qblocks, layout.max_blocks
    kc1 = compress_keys(k, kernel_size, kernel_stride, cu_k)[0]
    kc2 = compress_keys(k, lse_kernel_size, lse_kernel_stride, cu_k)[0]
    cu_c1 = compressed_cu_seqlens(cu_k, kernel_size, kernel_stride).to(torch.int32)
    cu_c2 = compressed_cu_seqlens(cu_k, lse_kernel_size, lse_kernel_stride).to(torch.int32)
    lse = torch.empty(q.shape[0], Hq, dtype=torch.float32, device=q.device)
    score = torch.empty(NQB, Hkv, NKB, dtype=torch.float32, device=q.device)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    seqs = (layout.cu_q, layout.cu_k)
    _lse_kernel[(Hq, NQB)](q, kc2, lse, *seqs, cu_c2, layout.qb_seq, layout.qb_blk, scale,
                           q.stride(0), q.stride(1), kc2.stride(0), kc2.stride(1),
                           lse.stride(0), D, G,
                           KERNEL=lse_kernel_size, STRIDE=lse_kernel_stride, BS=block_size,
                           BLOCK_C=64, BLOCK_D=BLOCK_D)
    pool_k, pool_s, pool_pad = pool_geometry(block_size, kernel_size, kernel_stride)
    BLOCK_N = 64
    _block_score_kernel[(triton.cdiv(NKB, BLOCK_N), Hkv, NQB)](
        q, kc1, lse, score, *seqs, cu_c1, layout.qb_seq, layout.qb_blk, scale,
        q.stride(0), q.stride(1), kc1.stride(0), kc1.stride(1), lse.stride(0),
        score.stride(0), score.stride(1), D, G, NKB, KERNEL=kernel_size, STRIDE=kernel_stride,
        POOL_K=pool_k, POOL_S=pool_s, POOL_PAD=pool_pad, BS=block_size, BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D, num_warps=8)
    return score


def select_blocks(q: torch.Tensor, k: torch.Tensor, block_size: int = 64, topk: int = 64,
                  init_blocks: int = 1, local_blocks: int = 32, kernel_size: int = 32,
                  kernel_stride: int = 16, lse_kernel_size: int = 128,
                  lse_kernel_stride: int = 64, cu_seqlens_q: torch.Tensor | None = None,
                  cu_seqlens_k: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    """Stage 1: the key blocks each query block attends, shared by the query heads of a group.

    Args:
        q: [B, Tq, Hq, D] queries at positions [Tk − Tq, Tk) of their sequence.
        k: [B, Tk, Hkv, D] keys at positions [0, Tk); Hq must be a multiple of Hkv.
        block_size: key block length (power of two >= 16, a multiple of kernel_stride).
        topk: blocks chosen by score besides the forced ones.
        init_blocks: first blocks of the sequence always attended.
        local_blocks: most recent blocks always attended, the query's own block included.
        kernel_size, kernel_stride: pooling of K_C1 (scored keys).
        lse_kernel_size, lse_kernel_stride: pooling of K_C2 (approximate normaliser).
        cu_seqlens_q, cu_seqlens_k: packed batch (B = 1): sequence i holds query rows
            cu_seqlens_q[i]:cu_seqlens_q[i+1] and key rows cu_seqlens_k[i]:cu_seqlens_k[i+1];
            every sequence selects its own blocks, numbered from its position 0.
        scale: softmax scale, default 1/sqrt(D).
    Returns:
        int32 [B, NQB, Hkv, K], K = init_blocks + local_blocks + topk: for query block r (the
        r-th block of `block_size` keys holding a query, counted from block (Tk − Tq) //
        block_size) the selected key-block indices, ascending, −1 in unused slots. Packed:
        [1, Σ NQB_i, Hkv, K], sequence after sequence.
    """
    check_qkv(q, k, None, cu_seqlens_q, cu_seqlens_k)
    check_block_args(block_size, kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride)
    check_selection_args(topk, init_blocks, local_blocks)
    layout = make_layout(q, k, block_size, cu_seqlens_q, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cu_k = cu_seqlens_k if cu_seqlens_k is not None else layout.cu_k
    k_flat = k.reshape(1, -1, k.shape[2], k.shape[3])
    score = _block_scores(pack(q), k_flat, layout, cu_k, block_size, kernel_size, kernel_stride,
                          lse_kernel_size, lse_kernel_stride, scale)
    idx = topk_blocks(score, layout.qb_blk, topk, init_blocks, local_blocks)
    return idx.reshape(q.shape[0], -1, *idx.shape[1:])
