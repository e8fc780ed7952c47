"""One Hugging Face → megatron importer for the encoder towers, driven by a per-encoder table
(EncoderMapping: conversion/siglip.py, conversion/whisper.py).

Both towers are pre-LN transformers whose layers hold the same tensors under different names:
two LayerNorms, separate q/k/v projections (fused here into megatron's per-head [q_h; k_h; v_h],
see fuse_qkv), an output projection and a two-linear MLP. A table names the tower-level tensors
and the per-layer ones; the engine finds the tower's prefix in the state dict, checks every key
and shape, renames, fuses and (``import_into``) loads the full state at any TP
(common.load_full_state_dict).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

import torch

from megatron_omni.conversion.common import (ConversionError, StateDict, load_full_state_dict,
                                             read_hf_config, read_hf_weights)

Cfg = TypeVar("Cfg")  # an encoder config (VisionEncoderConfig, AudioEncoderConfig)

LAYER_SHAPES = {  # our per-layer tensors → shape in (h = hidden_size, f = ffn_hidden_size)
    "input_layernorm.weight": "h", "input_layernorm.bias": "h",
    "self_attention.linear_proj.weight": "hh", "self_attention.linear_proj.bias": "h",
    "pre_mlp_layernorm.weight": "h", "pre_mlp_layernorm.bias": "h",
    "mlp.linear_fc1.weight": "fh", "mlp.linear_fc1.bias": "f",
    "mlp.linear_fc2.weight": "hf", "mlp.linear_fc2.bias": "h",
}


@dataclass(frozen=True)
class EncoderMapping(Generic[Cfg]):
    """How one HF encoder's state dict maps onto ours (full TP=1 names on both sides)."""

    what: str                          # the tower, in error messages
    anchor: str                        # a key suffix unique to the tower (finds its prefix)
    exclude: str                       # keys containing this belong to another tower
    config_from_hf: Callable[[dict], Cfg]
    tower: Callable[[Cfg], dict[str, tuple[str, tuple[int, ...]]]]  # ours → (HF, shape), outside layers
    layer_prefix: str                  # HF prefix of layer i, with {i}
    layer: dict[str, str]              # ours → HF inside a layer (LAYER_SHAPES' keys)
    qkv: str                           # HF name of the q/k/v projections inside a layer, with {}
    k_bias: bool = True                # False: HF's k projection has no bias (zero here)
    dropped: str | None = None         # HF keys (after the prefix) starting with this are ignored

    def _hf_shapes(self, cfg) -> dict[str, tuple[int, ...]]:
        dims = {"h": cfg.hidden_size, "f": cfg.ffn_hidden_size}
        shapes = dict(self.tower(cfg).values())
        for i in range(cfg.num_layers):
            pre = self.layer_prefix.format(i=i)
            shapes.update({pre + hf: tuple(dims[d] for d in LAYER_SHAPES[ours])
                           for ours, hf in self.layer.items()})
            for part in "qkv":
                shapes[pre + self.qkv.format(part) + ".weight"] = (dims["h"], dims["h"])
                if part != "k" or self.k_bias:
                    shapes[pre + self.qkv.format(part) + ".bias"] = (dims["h"],)
        return shapes

    def hf_to_megatron(self, hf_state: StateDict, cfg) -> StateDict:
        """HF state dict (the tower alone or inside a larger model) → our encoder's full (TP=1)
        state dict. Raises ConversionError listing missing / unexpected keys and wrong shapes."""
        prefix, state = tower_state(hf_state, self.anchor, self.what, self.exclude)
        if self.dropped:
            state = {k: v for k, v in state.items() if not k.startswith(self.dropped)}
        check_state(state, self._hf_shapes(cfg), f"{self.what} state dict (prefix {prefix!r})")
        out = {ours: state[hf] for ours, (hf, _) in self.tower(cfg).items()}
        for i in range(cfg.num_layers):
            ours, hf = f"transformer.layers.{i}.", self.layer_prefix.format(i=i)
            out.update({ours + name: state[hf + hf_name] for name, hf_name in self.layer.items()})
            proj = {part: hf + self.qkv.format(part) for part in "qkv"}
            out[ours + "self_attention.linear_qkv.weight"] = fuse_qkv(
                *(state[proj[part] + ".weight"] for part in "qkv"), cfg.num_attention_heads)
            q_bias = state[proj["q"] + ".bias"]
            k_bias = state[proj["k"] + ".bias"] if self.k_bias else torch.zeros_like(q_bias)
            out[ours + "self_attention.linear_qkv.bias"] = fuse_qkv(
                q_bias, k_bias, state[proj["v"] + ".bias"], cfg.num_attention_heads)
        return out

    def load_hf_folder(self, path: str | Path) -> tuple[StateDict, Cfg]:
        """``(HF state dict, our config)`` of the encoder's HF folder (config.json +
        safetensors)."""
        raw = read_hf_config(path)
        return read_hf_weights(path), self.config_from_hf(raw)

    def import_hf(self, model: torch.nn.Module, source: str | Path | StateDict) -> None:
        """Load HF weights (a folder or a state dict) into ``model`` at any TP; a folder's config
        must equal ``model.cfg``."""
        if isinstance(source, dict):
            state = source
        else:
            state, cfg = self.load_hf_folder(source)
            if cfg != model.cfg:
                raise ConversionError(f"{source}: its config {cfg} differs from the model's {model.cfg}")
        load_full_state_dict(model, self.hf_to_megatron(state, model.cfg))


def find_prefix(state: StateDict, anchor: str, what: str, exclude: str | None = None) -> str:
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


def tower_state(state: StateDict, anchor: str, what: str,
                exclude: str | None = None) -> tuple[str, StateDict]:
    """``(prefix, the tower's tensors with the prefix removed)``; prefix as ``find_prefix``."""
    prefix = find_prefix(state, anchor, what, exclude)
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_state(state: StateDict, expected: dict[str, tuple[int, ...]], what: str) -> None:
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
