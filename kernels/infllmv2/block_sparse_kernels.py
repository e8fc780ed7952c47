"""Stage-2 Triton kernels: block-sparse causal attention forward, dq, and dk/dv.

Packed layout: q/o/do [Tq_total, Hq, D], k/v [Tk_total, Hkv, D], lse/delta [Tq_total, Hq] fp32,
block_idx [NQB, Hkv, K] int32 (sequence-local key-block indices, ascending, −1 padded). One program
owns one query block (BS tokens) of one query head (forward, dq) or one key block of one KV head
(dk/dv, walking the transposed index: the query blocks that selected it). Softmax runs in base 2.
"""
import triton
import triton.language as tl

from .tiles import DOT_PRECISION, LOG2E, load_tile, query_block, store_tile


@triton.jit
def _num_selected(block_idx, i_b, i_hk, stride_ib, stride_ih, K, BLOCK_K: tl.constexpr):
    """Pointer to the block list of (query block i_b, KV head i_hk) and its count of valid slots."""
    p_idx = block_idx + i_b * stride_ib + i_hk * stride_ih
    o_s = tl.arange(0, BLOCK_K)
    return p_idx, tl.sum((tl.load(p_idx + o_s, mask=o_s < K, other=-1) >= 0).to(tl.int32))


@triton.jit
def _selected_keys(k, v, p_idx, s, k_start, len_k, i_hk, stride_kt, stride_kh, D,
                   BS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The s-th selected key block of a block list: key positions [BS], their validity [BS], and
    the k and v tiles [BS, BLOCK_D] of KV head i_hk (zero outside the sequence)."""
    j0 = tl.load(p_idx + s) * BS
    o_k = j0 + tl.arange(0, BS)
    m_k = o_k < len_k
    b_k = load_tile(k, k_start + j0.to(tl.int64), m_k, i_hk, stride_kt, stride_kh, D, BS,
                    BLOCK_D, 1)
    b_v = load_tile(v, k_start + j0.to(tl.int64), m_k, i_hk, stride_kt, stride_kh, D, BS,
                    BLOCK_D, 1)
    return o_k, m_k, b_k, b_v


@triton.jit
def _load_lse_delta(lse, delta, row0, m_t, i_h, H, BM: tl.constexpr):
    """Base-2 lse (+inf for rows without keys, so they get zero probability) and delta, [BM]."""
    p_r = row0 * H + tl.arange(0, BM) * H + i_h
    b_lse = tl.load(lse + p_r, mask=m_t, other=float("inf"))
    b_lse = tl.where(b_lse == float("-inf"), float("inf"), b_lse) * LOG2E
    return b_lse, tl.load(delta + p_r, mask=m_t, other=0.0)


@triton.jit
def _fwd_kernel(q, k, v, o, lse, block_idx, cu_q, cu_k, qb_seq, qb_blk, scale,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_ib, stride_ih, D, G, K,
                BS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    _, _, row0, o_t, m_t, k_start, len_k = query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, 0, BS, BS)
    p_idx, n_sel = _num_selected(block_idx, i_b, i_h // G, stride_ib, stride_ih, K, BLOCK_K)
    b_q = load_tile(q, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_m = tl.full([BS], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BS], dtype=tl.float32)
    b_acc = tl.zeros([BS, BLOCK_D], dtype=tl.float32)
    for s in range(n_sel):
        o_k, m_k, b_k, b_v = _selected_keys(k, v, p_idx, s, k_start, len_k, i_h // G, stride_kt,
                                            stride_kh, D, BS, BLOCK_D)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * (scale * LOG2E)
        b_s = tl.where(m_k[None, :] & (o_k[None, :] <= o_t[:, None]), b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_m_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.exp2(b_s - b_m_safe[:, None])  # [BS, BS]
        b_alpha = tl.exp2(b_m - b_m_safe)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v,
                                                  input_precision=DOT_PRECISION)
        b_m = b_m_new
    # a row with no visible key (only if block_idx misses its own block) outputs 0, lse −inf
    b_l_safe = tl.where(b_l > 0, b_l, 1.0)
    b_lse = tl.where(b_l > 0, (b_m + tl.log2(b_l_safe)) / LOG2E, float("-inf"))
    store_tile(o, b_acc / b_l_safe[:, None], row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D)
    H = tl.num_programs(0)
    tl.store(lse + row0 * H + tl.arange(0, BS) * H + i_h, b_lse, mask=m_t)


@triton.jit
def _dq_kernel(q, k, v, do, dq, lse, delta, block_idx, cu_q, cu_k, qb_seq, qb_blk, scale,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_ib, stride_ih, D, G, K,
               BS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    _, _, row0, o_t, m_t, k_start, len_k = query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, 0, BS, BS)
    p_idx, n_sel = _num_selected(block_idx, i_b, i_h // G, stride_ib, stride_ih, K, BLOCK_K)
    b_q = load_tile(q, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_do = load_tile(do, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_lse, b_delta = _load_lse_delta(lse, delta, row0, m_t, i_h, tl.num_programs(0), BS)
    b_dq = tl.zeros([BS, BLOCK_D], dtype=tl.float32)
    for s in range(n_sel):
        o_k, m_k, b_k, b_v = _selected_keys(k, v, p_idx, s, k_start, len_k, i_h // G, stride_kt,
                                            stride_kh, D, BS, BLOCK_D)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * (scale * LOG2E)
        m_s = m_k[None, :] & (o_k[None, :] <= o_t[:, None])  # [BS, BS]
        b_p = tl.where(m_s, tl.exp2(b_s - b_lse[:, None]), 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)  # [BS, BS]
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
    store_tile(dq, b_dq * scale, row0, m_t, i_h, stride_qt, stride_qh, D, BS, BLOCK_D)


@triton.jit
def _dkdv_kernel(q, k, v, do, dk, dv, lse, delta, csr_ptr, csr_qb, cu_q, cu_k, qb_seq, qb_blk,
                 kb_seq, kb_blk, scale, stride_qt, stride_qh, stride_kt, stride_kh, D, G, Hq,
                 BS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    i_hk, i_kb = tl.program_id(0), tl.program_id(1)
    i_n = tl.load(kb_seq + i_kb)
    k_start = tl.load(cu_k + i_n)
    j0 = tl.load(kb_blk + i_kb) * BS
    o_k = j0 + tl.arange(0, BS)  # [BS] key positions
    m_k = o_k < tl.load(cu_k + i_n + 1) - k_start
    row0_k = k_start + j0.to(tl.int64)
    b_k = load_tile(k, row0_k, m_k, i_hk, stride_kt, stride_kh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_v = load_tile(v, row0_k, m_k, i_hk, stride_kt, stride_kh, D, BS, BLOCK_D, 1)  # [BS, BD]
    b_dk = tl.zeros([BS, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BS, BLOCK_D], dtype=tl.float32)
    p_csr = csr_ptr + i_hk * tl.num_programs(1) + i_kb
    for e in range(tl.load(p_csr), tl.load(p_csr + 1)):
        i_b = tl.load(csr_qb + e)
        for sub in tl.static_range(0, BS, BLOCK_Q):  # query sub-tiles keep registers in check
            _, _, row0, o_t, m_t, _, _ = query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, sub, BS,
                                                     BLOCK_Q)
            m_s = m_k[:, None] & (o_k[:, None] <= o_t[None, :]) & m_t[None, :]  # [BS, BQ]
            for i_h in range(i_hk * G, i_hk * G + G):
                b_q = load_tile(q, row0, m_t, i_h, stride_qt, stride_qh, D, BLOCK_Q, BLOCK_D, 1)
                b_do = load_tile(do, row0, m_t, i_h, stride_qt, stride_qh, D, BLOCK_Q, BLOCK_D, 1)
                b_lse, b_delta = _load_lse_delta(lse, delta, row0, m_t, i_h, Hq, BLOCK_Q)  # [BQ]
                b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * (scale * LOG2E)
                b_pt = tl.where(m_s, tl.exp2(b_st - b_lse[None, :]), 0.0)  # [BS, BQ]
                b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
                b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)  # [BS, BQ]
                b_dst = b_pt * (b_dpt - b_delta[None, :])
                b_dk += tl.dot(b_dst.to(b_q.dtype), b_q, input_precision=DOT_PRECISION)
    store_tile(dk, b_dk * scale, row0_k, m_k, i_hk, stride_kt, stride_kh, D, BS, BLOCK_D)
    store_tile(dv, b_dv, row0_k, m_k, i_hk, stride_kt, stride_kh, D, BS, BLOCK_D)
