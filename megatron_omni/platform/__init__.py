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
    """Initialise torch.distributed from torchrun's environment (a single process without it)."""
    import datetime

    if torch.distributed.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    setup()
    torch.distributed.init_process_group(
        dist_backend(), timeout=datetime.timedelta(minutes=timeout_minutes))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
