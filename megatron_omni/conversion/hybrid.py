"""Dense → hybrid conversion: a dense (all-D) decoder's weights placed into a hybrid decoder of
the same shape whose layers follow ``model.layer_pattern`` (D dense, S InfLLM-V2, L Lightning).

Per layer, by the pattern letter:

- D: every tensor copied bit-identically.
- S: the sparse layer has the dense layer's parameters under the same names (linear_qkv,
  linear_proj, q/k_layernorm, norms, MLP): all copied bit-identically.
- L: linear_proj, q/k_layernorm, the layer norms and the MLP copied; linear_qkv copied into the
  linear layer's fused layout, with the K/V heads replicated when the linear layer has more K/V
  heads (``model.linear.num_query_groups``) than the dense one (MiniCPM-SALA: 2 → 32).
- Everything outside the layers (embedding, final norm, untied output layer) copied.
- An omni checkpoint (model.omni set): the vision and audio encoders and both projectors copied
  bit-identically too (the LLM's tensors are the ones above, under ``llm.``), so the hybrid omni
  model sees the media exactly as the dense one; its model.omni must be the dense checkpoint's
  in every field that shapes or changes those modules (checkpoint.OMNI_FUNCTION_FIELDS).

New parameters — the output gates (``linear_gate``, S and L) and the Lightning output norm
(``out_norm``) — are freshly initialised: they keep the values the hybrid model's own
initialisers gave them (``init_state``), which is what research/kernels.md infers the
MiniCPM-SALA conversion does before its HALO distillation. At the start, out_norm weights are
ones, and a gate weight ~ N(0, init_std) makes sigmoid(x W_gate) 0.5 on average, spread by x W_gate
(std about init_std · sqrt(hidden) · rms(x)): a gated layer starts near half of its ungated
output. No initialisation of a bias-free sigmoid gate gives 1 (zero weights give exactly 0.5).
So even below dense_len a sparse layer does not reproduce the dense layer at step 0 (the gate,
and NoPE where the dense layer had RoPE); ``model.sparse.output_gate=false`` removes its gate.
The distillation stage closes the gap.

Megatron's fused QKV layout (one row block per K/V group g, ``r`` = heads / groups query heads
each): ``[q_{g·r} … q_{g·r+r-1}, k_g, v_g]``, each head ``head_dim`` rows.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch
import yaml

from megatron_omni.config import OmniConfig, config_from_dict, config_to_dict, load_config, validate
from megatron_omni.config.schema import ModelConfig, OmniModelConfig
from megatron_omni.conversion.checkpoints import (plain_state, resolve_checkpoint, single_rank_config,
                                                  single_rank_model)
from megatron_omni.conversion.common import staged_folder
from megatron_omni.conversion.qwen3 import ConversionError
from megatron_omni.training import checkpoint

FRESH = ("self_attention.linear_gate.weight", "self_attention.out_norm.weight")
"""Hybrid-only parameters (key suffixes) left at the hybrid model's initial values."""

_LAYER = re.compile(r"(?:llm\.)?decoder\.layers\.(\d+)\.(.+)")
"""A decoder layer's key: of the LLM's state dict, or of the omni model's (under ``llm.``)."""
_QKV = ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias")


def replicate_kv_heads(qkv: torch.Tensor, num_heads: int, groups: int, new_groups: int,
                       head_dim: int) -> torch.Tensor:
    """A fused linear_qkv weight [groups·(r+2)·head_dim, hidden] (or bias) re-laid out for
    new_groups K/V heads (a multiple of groups): query heads unchanged and in order, each
    dense K/V head repeated new_groups/groups times (new group j takes dense group
    j // (new_groups/groups), which serves the same query heads as before)."""
    if new_groups % groups or num_heads % new_groups:
        raise ConversionError(
            f"cannot map {groups} K/V heads to {new_groups}: the linear layer's K/V heads "
            f"(model.linear.num_query_groups) must be a multiple of the dense model's "
            f"({groups}) and divide num_attention_heads={num_heads}")
    rest = qkv.shape[1:]
    per_group = num_heads // groups
    w = qkv.reshape(groups, per_group + 2, head_dim, *rest)
    q = w[:, :per_group].reshape(new_groups, num_heads // new_groups, head_dim, *rest)
    k, v = (t.repeat_interleave(new_groups // groups, dim=0)[:, None] for t in (w[:, -2], w[:, -1]))
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _check_omni(dense: OmniModelConfig | None, hybrid: OmniModelConfig | None) -> None:
    """The hybrid model has the dense model's encoders and projectors (or neither has any)."""
    if dense is None and hybrid is not None:
        raise ConversionError("the dense checkpoint is the text-only LLM but the hybrid config sets "
                              "model.omni; convert an omni checkpoint (launch/convert_checkpoint.py "
                              "from-hf-omni makes one) or drop the model.omni override")
    if dense is not None and hybrid is None:
        raise ConversionError("the dense checkpoint is the omni model and its encoders and projectors "
                              "are copied: the hybrid model keeps model.omni (drop model.omni=null)")
    differ = [f"model.omni.{f}: dense {getattr(dense, f)} vs hybrid {getattr(hybrid, f)}"
              for f in checkpoint.OMNI_FUNCTION_FIELDS if dense is not None
              and getattr(dense, f) != getattr(hybrid, f)]
    if differ:
        raise ConversionError("the encoders and projectors are copied from the dense checkpoint, so "
                              "the hybrid model needs its model.omni; " + "; ".join(differ))


def _check_configs(dense_cfg: ModelConfig, hybrid_cfg: ModelConfig) -> str:
    if set(dense_cfg.layer_types()) != {"D"}:
        raise ConversionError(f"the source must be dense (model.layer_pattern null or all D), "
                              f"got model.layer_pattern={dense_cfg.layer_pattern!r}")
    _check_omni(dense_cfg.omni, hybrid_cfg.omni)
    differ = [f"model.{f}: dense {getattr(dense_cfg, f)} vs hybrid {getattr(hybrid_cfg, f)}"
              for f in checkpoint.MODEL_SHAPE_FIELDS if getattr(dense_cfg, f) != getattr(hybrid_cfg, f)]
    if differ:
        raise ConversionError("the hybrid model must have the dense model's shape; "
                              + "; ".join(differ))
    pattern = hybrid_cfg.layer_types()
    if len(pattern) != hybrid_cfg.num_layers or set(pattern) - set("DSL"):
        raise ConversionError(f"model.layer_pattern={hybrid_cfg.layer_pattern!r} needs one of "
                              f"D, S, L for each of the {hybrid_cfg.num_layers} layers")
    return pattern


def dense_to_hybrid(dense_state: dict[str, torch.Tensor], dense_cfg: ModelConfig,
                    hybrid_cfg: ModelConfig, init_state: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The hybrid model's state dict from a dense one (both TP=1, without ``_extra_state``): of
    the LLMs, or of the omni models (encoders and projectors copied like the embedding).

    init_state: the freshly built hybrid model's state dict; it names every tensor of the
    result and supplies the new gates and norms (module/docstring above). Returns
    ``(hybrid_state, report)``, report = {"copied": keys copied bit-identically, "replicated":
    linear_qkv keys whose K/V heads were replicated, "fresh": keys taken from init_state}.
    Raises ConversionError on a shape mismatch, a hybrid tensor with no source, or a dense
    tensor left unused.
    """
    pattern = _check_configs(dense_cfg, hybrid_cfg)
    groups = dense_cfg.num_query_groups
    linear_groups = hybrid_cfg.linear.num_query_groups or hybrid_cfg.num_attention_heads
    state, report = {}, {"copied": [], "replicated": [], "fresh": []}
    for key, init in init_state.items():
        match = _LAYER.fullmatch(key)
        letter, name = (pattern[int(match[1])], match[2]) if match else ("", key)
        if key not in dense_state:
            if letter not in ("S", "L") or name not in FRESH:
                raise ConversionError(f"{key} (layer type {letter or 'none'}) has no source in "
                                      "the dense checkpoint")
            state[key] = init
            report["fresh"].append(key)
            continue
        value = dense_state[key]
        if letter == "L" and name in _QKV and linear_groups != groups:
            value = replicate_kv_heads(value, dense_cfg.num_attention_heads, groups,
                                       linear_groups, dense_cfg.head_dim)
            report["replicated"].append(key)
        else:
            report["copied"].append(key)
        if value.shape != init.shape:
            raise ConversionError(f"{key}: dense shape {tuple(value.shape)} does not fit the "
                                  f"hybrid model's {tuple(init.shape)}")
        state[key] = value.to(init.dtype)
    unused = sorted(set(dense_state) - set(state))
    if unused:
        raise ConversionError(f"dense tensors with no place in the hybrid model: {unused}")
    return state, report


def hybrid_config(dense: dict, pattern: str, overrides: list[str] = ()) -> OmniConfig:
    """The dense run's config (a checkpoint's ``config`` dict) with model.layer_pattern=pattern
    and ``section.field=value`` overrides (e.g. model.linear.num_query_groups=32) applied."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(dense, f)
        f.flush()
        return load_config(f.name, [f"model.layer_pattern={pattern}", *overrides])


def convert_dense_checkpoint(source: str | Path, out_root: str | Path, pattern: str,
                             overrides: list[str] = ()) -> tuple[Path, dict[str, list[str]]]:
    """Load a dense checkpoint (run folder or checkpoint folder, any TP/PP; the LLM or the omni
    model) into a TP=1 model, build the hybrid TP=1 model of the same config with ``pattern``
    (and overrides), convert (dense_to_hybrid) and save it as a weights-only checkpoint,
    iteration 0, under out_root, with the hybrid config (model.omni kept for an omni source).
    It loads at any TP/PP with ``checkpoint.load=<out_root>`` and the same layer pattern.
    Needs a process group (``platform.init_distributed()``). Holds both models in memory.
    Returns (the checkpoint folder, the report of dense_to_hybrid)."""
    path = resolve_checkpoint(source, "--dense")
    common = checkpoint.read_common(path)
    dtype, vocab_size = common["dtype"], common["vocab_size"]
    dense_cfg = single_rank_config(config_from_dict(common["config"]), dtype)
    hybrid_cfg = single_rank_config(hybrid_config(common["config"], pattern, overrides), dtype)
    validate(hybrid_cfg, world_size=1)
    _check_configs(dense_cfg.model, hybrid_cfg.model)  # before two models are built
    omni = dense_cfg.model.omni is not None
    with staged_folder(out_root) as tmp:  # an existing out_root is refused before the work
        dense = single_rank_model(dense_cfg, vocab_size, omni)
        checkpoint.load_checkpoint(path, [dense])
        hybrid = single_rank_model(hybrid_cfg, vocab_size, omni)
        state, report = dense_to_hybrid(plain_state(dense), dense_cfg.model, hybrid_cfg.model,
                                        plain_state(hybrid))
        missing, unexpected = hybrid.load_state_dict(state, strict=False)
        missing = [k for k in missing if "_extra_state" not in k]
        if missing or unexpected:
            raise ConversionError(f"hybrid model left unset: missing {missing}, unexpected {unexpected}")
        out = checkpoint.save_checkpoint(tmp, 0, [hybrid], 0, config_to_dict(hybrid_cfg), vocab_size)
    return Path(out_root) / out.name, report
