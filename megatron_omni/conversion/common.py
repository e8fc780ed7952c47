"""Helpers shared by the converters (qwen3.py, encoder_import.py, omni.py, checkpoints.py).

ConversionError; ``staged_folder`` (an output folder published only when complete); reading Hugging Face folders (config.json + safetensors, single file or sharded);
loading a full (TP=1) state dict into a tensor-parallel megatron-core module.

TP loading: each rank keeps its slice of every tensor-parallel parameter: megatron marks those with
``tensor_model_parallel=True`` and ``partition_dim`` (0 for ColumnParallelLinear weight and bias,
1 for RowParallelLinear weight; RowParallelLinear's bias is replicated). The full tensor is cut into
TP-size contiguous chunks along ``partition_dim`` and rank r takes chunk r — megatron's own layout
for a fused QKV (per query group [q heads; k; v], so each rank gets whole groups) and for a plain
MLP fc1. A gated fc1 ([gate; up] concatenated) is NOT laid out that way under TP and is refused.
Everything else (norms, embeddings, convolutions, buffers) is copied whole.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.transformer.mlp import MLP
from safetensors.torch import load_file

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

StateDict = dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A state dict, config or folder that does not fit the expected layout; the message names the
    key or field and what was expected."""


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out`` to write into; when the block finishes without an
    exception (write *and* verify inside it), publish it as ``out``; otherwise delete it, so a
    failed conversion leaves nothing behind. Refuses an ``out`` that already exists (never merges
    into or overwrites an earlier output)."""
    final = Path(out)
    if final.exists():
        raise ConversionError(f"{final}: already exists; give a new output folder or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)


def read_hf_config(path: str | Path) -> dict:
    """``config.json`` of an HF folder, as a dict. Raises ConversionError when ``path`` is not a
    folder or has no config.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{folder}: no config.json; not a Hugging Face model folder")
    return json.loads(config_file.read_text())


def read_hf_weights(path: str | Path, check_index_complete: bool = False) -> StateDict:
    """The tensors of an HF folder with ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``; they keep their stored dtype, on the CPU. Raises
    ConversionError naming what is missing (weight files, shards; with ``check_index_complete``,
    tensors the index lists but their shard lacks)."""
    folder = Path(path)
    index_file = folder / SAFETENSORS_INDEX
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map")
        if not weight_map:
            raise ConversionError(f"{index_file}: no weight_map")
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            raise ConversionError(f"{folder}: shards named in {SAFETENSORS_INDEX} are missing: {absent}")
        state = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        unlisted = sorted(set(weight_map) - set(state)) if check_index_complete else []
        if unlisted:
            raise ConversionError(f"{folder}: tensors listed in {SAFETENSORS_INDEX} are not in their "
                                  f"shards: {unlisted[:8]}")
        return state
    if (folder / SAFETENSORS).is_file():
        return load_file(folder / SAFETENSORS)
    present = sorted(p.name for p in folder.iterdir())
    raise ConversionError(f"{folder}: neither {SAFETENSORS} nor {SAFETENSORS_INDEX} (only "
                          f"safetensors weights are read); the folder has {present}")


def shard_full_state_dict(module: torch.nn.Module, full_state: dict[str, torch.Tensor],
                          tp_rank: int | None = None, tp_size: int | None = None) -> dict[str, torch.Tensor]:
    """This rank's slice of ``full_state`` for ``module`` (keys as in ``module.state_dict()``).

    ``tp_rank`` / ``tp_size`` default to megatron's TP group. Raises ConversionError naming the key when
    a full tensor does not fit the module's parameter after slicing.
    """
    if tp_rank is None:
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
    if tp_size is None:
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
    params = dict(module.named_parameters())
    gated = [f"{name}.linear_fc1.weight" for name, m in module.named_modules()
             if isinstance(m, MLP) and m.config.gated_linear_unit]
    if tp_size > 1 and gated:
        raise ConversionError(f"{gated[0]}: a gated fc1 ([gate; up] per rank) is not sliced here; "
                              "use megatron's dist_checkpointing for this module")
    out = {}
    for key, full in full_state.items():
        param = params.get(key)
        if param is None or not getattr(param, "tensor_model_parallel", False):
            out[key] = full
            continue
        dim = param.partition_dim
        if getattr(param, "partition_stride", 1) != 1:
            raise ConversionError(f"{key}: partition_stride={param.partition_stride} is not supported")
        if full.shape[dim] != param.shape[dim] * tp_size:
            raise ConversionError(f"{key}: full tensor has {full.shape[dim]} entries along dim {dim}; expected "
                                  f"{param.shape[dim]} per rank × TP {tp_size} = {param.shape[dim] * tp_size}")
        out[key] = full.chunk(tp_size, dim=dim)[tp_rank]
    return out


def load_full_state_dict(module: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> None:
    """Load a full (TP=1) state dict into ``module`` on this TP rank. Every parameter and
    persistent buffer must be present (only megatron's ``_extra_state`` entries may be absent);
    an unexpected key raises ConversionError."""
    result = module.load_state_dict(shard_full_state_dict(module, full_state), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"state dict does not fit {type(module).__name__}: missing {missing}, "
                              f"unexpected {result.unexpected_keys}")
