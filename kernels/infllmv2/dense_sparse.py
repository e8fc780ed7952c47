"""InfLLM-V2 dense-sparse switchable attention: the public entry point."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .block_sparse import block_sparse_attention
from .checks import check_attention_args, check_block_args, check_selection_args
from .layout import Layout, make_layout
from .select import select_blocks


def dense_block_idx(layout: Layout, num_kv_heads: int, num_slots: int) -> torch.Tensor:
    """Every causally visible block for each query block: int32 [NQB, Hkv, num_slots], −1 padded
    (num_slots must cover the longest sequence's blocks)."""
    j = torch.arange(num_slots, dtype=torch.int32, device=layout.qb_blk.device)
    idx = torch.where(j <= layout.qb_blk[:, None], j, -1)  # [NQB, num_slots]
    return idx[:, None, :].expand(-1, num_kv_heads, -1).contiguous()


def infllmv2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense_len: int = 8192,
                       block_size: int = 64, topk: int = 64, init_blocks: int = 1,
                       local_blocks: int = 32, kernel_size: int = 32, kernel_stride: int = 16,
                       position_offset: int = 0, cu_seqlens: torch.Tensor | None = None,
                       scale: float | None = None, lse_kernel_size: int = 128,
                       lse_kernel_stride: int = 64) -> torch.Tensor:
    """InfLLM-V2 attention: dense causal below `dense_len` keys, block-sparse above.

    Args:
        q: [B, Tq, Hq, D] queries (bshd, float32/float16/bfloat16).
        k, v: [B, Tk, Hkv, D] keys/values, Hq a multiple of Hkv. Tk = position_offset + Tq.
        dense_len: a sequence with fewer keys than this attends densely.
        block_size: key block length (power of two >= 16, multiple of kernel_stride).
        topk: key blocks chosen by score besides the forced ones.
        init_blocks: first blocks of each sequence always attended.
        local_blocks: most recent blocks always attended, the query's own block included.
        kernel_size, kernel_stride: mean-pooling window of the scored compressed keys (K_C1).
        position_offset: the queries are positions [offset, offset + Tq) of a sequence whose
            keys [0, offset + Tq) are all given (context parallelism, chunked prefill): block
            indices and causality use these global positions.
        cu_seqlens: [N + 1] int offsets of a packed batch (B = 1, Tq = Tk, position_offset 0);
            no sequence attends across a boundary and each selects its own blocks from its
            position 0.
        scale: softmax scale, default 1/sqrt(D).
        lse_kernel_size, lse_kernel_stride: pooling of K_C2, used only for the approximate
            softmax normaliser of the selection scores.
    Returns:
        [B, Tq, Hq, D] in q's dtype; differentiable in q, k, v (the block choice is not).

    Each query block attends at most init_blocks + local_blocks + topk blocks of block_size keys.
    All-dense calls without offset or packing go to torch SDPA; other dense sequences run the
    sparse kernel with every block selected (the same math as full causal attention).
    """
    check_attention_args(q, k, v, position_offset, cu_seqlens)
    check_block_args(block_size, kernel_size, kernel_stride, lse_kernel_size, lse_kernel_stride)
    check_selection_args(topk, init_blocks, local_blocks)
    layout = make_layout(q, k, block_size, cu_seqlens, cu_seqlens)
    dense = [n < dense_len for n in layout.len_k]  # per sequence
    if all(dense) and cu_seqlens is None and position_offset == 0:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, scale=scale, enable_gqa=True)
        return o.transpose(1, 2)
    if all(dense):
        idx = dense_block_idx(layout, k.shape[2], layout.max_blocks)
    else:
        idx = select_blocks(q, k, block_size, topk, init_blocks, local_blocks, kernel_size,
                            kernel_stride, lse_kernel_size, lse_kernel_stride, cu_seqlens,
                            cu_seqlens, scale).flatten(0, 1)
        if any(dense):
            num_slots = init_blocks + local_blocks + topk
            dense_keys = max(n for n, d in zip(layout.len_k, dense) if d)
            slots = max(num_slots, -(-dense_keys // block_size))
            idx = F.pad(idx, (0, slots - num_slots), value=-1)
            rows_dense = torch.tensor(dense, device=q.device)[layout.qb_seq.long()]  # [NQB]
            rows_dense = rows_dense[:, None, None]
            idx = torch.where(rows_dense, dense_block_idx(layout, k.shape[2], slots), idx)
    idx = idx.reshape(q.shape[0], -1, *idx.shape[1:])
    return block_sparse_attention(q, k, v, idx, block_size, cu_seqlens, cu_seqlens, scale)[0]
