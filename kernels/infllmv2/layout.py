"""Packed-sequence layout and block geometry shared by the InfLLM-V2 ops.

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
