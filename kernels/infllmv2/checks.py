"""Argument checks of the InfLLM-V2 ops: each raises ValueError naming the argument (the fast
ops and the naive references call the same checks)."""
from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_block_args(block_size: int, kernel_size: int, kernel_stride: int,
                     lse_kernel_size: int | None = None, lse_kernel_stride: int | None = None):
    """Raise ValueError unless the block and pooling sizes fit together."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if kernel_stride < 1 or kernel_size < kernel_stride or kernel_size % kernel_stride:
        raise ValueError(f"kernel_size ({kernel_size}) must be a positive multiple of "
                         f"kernel_stride ({kernel_stride})")
    if block_size % kernel_stride:
        raise ValueError(f"block_size ({block_size}) must be a multiple of kernel_stride "
                         f"({kernel_stride})")
    if lse_kernel_size is not None and (lse_kernel_stride < 1 or lse_kernel_size < 1):
        raise ValueError(f"lse_kernel_size ({lse_kernel_size}) and lse_kernel_stride "
                         f"({lse_kernel_stride}) must be positive")


def check_selection_args(topk: int, init_blocks: int, local_blocks: int):
    """Raise ValueError for negative counts or a local window that misses the query's own block."""
    if topk < 0 or init_blocks < 0:
        raise ValueError(f"topk ({topk}) and init_blocks ({init_blocks}) must be >= 0")
    if local_blocks < 1:
        raise ValueError(f"local_blocks must be >= 1 (it includes the query's own block), "
                         f"got {local_blocks}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None,
              cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None):
    """Raise ValueError naming the argument when q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] or the
    cu_seqlens do not describe a valid (packed) batch."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x is None:
            continue
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, seq, heads, head_dim], got shape "
                             f"{tuple(x.shape)}")
        if x.dtype not in DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
        if x.dtype != q.dtype or x.device != q.device:
            raise ValueError(f"{name} must match q's dtype and device ({q.dtype}, {q.device}), "
                             f"got ({x.dtype}, {x.device})")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k {tuple(k.shape)} must share batch and head_dim with q "
                         f"{tuple(q.shape)}")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q heads ({q.shape[2]}) must be a multiple of k heads ({k.shape[2]})")
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be given together")
    if cu_seqlens_q is None:
        if not 1 <= q.shape[1] <= k.shape[1]:
            raise ValueError(f"q length ({q.shape[1]}) must be in [1, k length ({k.shape[1]})]: "
                             "queries are the last positions of the keys")
        return
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens the batch must be packed (batch 1), got {q.shape[0]}")
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[1]),
                            ("cu_seqlens_k", cu_seqlens_k, k.shape[1])):
        if cu.dim() != 1 or cu.numel() < 2 or cu.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a 1-D int32/int64 tensor [num_seqs + 1], got "
                             f"{cu.dtype} {tuple(cu.shape)}")
        if cu[0] != 0 or cu[-1] != total or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{name} must rise from 0 to the packed length {total}, got "
                             f"{cu.tolist()}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel() or bool(
            (cu_seqlens_q.diff() > cu_seqlens_k.diff()).any()):
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same sequences, each "
                         "with no more queries than keys")


def check_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         position_offset: int, cu_seqlens: torch.Tensor | None):
    """Raise ValueError unless q/k/v fit the top-level call: k holds positions
    [0, position_offset + Tq) of each sequence, or (packed) the same rows as q."""
    if cu_seqlens is None:
        check_qkv(q, k, v, None, None)
        if position_offset < 0 or k.shape[1] != position_offset + q.shape[1]:
            raise ValueError(f"k length ({k.shape[1]}) must equal position_offset "
                             f"({position_offset}) + q length ({q.shape[1]})")
        return
    if position_offset != 0:
        raise ValueError(f"position_offset must be 0 with cu_seqlens, got {position_offset}")
    check_qkv(q, k, v, cu_seqlens, cu_seqlens)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"with cu_seqlens q and k must hold the same rows, got q length "
                         f"{q.shape[1]} and k length {k.shape[1]}")
