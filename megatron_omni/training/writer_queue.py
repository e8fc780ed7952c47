"""Keeps megatron-core's checkpoint writer working through a preemption signal.

megatron-core (0.16.1, ``dist_checkpointing/strategies/filesystem_async.py``) collects each
rank's write results through a queue served by a helper process it spawns on the first save.
That process lives in the rank's process group, so the group-wide SIGTERM that torchrun
forwards on preemption (and that Slurm sends every process) kills it, and the stop-save that the
signal asked for then dies with ``BrokenPipeError``. :func:`shield_writer_queue` gives megatron
a queue whose server ignores the stop signals (and exits with the rank), replacing it if it died.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.managers import SyncManager

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""A scheduler's notice to save and stop (training/trainer.py finishes the step, then saves)."""

_manager: SyncManager | None = None


def _exit_with_parent(parent) -> None:
    parent.join()
    os._exit(0)


def _serve_through_stop_signals() -> None:
    """Runs in the queue's server process: ignore the stop signals, exit when the rank exits."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def shield_writer_queue() -> None:
    """Give megatron's checkpoint writer a results queue that survives the stop signals (a new
    one when the previous server died). Cheap when the queue is already in place."""
    global _manager
    # imported here: the server process imports this module, and needs none of megatron
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not hasattr(filesystem_async, "_results_queue"):
        log.warning("megatron-core has no filesystem_async._results_queue: a group-wide SIGTERM "
                    "may break the stop-save")
        return
    if _manager is not None and _manager._process.is_alive():
        return
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(initializer=_serve_through_stop_signals)
    _manager = manager
    filesystem_async._results_queue = manager.Queue()
