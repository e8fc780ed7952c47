"""Hybrid LLM (model.layer_pattern with S and/or L layers) ↔ a self-contained Hugging Face folder.

The folder holds ``config.json`` (model_type ``omni_hybrid``, an ``auto_map`` to the modeling
file), ``modeling_omni_hybrid.py`` (a verbatim copy of conversion/hybrid_modeling.py: plain
PyTorch, imports only torch and transformers), ``model.safetensors``, ``generation_config.json``
and the tokenizer files; ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
loads it without this project. ``config.json`` also carries the megatron model section
(``megatron_model``) so ``from-hf`` rebuilds the same model and the weights round-trip bit for bit.

Weights per layer (megatron → HF, ``model.layers.N.`` on the HF side)::

    input_layernorm.weight               input_layernorm.weight
    self_attention.linear_qkv.weight     self_attn.{q,k,v}_proj.weight  (per K/V group [q.., k, v])
    self_attention.q_layernorm.weight    self_attn.q_norm.weight
    self_attention.k_layernorm.weight    self_attn.k_norm.weight
    self_attention.linear_gate.weight    self_attn.g_proj.weight        (S, L with output_gate)
    self_attention.out_norm.weight       self_attn.out_norm.weight      (L)
    self_attention.linear_proj.weight    self_attn.o_proj.weight
    pre_mlp_layernorm.weight             post_attention_layernorm.weight
    mlp.linear_fc1.weight                mlp.{gate,up}_proj.weight
    mlp.linear_fc2.weight                mlp.down_proj.weight

plus the embedding, final norm and (untied) output layer as for Qwen3 (the padded vocabulary
kept). Lightning layers have ``model.linear.num_query_groups`` K/V heads, the others
``model.num_query_groups``.

Every output folder is written under a temporary name and published only once written (and,
with ``verify``, checked against megatron's logits): nothing is left behind on failure. A
setting the modeling file cannot represent is refused (ConversionError naming the field) before
anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_omni.config import ConfigError, OmniConfig, config_from_dict, config_to_dict
from megatron_omni.config.schema import ModelConfig
from megatron_omni.config.validate_model import validate_model, validate_sizes
from megatron_omni.conversion import hybrid_modeling
from megatron_omni.conversion.checkpoints import (plain_state, read_tokenizer, resolve_checkpoint,
                                                  single_rank_config, single_rank_model)
from megatron_omni.conversion.common import (SAFETENSORS, ConversionError, read_hf_config,
                                             read_hf_weights, staged_folder)
from megatron_omni.models.llm.model import padded_vocab_size, rope_base, rope_interpolation
from megatron_omni.training import checkpoint

MODEL_TYPE = "omni_hybrid"
MODELING_FILE = "modeling_omni_hybrid.py"
_TEMPLATE = Path(hybrid_modeling.__file__)
_AUTO_MAP = {"AutoConfig": "modeling_omni_hybrid.OmniHybridConfig",
             "AutoModelForCausalLM": "modeling_omni_hybrid.OmniHybridForCausalLM"}

_OUTER = [("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
          ("decoder.final_layernorm.weight", "model.norm.weight"),
          ("output_layer.weight", "lm_head.weight")]
_VOCAB_ROWS = {"embedding.word_embeddings.weight", "output_layer.weight"}
_LAYER = [("input_layernorm.weight", "input_layernorm.weight"),
          ("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
          ("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"),
          ("self_attention.linear_gate.weight", "self_attn.g_proj.weight"),
          ("self_attention.out_norm.weight", "self_attn.out_norm.weight"),
          ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
          ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
          ("mlp.linear_fc2.weight", "mlp.down_proj.weight")]
_LSE_POOLING = ("lse_kernel_size", "lse_kernel_stride")
"""The selection's normaliser pooling: not in model.sparse; the sparse layers run the kernel's
defaults, which the modeling file's SPARSE_DEFAULTS repeat (a test pins them equal)."""
_QKV, _FC1 = "self_attention.linear_qkv.weight", "mlp.linear_fc1.weight"
_HF_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_HF_FC1 = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


def is_hybrid(model_cfg: ModelConfig) -> bool:
    """True when the decoder has sparse (S) or linear (L) layers."""
    return set(model_cfg.layer_types()) != {"D"}


def is_hybrid_folder(path: str | Path) -> bool:
    """True for a folder whose config.json says model_type omni_hybrid."""
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == MODEL_TYPE


def check_exportable(cfg: OmniConfig) -> None:
    """Raise ConversionError naming the field when the modeling file cannot represent cfg.model."""
    m = cfg.model
    if m.omni is not None:
        raise ConversionError("model.omni is set: the hybrid export writes the text LLM only; "
                              "export the omni model with the omni export")
    try:
        validate_sizes(cfg)
        validate_model(dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tp=1, cp=1)))
    except ConfigError as e:
        raise ConversionError(f"cannot export this model: {e}") from None
    if m.num_attention_heads % m.num_query_groups:
        raise ConversionError(f"model.num_query_groups={m.num_query_groups} must divide "
                              f"model.num_attention_heads={m.num_attention_heads}")


def _groups(m: ModelConfig, letter: str) -> int:
    if letter == "L":
        return m.linear.num_query_groups or m.num_attention_heads
    return m.num_query_groups


def _split_qkv(qkv: torch.Tensor, m: ModelConfig, groups: int) -> tuple[torch.Tensor, ...]:
    nh, hn = m.num_attention_heads, m.head_dim
    w = qkv.view(groups, (nh // groups + 2) * hn, qkv.shape[-1])
    q, k, v = w.split([nh // groups * hn, hn, hn], dim=1)
    return tuple(t.reshape(-1, qkv.shape[-1]).contiguous() for t in (q, k, v))


def _merge_qkv(hf_state: dict, prefix: str, m: ModelConfig, groups: int) -> torch.Tensor:
    """The fused [q heads of group g; k_g; v_g] weight from the HF q/k/v projections under
    ``prefix``; ConversionError naming a projection of the wrong shape."""
    h, rows = m.hidden_size, (m.num_attention_heads * m.head_dim, groups * m.head_dim, groups * m.head_dim)
    parts = []
    for name, n in zip(_HF_QKV, rows):
        t = hf_state[prefix + name]
        if tuple(t.shape) != (n, h):
            raise ConversionError(f"{prefix + name}: shape {tuple(t.shape)}, expected {(n, h)}")
        parts.append(t.reshape(groups, -1, h))
    return torch.cat(parts, dim=1).reshape(-1, h)


def megatron_to_hybrid_hf(state: dict[str, torch.Tensor], m: ModelConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """A TP=1 hybrid GPTModel state dict (no ``_extra_state``) → the HF folder's tensors; the
    embedding and output layer keep the true vocabulary's ``vocab_size`` rows (the padding rows,
    masked in megatron, are dropped). Every key must be consumed: a tensor the mapping does not
    know raises ConversionError."""
    out, used = {}, set()
    for mk, hk in _OUTER:
        if mk in state and not (mk == "output_layer.weight" and m.tie_embeddings):
            out[hk] = state[mk][:vocab_size] if mk in _VOCAB_ROWS else state[mk]
        used.add(mk)
    ffn = m.ffn_hidden_size
    for i, letter in enumerate(m.layer_types()):
        mp, hp = f"decoder.layers.{i}.", f"model.layers.{i}."
        for mk, hk in _LAYER:
            if mp + mk in state:
                out[hp + hk] = state[mp + mk]
                used.add(mp + mk)
        for key in (_QKV, _FC1):
            if mp + key not in state:
                raise ConversionError(f"missing key {mp + key}")
            used.add(mp + key)
        for hk, t in zip(_HF_QKV, _split_qkv(state[mp + _QKV], m, _groups(m, letter))):
            out[hp + hk] = t
        gate, up = state[mp + _FC1].split(ffn, dim=0)
        out[hp + _HF_FC1[0]], out[hp + _HF_FC1[1]] = gate.contiguous(), up.contiguous()
    unknown = sorted(set(state) - used)
    if unknown:
        raise ConversionError(f"megatron tensors the hybrid export does not map: {unknown[:8]}")
    return out


def _pad_vocab_rows(w: torch.Tensor) -> torch.Tensor:
    rows = padded_vocab_size(w.shape[0])
    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])]) if rows > w.shape[0] else w


def hybrid_hf_to_megatron(hf_state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of megatron_to_hybrid_hf (vocabulary rows zero-padded to megatron's padded
    size). Raises ConversionError naming a missing or an unknown HF tensor."""
    out, used = {}, set()
    for mk, hk in _OUTER:
        if hk in hf_state:
            out[mk] = _pad_vocab_rows(hf_state[hk]) if mk in _VOCAB_ROWS else hf_state[hk]
            used.add(hk)
    for i, letter in enumerate(m.layer_types()):
        mp, hp = f"decoder.layers.{i}.", f"model.layers.{i}."
        for mk, hk in _LAYER:
            if hp + hk in hf_state:
                out[mp + mk] = hf_state[hp + hk]
                used.add(hp + hk)
        needed = [hp + k for k in _HF_QKV + _HF_FC1]
        missing = [k for k in needed if k not in hf_state]
        if missing:
            raise ConversionError(f"missing key {missing[0]}")
        used.update(needed)
        out[mp + _QKV] = _merge_qkv(hf_state, hp, m, _groups(m, letter))
        for k in _HF_FC1:
            if tuple(hf_state[hp + k].shape) != (m.ffn_hidden_size, m.hidden_size):
                raise ConversionError(f"{hp + k}: shape {tuple(hf_state[hp + k].shape)}, expected "
                                      f"{(m.ffn_hidden_size, m.hidden_size)}")
        out[mp + _FC1] = torch.cat([hf_state[hp + k] for k in _HF_FC1], dim=0)
    unknown = sorted(set(hf_state) - used)
    if unknown:
        raise ConversionError(f"HF tensors the hybrid model has no place for: {unknown[:8]}")
    return out


def hybrid_hf_config(m: ModelConfig, vocab_size: int, dtype: str) -> dict:
    """config.json of the folder (without token ids); m.vocab_size must be the true vocabulary."""
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["OmniHybridForCausalLM"],
        "auto_map": dict(_AUTO_MAP),
        "dtype": dtype,
        "vocab_size": vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "head_dim": m.head_dim,
        "layer_pattern": m.layer_types(),
        "rms_norm_eps": m.norm_eps,
        "rope_base": float(rope_base(m)),
        "rope_interpolation": float(rope_interpolation(m) or 1.0),
        "max_position_embeddings": m.max_position_embeddings,
        "initializer_range": m.init_std,
        "tie_word_embeddings": m.tie_embeddings,
        "use_cache": False,
        "sparse": {**{f.name: getattr(m.sparse, f.name) for f in dataclasses.fields(m.sparse)},
                   **{k: hybrid_modeling.SPARSE_DEFAULTS[k] for k in _LSE_POOLING}},
        "linear": {"num_key_value_heads": m.linear.num_query_groups, "slopes": m.linear.slopes,
                   "output_gate": m.linear.output_gate, "chunk_size": m.linear.chunk_size},
        "megatron_model": config_to_dict(m),
    }


def _write_folder(out: Path, hf_state: dict, hf_cfg: dict, tokenizer) -> None:
    if tokenizer is not None:
        hf_cfg.update(eos_token_id=tokenizer.eod_id, pad_token_id=tokenizer.pad_id)
        tokenizer.save_hf_files(out)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    generation = {"use_cache": False, **{k: hf_cfg[k] for k in ("eos_token_id", "pad_token_id")
                                         if k in hf_cfg}}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.copyfile(_TEMPLATE, out / MODELING_FILE)
    tensors = {k: v.detach().cpu().contiguous() for k, v in hf_state.items()}
    save_file(tensors, out / SAFETENSORS, metadata={"format": "pt"})


def verify_hybrid_folder(model, folder: Path, tolerance: float, length: int = 32) -> float:
    """Max |logit difference| between megatron's model and the folder's model (the modeling
    file's classes, loaded from the folder's weights) on random tokens; ConversionError above
    ``tolerance``."""
    hf = hybrid_modeling.OmniHybridForCausalLM.from_pretrained(
        folder, dtype=next(model.parameters()).dtype).eval()
    tokens = torch.randint(0, hf.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ours = model(tokens, torch.arange(length).expand_as(tokens), None)[..., :hf.config.vocab_size].float()
        theirs = hf(tokens).logits.float()
    diff = (ours - theirs).abs().max().item()
    if not diff <= tolerance:
        raise ConversionError(f"verify failed: max |logit diff| {diff:.3e} > {tolerance:.1e}")
    return diff


def export_hybrid(source: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                  verify: bool = True, tolerance: float = 1e-4) -> dict:
    """Write the HF folder of a hybrid checkpoint (run folder or checkpoint folder, any TP/PP).
    Needs a process group (``platform.init_distributed()``). Returns a summary dict."""
    path = resolve_checkpoint(source)
    common = checkpoint.read_common(path)
    cfg = single_rank_config(config_from_dict(common["config"]), common["dtype"])
    check_exportable(cfg)
    vocab_size = common["vocab_size"]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    tok_path = tokenizer or cfg.data.tokenizer
    tok = read_tokenizer(tok_path, vocab_size) if tok_path else None
    model = single_rank_model(cfg, vocab_size)
    checkpoint.load_checkpoint(path, [model])
    hf_state = megatron_to_hybrid_hf(plain_state(model), cfg.model, vocab_size)
    summary = {"hf_folder": str(out_dir), "model_type": MODEL_TYPE, "layer_pattern": cfg.model.layer_types()}
    with staged_folder(out_dir) as tmp:
        _write_folder(tmp, hf_state, hybrid_hf_config(cfg.model, vocab_size, common["dtype"]), tok)
        if verify:
            summary["max_abs_logit_diff"] = verify_hybrid_folder(model, tmp, tolerance)
    return summary


def _model_config(raw: dict, folder: Path) -> tuple[ModelConfig, int]:
    """The megatron model section of an omni_hybrid config.json, checked against the HF fields
    (which the modeling file reads): a hand-edited field that disagrees is named."""
    if raw.get("model_type") != MODEL_TYPE:
        raise ConversionError(f"{folder}/config.json: model_type={raw.get('model_type')!r}; "
                              f"expected {MODEL_TYPE!r}")
    if not isinstance(raw.get("megatron_model"), dict):
        raise ConversionError(f"{folder}/config.json: no megatron_model section (written by "
                              "convert_checkpoint.py to-hf)")
    try:
        m = config_from_dict({"model": raw["megatron_model"]}).model
    except ConfigError as e:
        raise ConversionError(f"{folder}/config.json megatron_model: {e}") from None
    if m.vocab_size is None:
        raise ConversionError(f"{folder}/config.json: megatron_model.vocab_size is not set")
    expected = hybrid_hf_config(m, m.vocab_size, raw.get("dtype", "float32"))
    differ = [k for k, v in expected.items() if k not in ("auto_map", "dtype") and raw.get(k) != v]
    if differ:
        k = differ[0]
        raise ConversionError(f"{folder}/config.json: {k}={raw.get(k)!r} disagrees with "
                              f"megatron_model (which gives {expected[k]!r})")
    return m, m.vocab_size


def hybrid_folder_to_megatron(hf_dir: str | Path, out_root: str | Path,
                              tokenizer: str | None = None) -> Path:
    """Save a weights-only megatron checkpoint (iteration 0) of an omni_hybrid folder under
    out_root (published only when complete). Returns the checkpoint folder."""
    folder = Path(hf_dir)
    m, vocab_size = _model_config(read_hf_config(folder), folder)
    hf_state = read_hf_weights(folder, check_index_complete=True)
    dtype = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    base = OmniConfig()
    cfg = single_rank_config(dataclasses.replace(
        base, model=m, data=dataclasses.replace(base.data, tokenizer=tokenizer)), dtype)
    model = single_rank_model(cfg, vocab_size)
    state = hybrid_hf_to_megatron(hf_state, m)
    expected = plain_state(model)
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"{k}: shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    if problems:
        raise ConversionError(f"{folder}: weights do not fit the model of its config.json: "
                              + "; ".join(problems[:8]))
    model.load_state_dict(state, strict=False)
    with staged_folder(out_root) as tmp:
        saved = checkpoint.save_checkpoint(tmp, 0, [model], 0, config_to_dict(cfg), vocab_size)
    return Path(out_root) / saved.name


def convert_if_hybrid(args) -> dict | None:
    """launch/convert_checkpoint.py's hybrid dispatch: ``to-hf`` of a hybrid checkpoint and
    ``from-hf`` of an omni_hybrid folder run here (returns the summary); None for anything else
    (an omni checkpoint, hybrid or not, is the omni export's)."""
    if args.command == "to-hf":
        model = config_from_dict(checkpoint.read_common(resolve_checkpoint(args.checkpoint))["config"]).model
        if model.omni is not None or not is_hybrid(model):
            return None
        return export_hybrid(args.checkpoint, args.out, args.tokenizer, args.verify, args.tolerance)
    if args.command == "from-hf" and is_hybrid_folder(args.hf):
        return {"checkpoint": str(hybrid_folder_to_megatron(args.hf, args.out, args.tokenizer))}
    return None
