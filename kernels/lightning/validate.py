"""Argument checks shared by the Triton and the naive Lightning ops (one place, one wording)."""
from __future__ import annotations

import os

import torch

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_inputs(q, k, v, slopes, scale, initial_state, cu_seqlens, chunk_size,
                 dtypes: tuple[torch.dtype, ...] | None = None) -> tuple[float, list[int] | None]:
    """Validate the arguments of a Lightning op; raise ValueError naming the bad argument.

    `dtypes` restricts q, k, v (None: any floating dtype). Returns the scale to use (K**-0.5 when
    `scale` is None) and, for packed batches, cu_seqlens as a host list (one device sync).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D], got {_describe(x)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K] = {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H of q {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    if T == 0 or K == 0 or v.shape[3] == 0:
        raise ValueError(f"q and v need T, K, V >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point or (dtypes is not None and q.dtype not in dtypes):
        allowed = "a floating dtype" if dtypes is None else ", ".join(map(str, dtypes))
        raise ValueError(f"q, k, v dtype must be {allowed}, got {q.dtype}")
    for name, x in (("k", k), ("v", v), ("slopes", slopes), ("initial_state", initial_state),
                    ("cu_seqlens", cu_seqlens)):
        if isinstance(x, torch.Tensor) and x.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {x.device}")
    if not isinstance(slopes, torch.Tensor) or slopes.shape != (H,) \
            or not slopes.is_floating_point():
        raise ValueError(f"slopes must be a floating tensor [H] = [{H}] of per-head decay "
                         f"slopes s_h >= 0, got {_describe(slopes)}")
    if slopes.requires_grad:
        raise ValueError("slopes must not require grad: the decay is fixed and gets no gradient "
                         "(pass slopes.detach() or a buffer)")
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size!r}")
    seqlens = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, B, T)
    N = B if seqlens is None else len(seqlens) - 1
    if initial_state is not None:
        want = (N, H, K, v.shape[3])
        if not isinstance(initial_state, torch.Tensor) or initial_state.shape != want \
                or not initial_state.is_floating_point():
            raise ValueError(f"initial_state must be a floating tensor [N, H, K, V] = {list(want)} "
                             f"(N = batch size, or number of sequences with cu_seqlens), got "
                             f"{_describe(initial_state)}")
    return (K ** -0.5 if scale is None else float(scale)), seqlens


def check_triton_device(q: torch.Tensor) -> None:
    """The Triton op runs on CUDA tensors, or on CPU tensors under the Triton interpreter."""
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("q, k, v are CPU tensors: the Triton op needs CUDA tensors, or "
                         "TRITON_INTERPRET=1 set before triton is first imported")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"q, k, v must be CUDA tensors, got device {q.device}")


def _check_cu_seqlens(cu_seqlens, B: int, T: int) -> list[int]:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be an int32/int64 tensor [N + 1], got "
                         f"{_describe(cu_seqlens)}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T: batch size must be "
                         f"1, got {B}")
    seqlens = cu_seqlens.tolist()
    if seqlens[0] != 0 or seqlens[-1] != T or any(a > b for a, b in zip(seqlens, seqlens[1:])):
        shown = seqlens if len(seqlens) <= 10 else seqlens[:5] + ["..."] + seqlens[-4:]
        raise ValueError(f"cu_seqlens must rise from 0 to T = {T} without decreasing, got "
                         f"{shown}")
    return seqlens


def _describe(x) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
