"""Chunked Triton forward and backward of Lightning attention (linear attention, per-head decay).

Per head, lambda = exp(-s). The tokens split into chunks of BT (per sequence with cu_seqlens; a
sequence's last chunk may be partial, n <= BT rows). With local rows i, j = 0 .. n-1 and S_c the
state before chunk c ([K, V], fp32; S_0 the initial state):

    o_i     = scale * (lambda^(i+1) q_i S_c + sum_{j<=i} lambda^(i-j) (q_i . k_j) v_j)
    S_{c+1} = lambda^n S_c + sum_j lambda^(n-1-j) k_j^T v_j

Backward, with dS_c the gradient of the state AFTER chunk c (dS of the last chunk = d final state):

    dS_{c-1} = lambda^n dS_c + scale * sum_i lambda^(i+1) q_i^T do_i      (reverse sweep)
    dq_i = scale * (lambda^(i+1) do_i S_c^T + sum_{j<=i} lambda^(i-j) (do_i . v_j) k_j)
    dk_j = lambda^(n-1-j) v_j dS_c^T + scale * sum_{i>=j} lambda^(i-j) (do_i . v_j) q_i
    dv_j = lambda^(n-1-j) k_j dS_c + scale * sum_{i>=j} lambda^(i-j) (q_i . k_j) do_i

Three kernels: `_state_sweep_kernel` (sequential over chunks: states forward, state gradients in
reverse), `_chunk_output_kernel` (parallel over chunks: o in the forward, dv in the backward: the
same form with q/k and the decay directions swapped) and `_dqk_kernel` (parallel over chunks).
The backward recomputes the states instead of keeping them. All accumulation is fp32.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def _empty(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None):
    """Every kernel output is allocated here, uninitialised; tests swap in a NaN-filled
    allocator so memory a kernel fails to write shows up."""
    return torch.empty(shape, device=like.device, dtype=like.dtype if dtype is None else dtype)


@dataclass(frozen=True)
class ChunkLayout:
    """How the token axis splits into chunks: N sequences, NT chunks in all.

    Without cu_seqlens the N = B sequences all have length T. With cu_seqlens, `chunk_indices`
    [NT, 2] int32 holds (sequence, chunk within it) per chunk and `chunk_offsets` [N] int32 the
    index of each sequence's first chunk.
    """
    T: int
    BT: int
    N: int
    NT: int
    cu_seqlens: torch.Tensor | None = None
    chunk_indices: torch.Tensor | None = None
    chunk_offsets: torch.Tensor | None = None


def chunk_layout(B: int, T: int, BT: int, cu_seqlens: torch.Tensor | None,
                 seqlens: list[int] | None) -> ChunkLayout:
    """Chunk bookkeeping for a batch [B, T] or a packed batch with offsets `seqlens` (host copy
    of `cu_seqlens`)."""
    if seqlens is None:
        return ChunkLayout(T, BT, B, B * triton.cdiv(T, BT))
    counts = [triton.cdiv(eos - bos, BT) for bos, eos in zip(seqlens, seqlens[1:])]
    offsets = [0, *itertools.accumulate(counts)][:-1]
    indices = [(n, i) for n, count in enumerate(counts) for i in range(count)]
    device = cu_seqlens.device
    return ChunkLayout(T, BT, len(counts), len(indices), cu_seqlens.to(torch.int32),
                       torch.tensor(indices, dtype=torch.int32, device=device).view(-1, 2),
                       torch.tensor(offsets, dtype=torch.int32, device=device))


@triton.jit
def _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Tokens [bos, eos) of sequence i_n and the index boc of its first chunk."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
        boc = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, eos, boc


@triton.jit
def _chunk_bounds(i_c, chunk_indices, cu_seqlens, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First token t0 and row count n of chunk i_c (global chunk index)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c)
        i_t = tl.load(chunk_indices + 2 * i_c + 1)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        i_n = i_c // tl.cdiv(T, BT)
        i_t = i_c % tl.cdiv(T, BT)
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    t0 = bos + i_t * BT
    return t0, tl.minimum(eos - t0, BT)


@triton.jit
def _rows(x, t0, n, i_h, d0, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr,
          BD: tl.constexpr):
    """Pointers and mask of the [BT, BD] tile of x [B*T, H, D]: rows t0 .. t0+n-1, columns
    d0 .., head i_h (int64 only in the scalar base offset)."""
    o_t = tl.arange(0, BT)
    o_d = d0 + tl.arange(0, BD)
    p_x = x + (t0 * (H * D) + i_h * D) + (o_t[:, None] * (H * D) + o_d[None, :])
    return p_x, (o_t[:, None] < n) & (o_d[None, :] < D)


@triton.jit
def _load_rows(x, t0, n, i_h, d0, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr,
               BD: tl.constexpr):
    """[BT, BD] tile of x (see `_rows`), zero-padded."""
    p_x, m_x = _rows(x, t0, n, i_h, d0, H, D, BT, BD)
    return tl.load(p_x, mask=m_x, other=0.)


@triton.jit
def _store_rows(x, b_x, t0, n, i_h, d0, H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr,
                BD: tl.constexpr):
    """Store the [BT, BD] tile b_x where `_load_rows` with the same arguments reads."""
    p_x, m_x = _rows(x, t0, n, i_h, d0, H, D, BT, BD)
    tl.store(p_x, b_x.to(x.dtype.element_ty), mask=m_x)


@triton.jit
def _state_tile(i_s, k0, v0, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    """Offsets and mask of the [BK, BV] tile (k0.., v0..) of state i_s in a [*, K, V] tensor."""
    o_k = k0 + tl.arange(0, BK)
    o_v = v0 + tl.arange(0, BV)
    offs = i_s.to(tl.int64) * (K * V) + o_k[:, None] * V + o_v[None, :]
    return offs, (o_k[:, None] < K) & (o_v[None, :] < V)


@triton.jit
def _decays(s, n, BT: tl.constexpr):
    """[BT] lambda^(i+1) (chunk start -> row i) and [BT] lambda^(n-1-i) (row i -> chunk end);
    both zero on rows i >= n."""
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    b_in = tl.where(m_t, tl.exp(-s * (o_t + 1).to(tl.float32)), 0.)
    b_out = tl.where(m_t, tl.exp(-s * tl.maximum(n - 1 - o_t, 0).to(tl.float32)), 0.)
    return b_in, b_out


@triton.jit
def _intra_decay(s, BT: tl.constexpr):
    """[BT, BT] D[i, j] = lambda^(i-j) for i >= j, else 0."""
    o_t = tl.arange(0, BT)
    diff = o_t[:, None] - o_t[None, :]
    return tl.where(diff >= 0, tl.exp(-s * tl.maximum(diff, 0).to(tl.float32)), 0.)


@triton.jit
def _dot(a, b, ref, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in fp32, both operands first rounded to ref's element type (the input
    dtype). DOT_PREC is "ieee" for fp32 inputs (no TF32). UPCAST multiplies the rounded operands in
    fp32: for bf16 under the Triton interpreter, whose bf16 tl.dot multiplies the raw bits
    (triton-lang/triton#11584)."""
    a = a.to(ref.dtype.element_ty)
    b = b.to(ref.dtype.element_ty)
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _state_sweep_kernel(x, y, slopes, states, s_in, s_out, cu_seqlens, chunk_offsets, scale, T,
                        H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, USE_S_IN: tl.constexpr,
                        STORE_S_OUT: tl.constexpr, REVERSE: tl.constexpr,
                        IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Carry a [K, V] state over one sequence's chunks, storing it before each chunk.

    Forward (x, y = k, v): S <- lambda^n S + sum_j lambda^(n-1-j) x_j^T y_j, chunks in order.
    REVERSE (x, y = q, do): dS <- lambda^n dS + scale sum_i lambda^(i+1) x_i^T y_i, last chunk
    first. s_in / s_out: [N, H, K, V] state entering / leaving the sweep.
    """
    i_nh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boc = _seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    NT = tl.cdiv(eos - bos, BT)
    s = tl.load(slopes + i_h).to(tl.float32)
    o_nh, m_kv = _state_tile(i_nh, i_k * BK, i_v * BV, K, V, BK, BV)

    b_s = tl.zeros([BK, BV], dtype=tl.float32)  # [BK, BV]
    if USE_S_IN:
        b_s += tl.load(s_in + o_nh, mask=m_kv, other=0.).to(tl.float32)
    for i in range(0, NT):
        if REVERSE:
            i_t = NT - 1 - i
        else:
            i_t = i
        o_s, _ = _state_tile((boc + i_t) * H + i_h, i_k * BK, i_v * BV, K, V, BK, BV)
        tl.store(states + o_s, b_s, mask=m_kv)
        t0 = bos + i_t * BT
        n = tl.minimum(eos - t0, BT)
        b_x = _load_rows(x, t0, n, i_h, i_k * BK, H, K, BT, BK)  # [BT, BK]
        b_y = _load_rows(y, t0, n, i_h, i_v * BV, H, V, BT, BV)  # [BT, BV]
        b_in, b_out = _decays(s, n, BT)  # [BT]
        if REVERSE:
            b_w = b_in * scale
        else:
            b_w = b_out
        b_xw = tl.trans(b_x * b_w[:, None])  # [BK, BT]
        b_s = b_s * tl.exp(-s * n.to(tl.float32)) + _dot(b_xw, b_y, y, DOT_PREC, UPCAST)
    if STORE_S_OUT:
        tl.store(s_out + o_nh, b_s, mask=m_kv)


@triton.jit
def _chunk_output_kernel(x, y, z, slopes, states, out, chunk_indices, cu_seqlens, scale, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr, BACKWARD: tl.constexpr,
                         IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """out = w * (x S) + scale * [(x y^T) * M] z for one chunk and one V block.

    Forward (o):  x, y, z = q, k, v; S the state before the chunk; w_i = scale lambda^(i+1); M = D.
    BACKWARD (dv): x, y, z = k, q, do; S the state gradient after the chunk;
    w_j = lambda^(n-1-j); M = D^T.
    """
    i_cv, i_h = tl.program_id(0), tl.program_id(1)
    i_c, i_v = i_cv // tl.cdiv(V, BV), i_cv % tl.cdiv(V, BV)
    t0, n = _chunk_bounds(i_c, chunk_indices, cu_seqlens, T, BT, IS_VARLEN)
    s = tl.load(slopes + i_h).to(tl.float32)

    b_A = tl.zeros([BT, BT], dtype=tl.float32)  # [BT, BT] x y^T
    b_xs = tl.zeros([BT, BV], dtype=tl.float32)  # [BT, BV] x S
    for k0 in range(0, K, BK):
        b_x = _load_rows(x, t0, n, i_h, k0, H, K, BT, BK)  # [BT, BK]
        b_y = _load_rows(y, t0, n, i_h, k0, H, K, BT, BK)  # [BT, BK]
        o_s, m_s = _state_tile(i_c * H + i_h, k0, i_v * BV, K, V, BK, BV)
        b_S = tl.load(states + o_s, mask=m_s, other=0.)  # [BK, BV]
        b_A += _dot(b_x, tl.trans(b_y), x, DOT_PREC, UPCAST)
        b_xs += _dot(b_x, b_S, x, DOT_PREC, UPCAST)
    b_in, b_out = _decays(s, n, BT)  # [BT]
    if BACKWARD:
        b_w = b_out
        b_M = tl.trans(_intra_decay(s, BT))  # [BT, BT]
    else:
        b_w = b_in * scale
        b_M = _intra_decay(s, BT)  # [BT, BT]
    b_z = _load_rows(z, t0, n, i_h, i_v * BV, H, V, BT, BV)  # [BT, BV]
    b_o = b_xs * b_w[:, None] + _dot(b_A * b_M * scale, b_z, z, DOT_PREC, UPCAST)  # [BT, BV]
    _store_rows(out, b_o, t0, n, i_h, i_v * BV, H, V, BT, BV)


@triton.jit
def _dqk_kernel(q, k, v, do, slopes, states, dstates, dq, dk, chunk_indices, cu_seqlens, scale,
                T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr,
                DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """dq and dk of one chunk and one K block (formulas in the module docstring)."""
    i_ck, i_h = tl.program_id(0), tl.program_id(1)
    i_c, i_k = i_ck // tl.cdiv(K, BK), i_ck % tl.cdiv(K, BK)
    t0, n = _chunk_bounds(i_c, chunk_indices, cu_seqlens, T, BT, IS_VARLEN)
    s = tl.load(slopes + i_h).to(tl.float32)

    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # [BT, BT] do v^T
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # [BT, BK] do S^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # [BT, BK] v dS^T
    for v0 in range(0, V, BV):
        b_v = _load_rows(v, t0, n, i_h, v0, H, V, BT, BV)  # [BT, BV]
        b_do = _load_rows(do, t0, n, i_h, v0, H, V, BT, BV)  # [BT, BV]
        o_s, m_s = _state_tile(i_c * H + i_h, i_k * BK, v0, K, V, BK, BV)
        b_S = tl.load(states + o_s, mask=m_s, other=0.)  # [BK, BV]
        b_dS = tl.load(dstates + o_s, mask=m_s, other=0.)  # [BK, BV]
        b_dA += _dot(b_do, tl.trans(b_v), do, DOT_PREC, UPCAST)
        b_dq += _dot(b_do, tl.trans(b_S), do, DOT_PREC, UPCAST)
        b_dk += _dot(b_v, tl.trans(b_dS), v, DOT_PREC, UPCAST)
    b_in, b_out = _decays(s, n, BT)  # [BT]
    b_dA = b_dA * _intra_decay(s, BT) * scale  # [BT, BT]
    b_q = _load_rows(q, t0, n, i_h, i_k * BK, H, K, BT, BK)  # [BT, BK]
    b_k = _load_rows(k, t0, n, i_h, i_k * BK, H, K, BT, BK)  # [BT, BK]
    b_dq = b_dq * (b_in * scale)[:, None] + _dot(b_dA, b_k, k, DOT_PREC, UPCAST)
    b_dk = b_dk * b_out[:, None] + _dot(tl.trans(b_dA), b_q, q, DOT_PREC, UPCAST)
    _store_rows(dq, b_dq, t0, n, i_h, i_k * BK, H, K, BT, BK)
    _store_rows(dk, b_dk, t0, n, i_h, i_k * BK, H, K, BT, BK)


# Widest K / V tiles and warps per kernel: chosen so that ptxas (triton 3.8, sm_90) reports no
# register spills for bf16, K = V = 128, BT = 64. Not yet tuned by timing.
_SWEEP_TILES = dict(BK=32, BV=32, num_warps=4)
_OUTPUT_TILES = dict(BK=64, BV=64, num_warps=8)
_DQK_TILES = dict(BK=32, BV=64, num_warps=8)


def _meta(x: torch.Tensor, layout: ChunkLayout, K: int, V: int, tiles: dict) -> dict:
    """Compile-time arguments and launch options of one kernel launch. Tiles are powers of two
    in [16, the kernel's widest] (tl.dot needs >= 16)."""
    BK, BV = (max(16, min(tiles[b], triton.next_power_of_2(d))) for b, d in (("BK", K), ("BV", V)))
    return dict(H=x.shape[2], K=K, V=V, BT=layout.BT, BK=BK, BV=BV,
                IS_VARLEN=layout.cu_seqlens is not None,
                DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32",
                UPCAST=x.dtype == torch.bfloat16 and x.device.type == "cpu",
                num_warps=tiles["num_warps"])


def state_sweep(x, y, slopes, s_in, scale, layout: ChunkLayout, reverse: bool, store_out: bool):
    """States [NT, H, K, V] fp32 before each chunk (after each, when `reverse`) and the state
    [N, H, K, V] fp32 leaving the sweep (None unless `store_out`)."""
    H, K, V = x.shape[2], x.shape[3], y.shape[3]
    states = _empty((layout.NT, H, K, V), x, torch.float32)
    s_out = _empty((layout.N, H, K, V), x, torch.float32) if store_out else None
    meta = _meta(x, layout, K, V, _SWEEP_TILES)
    grid = (layout.N * H, triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]))
    _state_sweep_kernel[grid](x, y, slopes, states, s_in, s_out, layout.cu_seqlens,
                              layout.chunk_offsets, scale, layout.T, USE_S_IN=s_in is not None,
                              STORE_S_OUT=store_out, REVERSE=reverse, **meta)
    return states, s_out


def chunk_output(x, y, z, slopes, states, scale, layout: ChunkLayout, backward: bool):
    """o (x, y, z = q, k, v) or, when `backward`, dv (x, y, z = k, q, do); shaped like z."""
    H, K, V = x.shape[2], x.shape[3], z.shape[3]
    out = _empty(z.shape, z)
    meta = _meta(x, layout, K, V, _OUTPUT_TILES)
    grid = (layout.NT * triton.cdiv(V, meta["BV"]), H)
    _chunk_output_kernel[grid](x, y, z, slopes, states, out, layout.chunk_indices,
                               layout.cu_seqlens, scale, layout.T, BACKWARD=backward, **meta)
    return out


def chunk_dqk(q, k, v, do, slopes, states, dstates, scale, layout: ChunkLayout):
    """dq, dk shaped like q."""
    H, K, V = q.shape[2], q.shape[3], v.shape[3]
    dq, dk = _empty(q.shape, q), _empty(k.shape, k)
    meta = _meta(q, layout, K, V, _DQK_TILES)
    grid = (layout.NT * triton.cdiv(K, meta["BK"]), H)
    _dqk_kernel[grid](q, k, v, do, slopes, states, dstates, dq, dk, layout.chunk_indices,
                      layout.cu_seqlens, scale, layout.T, **meta)
    return dq, dk


class LightningAttnFunction(torch.autograd.Function):
    """Autograd for the chunked op; inputs contiguous [B, T, H, D]. No gradient to slopes."""

    @staticmethod
    def forward(ctx, q, k, v, slopes, scale, initial_state, output_final_state, layout):
        states, final = state_sweep(k, v, slopes, initial_state, 1.0, layout, reverse=False,
                                    store_out=output_final_state)
        o = chunk_output(q, k, v, slopes, states, scale, layout, backward=False)
        ctx.save_for_backward(q, k, v, slopes, initial_state)
        ctx.scale, ctx.layout = scale, layout
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, slopes, initial_state = ctx.saved_tensors
        scale, layout = ctx.scale, ctx.layout
        do = do.to(v.dtype).contiguous()
        dfinal = None if dfinal is None else dfinal.contiguous()
        want_dh0 = initial_state is not None and ctx.needs_input_grad[5]
        states, _ = state_sweep(k, v, slopes, initial_state, 1.0, layout, reverse=False,
                                store_out=False)
        dstates, dh0 = state_sweep(q, do, slopes, dfinal, scale, layout, reverse=True,
                                   store_out=want_dh0)
        dv = chunk_output(k, q, do, slopes, dstates, scale, layout, backward=True)
        dq, dk = chunk_dqk(q, k, v, do, slopes, states, dstates, scale, layout)
        dh0 = dh0.to(initial_state.dtype) if want_dh0 else None
        return dq, dk, dv, None, None, dh0, None, None
