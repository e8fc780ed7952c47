"""Checkpoints through megatron-core dist_checkpointing (torch_dist format).

Layout of a run folder::

    <dir>/iter_0000020/          one complete checkpoint (model, optimizer, scheduler, RNG, data position, config)
    <dir>/latest_checkpointed_iteration.txt   the newest complete one

A checkpoint is written under a temporary name, given a manifest of its files' sizes and
checksums (training/integrity.py), renamed when every rank has finished, and only then named in
the pointer file (itself replaced atomically): a process killed mid-save leaves a ``*.tmp``
folder that is never loaded (and is removed by the next save). A failed save (disk full,
permission denied, read-only folder) raises :class:`CheckpointError` naming the path on every
rank and leaves the previous checkpoint as it was. Resuming checks the pointer's checkpoint
against its manifest and falls back, with a warning, to the newest older one that verifies.
Tensors are stored by global position, so a checkpoint loads at another TP/PP/VPP; the
distributed optimizer uses the ``fully_reshardable`` format for the same reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state as ps, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from torch.distributed.checkpoint.api import CheckpointException

from megatron_omni import platform
from megatron_omni.config import ConfigError, OmniConfig, config_from_dict
from megatron_omni.config.schema import ModelConfig, SparseAttentionConfig
from megatron_omni.training import integrity
from megatron_omni.training.ckpt_errors import CheckpointError, describe, on_all_ranks
from megatron_omni.training.writer_queue import shield_writer_queue

log = logging.getLogger(__name__)

POINTER = "latest_checkpointed_iteration.txt"
_OPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


# The ModelConfig fields that decide parameter shapes (a checkpoint loads only into the same).
MODEL_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                      "num_query_groups", "head_dim", "tie_embeddings")

MODEL_FUNCTION_FIELDS = MODEL_SHAPE_FIELDS + ("max_position_embeddings", "rope_theta",
                                              "rope_scaling_factor", "rope_scaling", "norm_eps")
"""ModelConfig fields that change the function a model of given layer types computes: its shapes,
positions (RoPE base and scaling; rope_scaling matters only with a factor other than 1) and norms.
Initialisation, dropout and the backend do not count."""

SPARSE_FIELDS = tuple(f.name for f in dataclasses.fields(SparseAttentionConfig))
"""model.sparse fields compared when the model has S layers (each changes what they attend to)."""

LINEAR_FIELDS = ("num_query_groups", "slopes", "output_gate")
"""model.linear fields compared when the model has L layers (chunk_size only tiles the kernel)."""

OMNI_SHAPE_FIELDS = ("vision", "vision_overrides", "audio", "audio_overrides", "vision_projector",
                     "audio_projector", "image_tokens", "resampler_heads", "projector_hidden_size")
"""model.omni fields that decide the omni parameters' shapes (an omni checkpoint may also be
loaded into the text-only LLM, which reads only the LLM's tensors)."""

OMNI_FUNCTION_FIELDS = OMNI_SHAPE_FIELDS + ("frames_per_package", "tmrope", "mrope_sections")
"""model.omni fields compared when the config is the omni model (the contrastive loss settings and
max_video_frames do not change the function)."""


COMPARED = frozenset(
    [f"model.{f}" for f in MODEL_FUNCTION_FIELDS + ("layer_pattern",)]
    + [f"model.{part}.{f}" for part, names in (("sparse", SPARSE_FIELDS), ("linear", LINEAR_FIELDS),
                                               ("omni", OMNI_FUNCTION_FIELDS)) for f in names])
"""Every name model_differences can report (what checkpoint.load_changes may list)."""


def model_differences(saved: ModelConfig, model: ModelConfig) -> dict[str, str]:
    """{field name: "checkpoint X vs config Y"} for every field that changes the function computed
    (MODEL_FUNCTION_FIELDS, the spelled-out layer pattern, SPARSE_FIELDS / LINEAR_FIELDS of the
    layer types present, OMNI_FUNCTION_FIELDS when ``model`` is the omni model)."""
    pairs = [(f"model.{f}", getattr(saved, f), getattr(model, f)) for f in MODEL_FUNCTION_FIELDS
             if f != "rope_scaling" or saved.rope_scaling_factor != 1.0 or model.rope_scaling_factor != 1.0]
    if saved.num_layers == model.num_layers:
        pairs.append(("model.layer_pattern", saved.layer_types(), model.layer_types()))
    kinds = set(model.layer_types())
    pairs += [(f"model.sparse.{f}", getattr(saved.sparse, f), getattr(model.sparse, f))
              for f in SPARSE_FIELDS if "S" in kinds]
    pairs += [(f"model.linear.{f}", getattr(saved.linear, f), getattr(model.linear, f))
              for f in LINEAR_FIELDS if "L" in kinds]
    if model.omni is not None and saved.omni is not None:
        pairs += [(f"model.omni.{f}", getattr(saved.omni, f), getattr(model.omni, f))
                  for f in OMNI_FUNCTION_FIELDS]
    return {name: f"checkpoint {a} vs config {b}" for name, a, b in pairs if a != b}


def check_same_model(common: dict, cfg: OmniConfig, vocab_size: int, source,
                     allowed: list[str] | None = None) -> None:
    """A ConfigError naming every difference (model_differences, the vocabulary) between the
    checkpoint's model and the configured one. ``allowed``: the field names that may differ
    (checkpoint.load_changes when starting from ``source``); None where no change can be allowed
    (resuming, a distillation teacher)."""
    saved = config_from_dict(common["config"]).model
    if cfg.model.omni is not None and saved.omni is None:
        raise ConfigError(f"{source} holds a different model; model.omni: the checkpoint is the "
                          "text-only LLM, the config the omni model (make an omni checkpoint with "
                          "launch/convert_checkpoint.py from-hf-omni)")
    found = model_differences(saved, cfg.model)
    unknown = sorted(set(allowed or ()) - COMPARED)
    if unknown:
        raise ConfigError(f"checkpoint.load_changes={allowed}: {unknown} are not fields the load "
                          f"check compares; use names such as model.rope_scaling_factor")
    diff = [f"{name}: {text}" for name, text in found.items() if name not in (allowed or ())]
    if common["vocab_size"] != vocab_size:
        diff.append(f"vocabulary: checkpoint {common['vocab_size']} vs this run {vocab_size} "
                    "(model.vocab_size, else data.tokenizer's size)")
    if diff:
        hint = ("set these to the checkpoint's values" if allowed is None else
                "set these to the checkpoint's values, or list intended changes (e.g. a context "
                "extension) in checkpoint.load_changes")
        raise ConfigError(f"{source} holds a different model; " + "; ".join(diff) + f" ({hint})")


def check_resumable(common: dict, cfg: OmniConfig, vocab_size: int, source) -> None:
    """A clear error when resuming `source` as this run would not continue it: another model,
    or another phase / set of trained groups (the optimizer state would not fit)."""
    check_same_model(common, cfg, vocab_size, source)
    saved = common["config"]
    was = (saved.get("phase"), saved.get("training", {}).get("trainable"))
    now = (cfg.phase, cfg.training.trainable)
    if was != now:
        from megatron_omni.config.phases import trainable_groups

        def trains(phase, trainable) -> str:
            return str(trainable_groups(phase, trainable) or "all parameters")

        raise ConfigError(
            f"checkpoint.dir={cfg.checkpoint.dir} holds a phase {was[0]} run training "
            f"{trains(*was)} ({source}); this run is phase {now[0]} training {trains(*now)}. "
            f"To start it from those weights, give it a new checkpoint.dir and "
            f"checkpoint.load={source}")


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def resolve(path: str | Path) -> Path:
    """A run folder (→ its newest checkpoint that verifies) or one checkpoint folder, checked
    against its manifest (collective under a process group)."""
    path = Path(path)
    if (path / POINTER).is_file():
        return latest_checkpoint(path)
    if not dist_checkpointing.check_is_distributed_checkpoint(str(path)):
        raise FileNotFoundError(f"{path} is neither a run folder (with {POINTER}) nor a checkpoint folder")
    if not (path / integrity.MANIFEST).is_file():
        log.warning("%s has no %s (written before checkpoints carried checksums): not verified",
                    path, integrity.MANIFEST)
    elif bad := integrity.problems(path):
        raise CheckpointError(f"checkpoint {path} is damaged: " + "; ".join(bad))
    return path


def _candidates(root: Path, pointer: Path) -> list[Path]:
    """The pointer's checkpoint, then the older complete ones, newest first."""
    try:
        newest = int(pointer.read_text().strip())
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s): looking at every checkpoint under %s", pointer, err, root)
        newest = None
    older = sorted((int(p.name.removeprefix("iter_")) for p in root.glob("iter_*")
                    if p.is_dir() and p.name.removeprefix("iter_").isdigit()), reverse=True)
    its = ([newest] if newest is not None else []) + [i for i in older if newest is None or i < newest]
    return [iteration_dir(root, i) for i in its]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint under root that verifies: the pointer's, else (with a warning)
    the newest older one; None when root has no pointer file. CheckpointError listing what was
    tried when none verifies. Collective under a process group."""
    root = Path(root)
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    tried = []
    for path in _candidates(root, pointer):
        bad = integrity.problems(path)
        if not bad:
            if tried:
                log.warning("resuming from %s, the newest checkpoint that verifies; skipped: %s",
                            path, "; ".join(tried))
            return path
        tried.append(f"{path.name} ({'; '.join(bad)})")
    raise CheckpointError(f"no checkpoint under {root} verifies; tried: {'; '.join(tried) or 'none found'}")


def _layout() -> dict:
    return dict(tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
                vpp=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
                dp=ps.get_data_parallel_world_size(),
                # only when > 1, so checkpoints written before CP existed keep their layout
                **({"cp": cp} if (cp := ps.get_context_parallel_world_size()) > 1 else {}))


def _rng_state() -> ShardedObject:
    state = dict(random=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                 cuda=platform.device_rng_state(),
                 tracker=tensor_parallel.get_cuda_rng_tracker().get_states())
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp, tp),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         # CP ranks hold replicas too (as in megatron's own checkpointing)
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    platform.set_device_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _unwrap(chunk):
    """The module under megatron's DDP wrapper (checkpoints never name the wrapper)."""
    return chunk.module if isinstance(chunk, DistributedDataParallel) else chunk


def _paramless_state_dict(opt: DistributedOptimizer) -> dict:
    """megatron's ``DistributedOptimizer.state_dict`` for a rank whose optimizer holds no
    parameter (a pipeline stage with everything frozen, e.g. phase 1 or 2 at PP > 1). Without
    TE/apex megatron reads the step from the (empty) parameter state and asserts it has one value
    (and its load wants a number there): such a rank has taken no step, so it stores step 0."""
    inner = opt.optimizer.state_dict()
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "step": 0}
              for g in inner["param_groups"]]
    state = {"optimizer": {"param_groups": groups}}
    if opt.grad_scaler:
        state["grad_scaler"] = opt.grad_scaler.state_dict()
    return state


def allow_paramless_ranks(optimizer) -> None:
    """Make the distributed optimizers of this rank that hold no parameter saveable (see
    ``_paramless_state_dict``); call once after building the optimizer."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if (isinstance(opt, DistributedOptimizer) and inner is not None
                and not any(g["params"] for g in inner.param_groups)):
            opt.state_dict = lambda opt=opt: _paramless_state_dict(opt)


def _sharded_state(model, optimizer=None, loading: bool = False) -> dict:
    state = {f"model{i}": _unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model)}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            dict(state), is_loading=loading, metadata=_OPT_METADATA)
    return state


def _nothing(*args) -> None:
    """What ranks other than 0 do in a rank-0 step."""


def _prepare(root: Path, tmp: Path) -> None:
    for stale in root.glob("iter_*.tmp"):
        shutil.rmtree(stale)
    tmp.mkdir(parents=True)


def _publish(root: Path, final: Path, tmp: Path, iteration: int, keep_last: int) -> None:
    """Rename the verified folder into place, then point at it (a re-save of the same step, e.g.
    after a resume, replaces the old folder only now)."""
    old = final.with_name(final.name + ".old.tmp")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    pointer_tmp = root / (POINTER + ".tmp")
    pointer_tmp.write_text(f"{iteration}\n")
    os.replace(pointer_tmp, root / POINTER)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep_last, keep=final)


def _write(state: dict, tmp: Path) -> None:
    shield_writer_queue()
    dist_checkpointing.save(state, str(tmp), content_metadata=_OPT_METADATA)
    integrity.write_manifest(tmp)


def save_checkpoint(root: str | Path, iteration: int, model, consumed_samples: int, config_dict: dict,
                    vocab_size: int, optimizer=None, scheduler=None, keep_last: int = 0) -> Path:
    """Save a checkpoint of iteration (collective over all ranks): model chunks, and with an
    optimizer also its state, the scheduler and the RNG streams (weights-only without).
    CheckpointError on every rank when any rank cannot write; earlier checkpoints stay as
    they were."""
    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    rank0 = torch.distributed.get_rank() == 0
    previous = root / POINTER
    after = (f"; the previous checkpoint (step {previous.read_text().strip()}) is intact"
             if previous.is_file() else "")
    on_all_ranks(f"cannot save step {iteration}: making {tmp}", _prepare if rank0 else _nothing,
                 root, tmp, after=after)
    state = _sharded_state(model, optimizer)
    dtype = str(next(_unwrap(model[0]).parameters()).dtype).removeprefix("torch.")
    state.update(iteration=iteration, consumed_samples=consumed_samples, config=config_dict,
                 layout=_layout(), vocab_size=vocab_size, dtype=dtype)
    if optimizer is not None:
        state.update(rng_state=_rng_state(), scheduler=scheduler.state_dict())
    try:
        on_all_ranks(f"cannot save step {iteration} to {root}", _write, state, tmp, after=after)
        on_all_ranks(f"cannot save step {iteration}: publishing {tmp} as {final}",
                     _publish if rank0 else _nothing, root, final, tmp, iteration, keep_last,
                     after=after)
    except CheckpointError:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _materialise_adam_state(optimizer) -> None:
    """torch's Adam creates its state at the first step, but megatron's distributed optimizer
    can only describe (and so load into) a state that exists: give a fresh torch Adam the state
    its first step would start from (step 0, zero moments). Fused TE/Apex optimizers keep the
    step elsewhere and are left alone."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                          exp_avg_sq=torch.zeros_like(p))


def _load_optimizer_state(optimizer, state) -> None:
    """optimizer.load_state_dict(state), working around two megatron-core 0.16.1 problems with
    torch's Adam (no Apex/TE) under the DistributedOptimizer: load_state_dict gives every
    parameter state a 'step' that the fully-reshardable parameter-state loader then looks for in
    the checkpoint's per-parameter tensors (KeyError), and that 'step' is ONE tensor shared by all
    parameters, which Adam's in-place increment then advances once per parameter per step. The
    steps are set aside while the tensors load and come back as one tensor per parameter. Each
    group keeps the run's learning rates (``_run_peak_lrs``)."""
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [state] if len(subs) == 1 else [v for _, v in sorted(state.items())] if isinstance(state, dict) else list(state)
    for opt, sub_state in zip(subs, states):
        _load_one(opt, getattr(opt, "optimizer", None), sub_state)
    if len(subs) > 1:
        optimizer._synchronize_steps()


@contextlib.contextmanager
def _run_peak_lrs(optimizer):
    """Keep each parameter group's peak and final learning rate (``max_lr``/``min_lr``: the
    run's training.lr / training.group_lr) across a load: megatron-core 0.16.1 matches saved
    groups to the run's by (wd_mult, lr_mult, is_expert_parallel, is_decoupled_lr) only (in
    load_state_dict, which its sharded_state_dict also calls when loading), so groups that differ
    in their learning rate alone (training.group_lr) would take each other's."""
    inners = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])
              if getattr(o, "optimizer", None) is not None]
    kept = [[{k: g[k] for k in ("max_lr", "min_lr") if k in g} for g in inner.param_groups]
            for inner in inners]
    yield
    for inner, groups in zip(inners, kept):  # load_state_dict made new group dicts
        for group, lrs in zip(inner.param_groups, groups):
            group.update(lrs)


def _load_one(opt, inner, sub_state) -> None:
    if not (isinstance(opt, DistributedOptimizer) and isinstance(inner, torch.optim.Adam)
            and sub_state.get("param_state_sharding_type") == "fully_reshardable"
            and "param_state" in sub_state):  # absent on a rank without parameters
        opt.load_state_dict(sub_state)
        return
    param_state = sub_state.pop("param_state")
    opt.load_state_dict(sub_state)
    steps = {p: st.pop("step") for p, st in inner.state.items() if "step" in st}
    opt.load_parameter_state_from_fully_reshardable(param_state)
    for p, step in steps.items():
        inner.state[p]["step"] = step.clone()


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> dict:
    """Load a checkpoint into model chunks (any TP/PP/VPP layout); also optimizer, scheduler and
    RNG when given. Returns the common part (iteration, consumed_samples, config, layout)."""
    common = read_common(path)
    if optimizer is None:
        _load(path, common, model)
        return common
    with _run_peak_lrs(optimizer):
        _load(path, common, model, optimizer)
    scheduler.load_state_dict(common["scheduler"])  # sets each group's lr from its max_lr
    return common


def _load(path: Path, common: dict, model, optimizer=None) -> None:
    if optimizer is not None:
        _materialise_adam_state(optimizer)
    state = _sharded_state(model, optimizer, loading=True)
    same_layout = common.get("layout") == _layout()
    if optimizer is not None and same_layout:
        state["rng_state"] = _rng_state()
    try:
        loaded = dist_checkpointing.load(state, str(path))
    except CheckpointException as exc:
        raise CheckpointError(f"cannot load {path}: {describe(exc)}") from None
    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded[f"model{i}"], strict=True)
    if optimizer is not None:
        _load_optimizer_state(optimizer, loaded["optimizer"])
        if same_layout:
            _set_rng_state(loaded["rng_state"])
        else:
            log.warning("checkpoint layout %s differs from this run's %s: RNG streams restart "
                        "from the seed (model, optimizer, scheduler and data position are restored)",
                        common.get("layout"), _layout())
