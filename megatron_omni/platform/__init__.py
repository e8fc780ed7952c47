"""Device and backend selection. The CPU compatibility layer (cpu_compat) is used only here."""
from __future__ import annotations

import os

import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def use_triton_interpreter_without_cuda() -> None:
    """Run Triton kernels in the interpreter when there is no GPU. Must run before triton is
    first imported (megatron-core and our kernels import it): entry points call it first."""
    if not has_cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def device() -> torch.device:
    """The device this rank computes on: its local GPU, or the CPU."""
    if has_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup(local_rank: int | None = None) -> torch.device:
    """Prepare this process for megatron-core: pick the GPU of `local_rank`, or enable the CPU
    compatibility layer when there is no CUDA. Returns the compute device."""
    if has_cuda():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank)
    else:
        from megatron_omni.platform import cpu_compat

        cpu_compat.enable()
    return device()


def dist_backend() -> str:
    return "nccl" if has_cuda() else "gloo"


def init_distributed(timeout_minutes: int = 10) -> None:
    """Initialise torch.distributed from torchrun's environment, or as a single process (rank 0
    of 1 on a free local port) without it. The single-process path leaves os.environ alone, so
    child processes never inherit a rank or a port that this process holds."""
    import datetime

    if torch.distributed.is_initialized():
        return
    setup()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ:
        torch.distributed.init_process_group(dist_backend(), timeout=timeout)
    else:
        torch.distributed.init_process_group(
            dist_backend(), init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
            timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
