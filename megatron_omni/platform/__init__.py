"""Device and backend decisions: the one place that asks whether there is CUDA. The CPU
compatibility layer (cpu_compat), the transformer-engine choice (backend) and the filter of known
library warnings (console) live beside it."""
from __future__ import annotations

import os
import resource

import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def use_triton_interpreter_without_cuda() -> None:
    """Run Triton kernels in the interpreter when there is no GPU. Must run before triton is
    first imported (megatron-core and our kernels import it): entry points call it first."""
    if not has_cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def prepare_process() -> None:
    """The first call of every entry point, before megatron-core or triton is imported: Triton in
    the interpreter without CUDA, and the known library warnings filtered (platform/console.py)."""
    from megatron_omni.platform.console import quiet_known_warnings

    use_triton_interpreter_without_cuda()
    quiet_known_warnings()


def device() -> torch.device:
    """The device this rank computes on: its local GPU, or the CPU."""
    if has_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_device(module: torch.nn.Module) -> torch.nn.Module:
    """Move a freshly built module onto this rank's GPU; on CPU it stays where it was built."""
    return module.cuda(torch.cuda.current_device()) if has_cuda() else module


def default_precision() -> str:
    """What training.precision=auto means here: bf16 on a GPU, fp32 on CPU."""
    return "bf16" if has_cuda() else "fp32"


def cpu_initialization() -> bool:
    """megatron's use_cpu_initialization: initialise weights on the CPU when there is no GPU."""
    return not has_cuda()


def fused_bias_ops() -> bool:
    """Whether megatron's fused bias-activation and bias-dropout kernels can run (GPU only)."""
    return has_cuda()


def gpu_name() -> str | None:
    return torch.cuda.get_device_name() if has_cuda() else None


def synchronize() -> None:
    """Wait for queued GPU work (timing); nothing to wait for on CPU."""
    if has_cuda():
        torch.cuda.synchronize()


def reset_peak_memory() -> float:
    """Start a peak-memory measurement; returns the baseline in GiB, of the kind peak_memory_gib
    measures (GPU: memory allocated now; CPU: the process's maximum resident set so far)."""
    if has_cuda():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    return peak_memory_gib()[0]


def peak_memory_gib() -> tuple[float, str]:
    """(peak memory of this process in GiB, what was measured)."""
    if has_cuda():
        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def device_rng_state() -> torch.Tensor | None:
    """The GPU's default generator state (checkpoints), None without CUDA."""
    return torch.cuda.get_rng_state() if has_cuda() else None


def set_device_rng_state(state: torch.Tensor | None) -> None:
    """Restore a state from device_rng_state (nothing to restore on CPU or when saved on CPU)."""
    if state is not None and has_cuda():
        torch.cuda.set_rng_state(state)


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
