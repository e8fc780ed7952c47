"""model.backend: which layer implementations the decoder's dense layers use, transformer-engine
('te', fused norm+linear and TE attention, GPU only) or megatron's local modules ('local')."""
from __future__ import annotations

import functools
import logging

from megatron_omni.platform import has_cuda

log = logging.getLogger(__name__)


@functools.cache
def te_import_error() -> str | None:
    """None when transformer-engine and megatron's TE extension import, else the ImportError's
    message (TE is not installed). Any other exception while importing TE (a broken install, a
    version mismatch) propagates: it is a problem to fix, not a reason to fall back silently."""
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


def resolve_backend(backend: str) -> str:
    """'te' or 'local' for model.backend: 'auto' → 'te' on a CUDA machine where
    transformer-engine imports, else 'local' (logged, with the reason)."""
    if backend == "te" and te_import_error() is not None:
        raise RuntimeError(f"model.backend='te' but transformer-engine does not import here "
                           f"({te_import_error()}); install transformer-engine (GPU only) or set "
                           "model.backend=local")
    if backend != "auto":
        return backend
    return _auto_backend()


@functools.cache
def _auto_backend() -> str:
    """The choice of model.backend=auto, made (and logged) once per process."""
    if not has_cuda():
        choice, why = "local", "no CUDA device, and transformer-engine needs one"
    elif (error := te_import_error()) is not None:
        choice, why = "local", f"transformer-engine is not installed ({error})"
    else:
        choice, why = "te", "transformer-engine imports on this CUDA machine"
    log.info("model.backend=auto: using the %s layers (%s)", choice, why)
    return choice


def resolve_kernels(kernels: str) -> str:
    """'triton' or 'torch' for model.kernels, the implementation of the sparse (S) and linear (L)
    layers' attention ops: 'auto' → 'triton' on a CUDA machine, else 'torch' (the chunked
    PyTorch ops; the Triton interpreter is ~600x slower: docs/kernels.md). 'triton' without
    CUDA runs the interpreter (platform.prepare_process sets TRITON_INTERPRET=1). Logged once
    per process."""
    if kernels not in ("auto", "triton", "torch"):
        raise ValueError(f"model.kernels={kernels!r}; use auto, triton or torch")
    return _log_kernels(kernels)


@functools.cache
def _log_kernels(kernels: str) -> str:
    if kernels == "auto":
        choice = "triton" if has_cuda() else "torch"
        why = ("CUDA is available" if has_cuda() else
               "no CUDA device: the chunked PyTorch ops, not the Triton interpreter")
    else:
        choice = kernels
        why = "as set" if kernels == "torch" or has_cuda() else \
            "as set, without CUDA: the Triton interpreter (slow; meant for kernel tests)"
    log.info("model.kernels=%s: the S/L attention runs the %s ops (%s)", kernels, choice, why)
    return choice
