"""Checkpoints through megatron-core dist_checkpointing (torch_dist format).

Layout of a run folder::

    <dir>/iter_0000020/          one complete checkpoint (model, optimizer, scheduler, RNG, data position, config)
    <dir>/latest_checkpointed_iteration.txt   the newest complete one

A checkpoint is written under a temporary name, renamed when every rank has finished, and only
then named in the pointer file (itself replaced atomically): a process killed mid-save leaves a
``*.tmp`` folder that is never loaded (and is removed by the next save). Tensors are stored by
global position, so a checkpoint loads at another TP/PP/VPP; the distributed optimizer uses the
``fully_reshardable`` format for the same reason.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state as ps, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

log = logging.getLogger(__name__)

POINTER = "latest_checkpointed_iteration.txt"
_OPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root (per the pointer file), or None."""
    pointer = Path(root) / POINTER
    if not pointer.is_file():
        return None
    path = iteration_dir(root, int(pointer.read_text().strip()))
    if not dist_checkpointing.check_is_distributed_checkpoint(str(path)):
        raise RuntimeError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def _layout() -> dict:
    return dict(tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
                vpp=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
                dp=ps.get_data_parallel_world_size())


def _rng_state() -> ShardedObject:
    state = dict(random=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                 cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                 tracker=tensor_parallel.get_cuda_rng_tracker().get_states())
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp, tp),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank())


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(model, optimizer=None, loading: bool = False) -> dict:
    state = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            dict(state), is_loading=loading, metadata=_OPT_METADATA)
    return state


def save_checkpoint(root: str | Path, iteration: int, model, optimizer, scheduler,
                    consumed_samples: int, config_dict: dict, keep_last: int = 0) -> Path:
    """Save a complete checkpoint of iteration; collective over all ranks."""
    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = torch.distributed.get_rank() == 0
    if rank0:
        for stale in root.glob("iter_*.tmp"):
            shutil.rmtree(stale)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    state = _sharded_state(model, optimizer)
    state.update(rng_state=_rng_state(), scheduler=scheduler.state_dict(), iteration=iteration,
                 consumed_samples=consumed_samples, config=config_dict, layout=_layout())
    dist_checkpointing.save(state, str(tmp), content_metadata=_OPT_METADATA)
    torch.distributed.barrier()
    if rank0:
        os.replace(tmp, final)
        pointer_tmp = root / (POINTER + ".tmp")
        pointer_tmp.write_text(f"{iteration}\n")
        os.replace(pointer_tmp, root / POINTER)
        _prune(root, keep_last, keep=final)
    torch.distributed.barrier()
    return final


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    if keep_last <= 0:
        return
    done = sorted(p for p in root.glob("iter_*") if not p.name.endswith(".tmp"))
    for old in done[:-keep_last]:
        if old != keep:
            shutil.rmtree(old)


def read_common(path: str | Path) -> dict:
    """The non-sharded part of a checkpoint (iteration, config, layout, ...), on any process."""
    return dist_checkpointing.load_common_state_dict(str(path))


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> dict:
    """Load a checkpoint into model chunks (any TP/PP/VPP layout); also optimizer, scheduler and
    RNG when given. Returns the common part (iteration, consumed_samples, config, layout)."""
    common = read_common(path)
    state = _sharded_state(model, optimizer, loading=True)
    same_layout = common.get("layout") == _layout()
    if optimizer is not None and same_layout:
        state["rng_state"] = _rng_state()
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model):
        chunk.module.load_state_dict(loaded[f"model{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(common["scheduler"])
        if same_layout:
            _set_rng_state(loaded["rng_state"])
        else:
            log.warning("checkpoint layout %s differs from this run's %s: RNG streams restart "
                        "from the seed (model, optimizer, scheduler and data position are restored)",
                        common.get("layout"), _layout())
    return common
