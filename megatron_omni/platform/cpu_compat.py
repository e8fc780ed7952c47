"""Run megatron-core on a machine without CUDA: the one place that knows about it.

megatron-core assumes CUDA in a handful of places (research/megatron.md, "Running megatron-core
on CPU"): literal ``device="cuda"`` / ``torch.cuda.current_device()`` in factory calls (also
inside custom autograd backward functions, which run outside the caller's torch-function modes),
``Tensor.cuda()``, CUDA RNG-state functions in its RNG tracker, ``Tensor.type()`` strings
checked against ``torch.cuda.*Tensor`` by the optimizer and gradient clipping, and the
``is_cuda`` assertion of the inference package's pipeline broadcast. ``enable()``
redirects exactly those to the CPU. On a CUDA machine it is never called.

RNG: on CPU the "device generator" is the CPU default generator, so megatron's tracker forks
and restores that generator's state; its streams stay separate and reproducible, as on GPU.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CudaToCpu(TorchFunctionMode):
    """Maps every CUDA device argument (``"cuda"``, ``"cuda:N"``, a CUDA torch.device, or a bare
    device index) of a torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if kwargs.get("pin_memory"):  # no pinned allocator without CUDA (megatron's CP RoPE slice)
            kwargs = {**kwargs, "pin_memory": False}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args:
            args = tuple("cpu" if i > 0 and _is_cuda_device(a) and not isinstance(a, torch.dtype)
                         else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _cuda_type_string(self: torch.Tensor, dtype=None, non_blocking=False, **kwargs):
    if dtype is None and not kwargs:
        name = _ORIG_TYPE(self)  # may already pass through this function under _CudaToCpu
        return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
    return _ORIG_TYPE(self, dtype, non_blocking, **kwargs)


_ORIG_TYPE = torch.Tensor.type


_ORIG_BACKWARD_APPLY = torch.autograd.function.BackwardCFunction.apply


def _backward_apply(self, *args):
    """The autograd engine runs custom Functions' backward without the caller's torch-function
    modes; megatron allocates on the current device there (sequence-parallel gathers and
    reduce-scatters), so the redirection is entered again around each backward."""
    with _CudaToCpu():
        return _ORIG_BACKWARD_APPLY(self, *args)


def _get_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


class _Event:
    """Stands in for torch.cuda.Event: records wall time so timers still work."""

    def __init__(self, enable_timing=False, **_):
        self._t = None

    def record(self, stream=None):
        import time

        self._t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end: "_Event") -> float:
        return (end._t - self._t) * 1e3


def _check_present(tensor) -> None:
    """megatron.core.inference.communication_utils._is_cuda without its CUDA requirement."""
    assert tensor is not None


def enable() -> None:
    """Install the CPU redirections (idempotent). Call before building any megatron module."""
    global _ENABLED
    if _ENABLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat.enable() called on a CUDA machine; it is for CPU-only runs")
    from megatron.core.inference import communication_utils
    from megatron.core.tensor_parallel import random as mrandom

    _CudaToCpu().__enter__()  # stays active for the life of the process
    torch.autograd.function.BackwardCFunction.apply = _backward_apply
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.type = _cuda_type_string
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.Event = _Event
    torch.cuda.current_stream = lambda device=None: None
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    mrandom._get_cuda_rng_state = _get_rng_state
    mrandom._set_cuda_rng_state = _set_rng_state
    communication_utils._is_cuda = _check_present   # broadcast_from_last_pipeline_stage (rollouts)
    # The tracker's fork() warns whenever the CPU generator moves inside a fork: on CPU that
    # generator *is* the device generator, so the warning is expected and carries no signal.
    logging.getLogger(mrandom.__name__).addFilter(
        lambda r: "CPU RNG state changed" not in r.getMessage())
    _ENABLED = True
