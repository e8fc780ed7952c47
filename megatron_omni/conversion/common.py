"""Helpers shared by the importers (qwen3.py, siglip.py, whisper.py).

ConversionError; reading Hugging Face folders (config.json + safetensors, single file or sharded);
for the encoders, finding the tower's key prefix in a state dict, checking keys and shapes, and
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

import json
from pathlib import Path
from typing import Callable, TypeVar

import torch
from megatron.core import parallel_state
from megatron.core.transformer.mlp import MLP
from safetensors.torch import load_file

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

StateDict = dict[str, torch.Tensor]
Cfg = TypeVar("Cfg")  # an encoder config (VisionEncoderConfig, AudioEncoderConfig)


class ConversionError(ValueError):
    """A state dict, config or folder that does not fit the expected layout; the message names the
    key or field and what was expected."""


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


def load_encoder_folder(path: str | Path, config_from_hf: Callable[[dict], Cfg]) -> tuple[StateDict, Cfg]:
    """``(HF state dict, our config)`` of an encoder's HF folder (config.json + safetensors);
    ``config_from_hf`` turns the config.json dict into our encoder config."""
    raw = read_hf_config(path)
    return read_hf_weights(path), config_from_hf(raw)


def import_encoder(model: torch.nn.Module, source: str | Path | StateDict,
                   config_from_hf: Callable[[dict], Cfg],
                   hf_to_megatron: Callable[[StateDict, Cfg], StateDict]) -> None:
    """Load HF encoder weights (a folder or a state dict) into ``model`` at any TP; a folder's
    config (through ``config_from_hf``) must equal ``model.cfg``. ``hf_to_megatron`` maps the HF
    state dict to the model's full (TP=1) one."""
    if isinstance(source, dict):
        state = source
    else:
        state, cfg = load_encoder_folder(source, config_from_hf)
        if cfg != model.cfg:
            raise ConversionError(f"{source}: its config {cfg} differs from the model's {model.cfg}")
    load_full_state_dict(model, hf_to_megatron(state, model.cfg))


def find_prefix(state: dict[str, torch.Tensor], anchor: str, what: str, exclude: str | None = None) -> str:
    """The prefix in front of ``anchor`` (a key suffix unique to the tower, e.g.
    ``embeddings.patch_embedding.weight``): "" for a bare tower, "vision_model." for a full SigLIP,
    "model.encoder." for WhisperForConditionalGeneration... Keys containing ``exclude`` are skipped."""
    found = sorted(k[: -len(anchor)] for k in state
                   if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")
                   and not (exclude and exclude in k))
    if len(found) != 1:
        raise ConversionError(f"expected exactly one {what} in the state dict (a key ending in {anchor!r}); "
                              f"found {len(found)}: {found[:4]}")
    return found[0]


def tower_state(state: dict[str, torch.Tensor], anchor: str, what: str,
                exclude: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """``(prefix, the tower's tensors with the prefix removed)``; prefix as ``find_prefix``."""
    prefix = find_prefix(state, anchor, what, exclude)
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise ConversionError listing every missing key, unexpected key and wrong shape."""
    problems = [f"missing key {k} (expected shape {s})" for k, s in expected.items() if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    problems += [f"{k}: expected shape {s}, got {tuple(state[k].shape)}"
                 for k, s in expected.items() if k in state and tuple(state[k].shape) != tuple(s)]
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ConversionError(f"{what} does not match the encoder config:\n  " + "\n  ".join(shown))


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Megatron's fused QKV (no GQA): per head [q_h; k_h; v_h] along dim 0. Works for weights
    ``[heads*hn, in]`` and biases ``[heads*hn]``."""
    rest = q.shape[1:]
    parts = [t.reshape(num_heads, -1, *rest) for t in (q, k, v)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


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
