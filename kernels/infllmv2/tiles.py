"""Triton helpers shared by the selection and attention kernels.

Tiles address memory as one int64 base row (a scalar) plus int32 offsets inside the tile: 64-bit
per-element pointers cost registers that the attention kernels need for their accumulators.
"""
import triton
import triton.language as tl

DOT_PRECISION = tl.constexpr("ieee")  # exact float32 products; ignored for 16-bit operands
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def query_block(cu_q, cu_k, qb_seq, qb_blk, i_b, sub, BS: tl.constexpr, BM: tl.constexpr):
    """The BM query tokens from offset `sub` of query block i_b. Returns (sequence, block index,
    packed row of the tile's first token (int64, may lie outside the sequence), positions [BM],
    validity [BM], first key row of the sequence, key length of the sequence)."""
    i_n = tl.load(qb_seq + i_b)
    blk = tl.load(qb_blk + i_b)
    q_start = tl.load(cu_q + i_n)
    k_start = tl.load(cu_k + i_n)
    len_k = tl.load(cu_k + i_n + 1) - k_start
    off = len_k - (tl.load(cu_q + i_n + 1) - q_start)
    o_t = blk * BS + sub + tl.arange(0, BM)  # [BM] positions inside the sequence
    m_t = (o_t >= off) & (o_t < len_k)
    row0 = (q_start - off + blk * BS + sub).to(tl.int64)
    return i_n, blk, row0, o_t, m_t, k_start, len_k


@triton.jit
def load_tile(x, row0, m_r, i_h, stride_t, stride_h, D, BM: tl.constexpr, BLOCK_D: tl.constexpr,
              STEP: tl.constexpr):
    """x[row0 + STEP·r, i_h, :D] for r < BM as a [BM, BLOCK_D] tile, zero where m_r is false."""
    o_r = tl.arange(0, BM)
    o_d = tl.arange(0, BLOCK_D)
    p_x = x + row0 * stride_t + i_h * stride_h + (o_r[:, None] * (STEP * stride_t) + o_d[None, :])
    return tl.load(p_x, mask=m_r[:, None] & (o_d < D)[None, :], other=0.0)


@triton.jit
def store_tile(x, value, row0, m_r, i_h, stride_t, stride_h, D, BM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """x[row0 + r, i_h, :D] = value[r] for the rows where m_r is true."""
    o_r = tl.arange(0, BM)
    o_d = tl.arange(0, BLOCK_D)
    p_x = x + row0 * stride_t + i_h * stride_h + (o_r[:, None] * stride_t + o_d[None, :])
    tl.store(p_x, value.to(x.dtype.element_ty), mask=m_r[:, None] & (o_d < D)[None, :])
