"""Stage 2 of InfLLM-V2: block-sparse causal attention over selected key blocks (Triton)."""
from __future__ import annotations

import torch
import triton

from .block_sparse_kernels import _dkdv_kernel, _dq_kernel, _fwd_kernel
from .checks import check_qkv
from .layout import Layout, make_layout, pack


def _launch_meta(q: torch.Tensor, block_size: int) -> dict:
    """Tile sizes and launch options. 8 warps: at block 64 and head dim 128 (bf16, sm_90) 4 warps
    spill registers (ptxas), 8 do not or barely; float32 (tests) skips pipelining to save shared
    memory."""
    return dict(BS=block_size, BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),
                num_warps=8, num_stages=1 if q.dtype == torch.float32 else 2)


def transposed_index(block_idx: torch.Tensor,
                     layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR of the query blocks that selected each (KV head, key block): (ptr [Hkv·NKB + 1],
    query blocks [nnz] ascending per row). Key blocks are numbered over all sequences."""
    NQB, Hkv, K = block_idx.shape
    NKB = layout.kb_seq.numel()
    first_kb = layout.cu_kb.long()[layout.qb_seq.long()]  # [NQB]
    j = block_idx.long()
    key = torch.arange(Hkv, device=j.device)[None, :, None] * NKB + first_kb[:, None, None] + j
    qb = torch.arange(NQB, device=j.device)[:, None, None].expand(NQB, Hkv, K)
    valid = j >= 0
    key, qb = key[valid], qb[valid]  # row-major: query blocks ascending within each key
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(key, minlength=Hkv * NKB)
    ptr = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    return ptr, qb[order].to(torch.int32)


class _BlockSparseAttention(torch.autograd.Function):
    """Packed q [Tq, Hq, D], k/v [Tk, Hkv, D], block_idx [NQB, Hkv, K] -> o, lse [Tq, Hq]."""

    @staticmethod
    def forward(ctx, q, k, v, block_idx, layout, block_size, scale):
        Hq, G = q.shape[1], q.shape[1] // k.shape[1]
        o = torch.empty_like(q)
        lse = torch.empty(q.shape[0], Hq, dtype=torch.float32, device=q.device)
        meta = _launch_meta(q, block_size)
        _fwd_kernel[(Hq, layout.num_qblocks)](
            q, k, v, o, lse, block_idx, layout.cu_q, layout.cu_k, layout.qb_seq, layout.qb_blk,
            scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1), block_idx.stride(0),
            block_idx.stride(1), q.shape[2], G, block_idx.shape[2],
            BLOCK_K=triton.next_power_of_2(block_idx.shape[2]), **meta)
        ctx.save_for_backward(q, k, v, o, lse, block_idx)
        ctx.mark_non_differentiable(lse)
        ctx.layout, ctx.block_size, ctx.scale = layout, block_size, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, block_idx = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[2]
        do = do.contiguous()
        delta = (o.float() * do.float()).sum(-1)  # [Tq, Hq]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        meta = _launch_meta(q, ctx.block_size)
        _dq_kernel[(Hq, layout.num_qblocks)](
            q, k, v, do, dq, lse, delta, block_idx, layout.cu_q, layout.cu_k, layout.qb_seq,
            layout.qb_blk, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            block_idx.stride(0), block_idx.stride(1), D, Hq // Hkv, block_idx.shape[2],
            BLOCK_K=triton.next_power_of_2(block_idx.shape[2]), **meta)
        csr_ptr, csr_qb = transposed_index(block_idx, layout)
        _dkdv_kernel[(Hkv, layout.kb_seq.numel())](
            q, k, v, do, dk, dv, lse, delta, csr_ptr, csr_qb, layout.cu_q, layout.cu_k,
            layout.qb_seq, layout.qb_blk, layout.kb_seq, layout.kb_blk, scale, q.stride(0),
            q.stride(1), k.stride(0), k.stride(1), D, Hq // Hkv, Hq,
            BLOCK_Q=16, **meta)
        return dq, dk, dv, None, None, None, None


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           block_idx: torch.Tensor, block_size: int = 64,
                           cu_seqlens_q: torch.Tensor | None = None,
                           cu_seqlens_k: torch.Tensor | None = None,
                           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: causal attention of each query block over its selected key blocks.

    Args:
        q: [B, Tq, Hq, D] queries at positions [Tk − Tq, Tk) of their sequence.
        k, v: [B, Tk, Hkv, D]; Hq a multiple of Hkv; all query heads of a KV group share the
            group's blocks.
        block_idx: int32 [B, NQB, Hkv, K] as returned by select_blocks (distinct key-block
            indices ascending, −1 padded; each query block should hold its own block).
        block_size: key/query block length (power of two >= 16).
        cu_seqlens_q, cu_seqlens_k: packed batch (B = 1), see select_blocks; block_idx is then
            [1, Σ NQB_i, Hkv, K].
        scale: softmax scale, default 1/sqrt(D).
    Returns:
        (o [B, Tq, Hq, D] in q's dtype, lse [B, Tq, Hq] float32 natural-log normaliser). o is
        differentiable in q, k, v (float32 accumulation; deterministic backward); lse is not.
    """
    check_qkv(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    layout = make_layout(q, k, block_size, cu_seqlens_q, cu_seqlens_k)
    B, Tq, Hq, D = q.shape
    nqb = layout.num_qblocks // B
    if (block_idx.dim() != 4 or block_idx.shape[:3] != (B, nqb, k.shape[2])
            or block_idx.dtype != torch.int32):
        raise ValueError(f"block_idx must be int32 [{B}, {nqb}, {k.shape[2]}, K] (batch, query "
                         f"blocks, kv heads, slots), got {block_idx.dtype} "
                         f"{tuple(block_idx.shape)}")
    scale = D ** -0.5 if scale is None else scale
    idx = block_idx.reshape(-1, *block_idx.shape[2:]).contiguous()
    o, lse = _BlockSparseAttention.apply(pack(q), pack(k), pack(v), idx, layout, block_size,
                                         scale)
    return o.reshape(B, Tq, Hq, D), lse.reshape(B, Tq, Hq)
