"""Checkpoint failures in plain words, on every rank at once.

torch's checkpointing reports a failed write as ``CheckpointException ranks:dict_keys([0, 1])``
with the real cause (disk full, permission denied, ...) buried in per-rank tracebacks, and a
failure in a rank-0-only step (making the folder, renaming it) would leave the other ranks
waiting in the next collective. :func:`on_all_ranks` runs a step, gathers what failed where,
and raises the same :class:`CheckpointError`, naming the path and the cause, on every rank.
"""
from __future__ import annotations

import errno
import re

import torch
from torch.distributed.checkpoint.api import CheckpointException

_KINDS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied",
          errno.EROFS: "read-only file system"}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:\n]+?)(?:: '([^'\n]+)')?(?:\n|$)")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path and the cause."""


def _causes(exc: BaseException):
    """exc, what it wraps (per-rank failures of a CheckpointException) and its causes."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, CheckpointException):
            todo += [pair[0] for pair in e.failures.values()]
        todo += [e.__cause__, e.__context__]


def _os_error(code: int, strerror: str, filename) -> str:
    kind = _KINDS.get(code, strerror)
    where = f" at {filename}" if filename else ""
    return f"{kind}{where}" + (f" ({strerror})" if kind != strerror else "")


def describe(exc: BaseException) -> str:
    """One line: the file-system cause (kind, path) when there is one, else the innermost error."""
    causes = list(_causes(exc))
    for e in causes:
        if isinstance(e, OSError) and e.errno is not None:
            return _os_error(e.errno, e.strerror or str(e), e.filename)
    for e in causes:  # an OSError that crossed a process boundary as text
        if match := _ERRNO_TEXT.search(str(e)):
            return _os_error(int(match.group(1)), match.group(2), match.group(3))
    inner = causes[-1] if not isinstance(causes[-1], CheckpointException) else exc
    return f"{type(inner).__name__}: {str(inner).strip().splitlines()[-1] if str(inner).strip() else ''}"


def on_all_ranks(what: str, fn, *args, after: str = ""):
    """fn(*args) on this rank; if it fails on any rank, CheckpointError("<what>: <causes><after>")
    on every rank (a collective, so call it on all ranks)."""
    error, result = None, None
    try:
        result = fn(*args)
    except (Exception, CheckpointException) as exc:  # CheckpointException is a BaseException
        error = describe(exc)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        errors = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(errors, error)
    else:
        errors = [error]
    failed = sorted({e for e in errors if e})
    if failed:
        raise CheckpointError(f"{what}: {'; '.join(failed)}{after}")
    return result
