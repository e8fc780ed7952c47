"""Shared bookkeeping of the InfLLM-V2 ops: argument checks, packed layout, block geometry.

Every op works on packed sequences internally. A padded batch q [B, Tq, Hq, D], k [B, Tk, Hkv, D]
is B sequences of equal length; a packed batch (B = 1) is described by cu_seqlens. In both cases
the queries of sequence i are the LAST len_q(i) positions of its len_k(i) keys, i.e. they sit at
positions [len_k − len_q, len_k) (the position offset used by context parallelism and chunked
prefill). Blocks of `block_size` keys are aligned to position 0 of each sequence; a "query block"
is such a block that holds at least one query.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def num_windows(length: int, kernel_size: int, kernel_stride: int) -> int:
    """Number of full pooling windows [c·stride, c·stride + kernel) inside `length` tokens."""
    return 0 if length < kernel_size else (length - kernel_size) // kernel_stride + 1


def pool_geometry(block_size: int, kernel_size: int, kernel_stride: int) -> tuple[int, int, int]:
    """(pool_kernel, pool_stride, pool_padding) mapping compressed windows onto key blocks.

    Block j gets the max over every window that overlaps it: windows c with
    c·stride < (j+1)·block and c·stride + kernel > j·block, i.e. c in
    [j·block/stride − (kernel/stride − 1), j·block/stride + block/stride − 1].
    Defaults (block 64, kernel 32, stride 16) give kernel 5, stride 4, padding 1.
    """
    pool_stride = block_size // kernel_stride
    pool_pad = kernel_size // kernel_stride - 1
    return pool_stride + pool_pad, pool_stride, pool_pad


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


@dataclass
class Layout:
    """Packed-sequence geometry, on q's device (int32). N sequences, NQB query blocks, NKB key
    blocks (all blocks of all sequences)."""
    len_q: list[int]
    len_k: list[int]
    cu_q: torch.Tensor    # [N + 1] query row offsets
    cu_k: torch.Tensor    # [N + 1] key row offsets
    qb_seq: torch.Tensor  # [NQB] sequence of each query block
    qb_blk: torch.Tensor  # [NQB] block index of each query block inside its sequence
    kb_seq: torch.Tensor  # [NKB] sequence of each key block
    kb_blk: torch.Tensor  # [NKB] block index of each key block inside its sequence
    cu_kb: torch.Tensor   # [N + 1] first key block of each sequence
    max_blocks: int       # most key blocks in one sequence

    @property
    def num_qblocks(self) -> int:
        return self.qb_seq.numel()


def make_layout(q: torch.Tensor, k: torch.Tensor, block_size: int,
                cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None) -> Layout:
    """Layout of a padded batch (cu_seqlens None) or of a packed batch."""
    if cu_seqlens_q is None:
        len_q, len_k = [q.shape[1]] * q.shape[0], [k.shape[1]] * k.shape[0]
    else:
        len_q, len_k = cu_seqlens_q.diff().tolist(), cu_seqlens_k.diff().tolist()
    qb_seq, qb_blk, kb_seq, kb_blk = [], [], [], []
    for i, (lq, lk) in enumerate(zip(len_q, len_k)):
        blocks = range((lk - lq) // block_size, (lk - 1) // block_size + 1) if lq else range(0)
        qb_seq += [i] * len(blocks)
        qb_blk += blocks
        n_kb = -(-lk // block_size)
        kb_seq += [i] * n_kb
        kb_blk += range(n_kb)

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device=q.device)

    def offsets(lengths):
        return ints([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist())

    return Layout(len_q, len_k, offsets(len_q), offsets(len_k), ints(qb_seq), ints(qb_blk),
                  ints(kb_seq), ints(kb_blk), offsets([-(-lk // block_size) for lk in len_k]),
                  max(-(-lk // block_size) for lk in len_k))


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] -> contiguous [B·T, H, D] (the kernels' packed layout)."""
    return x.reshape(-1, x.shape[2], x.shape[3]).contiguous()


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
