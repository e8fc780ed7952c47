"""Qwen3 LLM weights: megatron-core GPTModel ↔ Hugging Face ``Qwen3ForCausalLM``.

Full (unsharded, TP=1, PP=1) state dicts only; gathering shards is the caller's job. The mappings
are pure: they neither cast dtypes nor copy tensors they do not have to (outputs may be views of
the inputs).

Layouts (research/megatron.md, "Checkpoints")::

    megatron                                           HF
    embedding.word_embeddings.weight  [Vpad, h]        model.embed_tokens.weight
    decoder.layers.N.
      input_layernorm.weight          [h]              model.layers.N.input_layernorm.weight
      self_attention.linear_qkv.weight                 model.layers.N.self_attn.{q,k,v}_proj.weight
          [ng * (np/ng + 2) * hn, h]: per query group g, [q heads of g, k_g, v_g]
      self_attention.q_layernorm.weight [hn]           model.layers.N.self_attn.q_norm.weight
      self_attention.k_layernorm.weight [hn]           model.layers.N.self_attn.k_norm.weight
      self_attention.linear_proj.weight [h, np*hn]     model.layers.N.self_attn.o_proj.weight
      pre_mlp_layernorm.weight        [h]              model.layers.N.post_attention_layernorm.weight
      mlp.linear_fc1.weight           [2*ffn, h]       model.layers.N.mlp.{gate,up}_proj.weight
      mlp.linear_fc2.weight           [h, ffn]         model.layers.N.mlp.down_proj.weight
    decoder.final_layernorm.weight    [h]              model.norm.weight
    output_layer.weight               [Vpad, h]        lm_head.weight  (both absent when tied)

With the transformer-engine backend the two pre-norms are fused into the following linear layer
and named ``self_attention.linear_qkv.layer_norm_weight`` / ``mlp.linear_fc1.layer_norm_weight``
(``te_names=True``). ``_extra_state`` keys are ignored.

Vocabulary: megatron's tables are padded to a multiple of 128 rows (models/llm/model.py, whose
padding logits are masked). On import the HF rows are padded with zero rows; on export only the
true vocabulary's rows are written (HF vocab_size = the checkpoint's vocab_size), so a sampler can
never emit a padding id. The config.json carries both the transformers-5 keys (rope_parameters,
dtype) and the ones transformers 4.51 reads (rope_theta, rope_scaling, torch_dtype).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, Qwen3Config

from megatron_omni.config.schema import ModelConfig
from megatron_omni.conversion.common import SAFETENSORS, ConversionError, read_hf_config, read_hf_weights
from megatron_omni.models.llm.model import VOCAB_DIVISOR, padded_vocab_size, rope_base

_M_EMBED = "embedding.word_embeddings.weight"
_M_OUTPUT = "output_layer.weight"
_M_FINAL_NORM = "decoder.final_layernorm.weight"
_HF_EMBED = "model.embed_tokens.weight"
_HF_LM_HEAD = "lm_head.weight"
_HF_FINAL_NORM = "model.norm.weight"


def _norm_names(te_names: bool) -> tuple[str, str]:
    """Megatron names (within a layer) of the pre-attention and pre-MLP norms."""
    if te_names:
        return "self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"
    return "input_layernorm.weight", "pre_mlp_layernorm.weight"


def _one_to_one(te_names: bool) -> list[tuple[str, str]]:
    """(megatron, HF) names within a layer of the tensors that map unchanged."""
    input_norm, pre_mlp_norm = _norm_names(te_names)
    return [
        (input_norm, "input_layernorm.weight"),
        ("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
        ("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"),
        ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
        (pre_mlp_norm, "post_attention_layernorm.weight"),
        ("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
    ]


def _heads(m: ModelConfig) -> tuple[int, int, int]:
    """(num_attention_heads, num_query_groups, head_dim), checked for GQA divisibility."""
    if m.num_attention_heads % m.num_query_groups:
        raise ConversionError(f"model.num_attention_heads={m.num_attention_heads} is not a multiple of "
                              f"model.num_query_groups={m.num_query_groups}")
    return m.num_attention_heads, m.num_query_groups, m.head_dim


def _megatron_shapes(m: ModelConfig, vocab_rows: int | None, te_names: bool) -> dict[str, tuple]:
    """Expected megatron keys and shapes; a None dimension is not checked."""
    nh, ng, hn = _heads(m)
    h, ffn = m.hidden_size, m.ffn_hidden_size
    shapes = {_M_EMBED: (vocab_rows, h), _M_FINAL_NORM: (h,)}
    if not m.tie_embeddings:
        shapes[_M_OUTPUT] = (vocab_rows, h)
    input_norm, pre_mlp_norm = _norm_names(te_names)
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        shapes.update({
            p + input_norm: (h,),
            p + "self_attention.linear_qkv.weight": ((nh + 2 * ng) * hn, h),
            p + "self_attention.q_layernorm.weight": (hn,),
            p + "self_attention.k_layernorm.weight": (hn,),
            p + "self_attention.linear_proj.weight": (h, nh * hn),
            p + pre_mlp_norm: (h,),
            p + "mlp.linear_fc1.weight": (2 * ffn, h),
            p + "mlp.linear_fc2.weight": (h, ffn),
        })
    return shapes


def _hf_shapes(m: ModelConfig, vocab_rows: int | None) -> dict[str, tuple]:
    """Expected HF keys and shapes; a None dimension is not checked."""
    nh, ng, hn = _heads(m)
    h, ffn = m.hidden_size, m.ffn_hidden_size
    shapes = {_HF_EMBED: (vocab_rows, h), _HF_FINAL_NORM: (h,)}
    if not m.tie_embeddings:
        shapes[_HF_LM_HEAD] = (vocab_rows, h)
    for i in range(m.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (nh * hn, h),
            p + "self_attn.k_proj.weight": (ng * hn, h),
            p + "self_attn.v_proj.weight": (ng * hn, h),
            p + "self_attn.q_norm.weight": (hn,),
            p + "self_attn.k_norm.weight": (hn,),
            p + "self_attn.o_proj.weight": (h, nh * hn),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ffn, h),
            p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn),
        })
    return shapes


def _shape_matches(shape: torch.Size, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _validate(state: dict, expected: dict[str, tuple], side: str, hint: str = "") -> None:
    """Raise ConversionError listing every missing key, unexpected key and wrong shape."""
    problems = [f"missing key {k} (expected shape {_fmt(s)})" for k, s in expected.items() if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    problems += [f"{k}: expected shape {_fmt(s)}, got {tuple(state[k].shape)}"
                 for k, s in expected.items() if k in state and not _shape_matches(state[k].shape, s)]
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise ConversionError(f"{side} state dict does not match the Qwen3 model config:\n  "
                              + "\n  ".join(shown) + (f"\n{hint}" if hint else ""))


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("V" if d is None else str(d) for d in shape) + ")"


def _rows(state: dict, key: str) -> int | None:
    t = state.get(key)
    return t.shape[0] if t is not None and t.dim() == 2 else None


def _drop_tied_copy(state: dict, key: str, embed_key: str) -> None:
    """A tied model's output weight may appear as a second name for the embedding; drop it."""
    if key in state:
        if embed_key in state and not torch.equal(state[key], state[embed_key]):
            raise ConversionError(f"{key} differs from {embed_key} but model.tie_embeddings=True; "
                                  "set model.tie_embeddings=false to keep a separate output layer")
        del state[key]


def _check_vocab(vocab_size: int, m: ModelConfig, key: str) -> None:
    if m.vocab_size is not None and vocab_size != m.vocab_size:
        raise ConversionError(f"{key} holds a vocabulary of {vocab_size} but model.vocab_size="
                              f"{m.vocab_size}; set model.vocab_size={vocab_size}")


def _naming_hint(state: dict, te_names: bool) -> str:
    if not te_names and any(k.endswith(".layer_norm_weight") for k in state):
        return "The keys use transformer-engine's fused-norm names (…layer_norm_weight): pass te_names=True."
    if te_names and any(k.endswith(".input_layernorm.weight") for k in state):
        return "The keys use the local backend's norm names (…input_layernorm.weight): pass te_names=False."
    return ""


def megatron_to_hf(state_dict: dict[str, torch.Tensor], model_cfg: ModelConfig, vocab_size: int,
                   te_names: bool = False) -> dict[str, torch.Tensor]:
    """Megatron GPTModel state dict (full, TP=1) → HF Qwen3ForCausalLM state dict.

    ``vocab_size`` is the true vocabulary (the checkpoint's ``vocab_size``): the embedding and
    lm_head keep its rows only ([V, h]; the padding rows are dropped). A tied model has no
    ``lm_head.weight``. ``te_names`` selects transformer-engine's fused-norm names.
    """
    state = {k: v for k, v in state_dict.items() if not k.endswith("_extra_state")}
    if model_cfg.tie_embeddings:
        _drop_tied_copy(state, _M_OUTPUT, _M_EMBED)
    vocab_rows = _rows(state, _M_EMBED)
    _validate(state, _megatron_shapes(model_cfg, vocab_rows, te_names), "megatron",
              _naming_hint(state, te_names))
    if vocab_rows != padded_vocab_size(vocab_size):
        raise ConversionError(f"{_M_EMBED} has {vocab_rows} rows; a vocabulary of {vocab_size} is padded "
                              f"to {padded_vocab_size(vocab_size)} (a multiple of {VOCAB_DIVISOR})")
    _check_vocab(vocab_size, model_cfg, _M_EMBED)

    nh, ng, hn = _heads(model_cfg)
    h, ffn = model_cfg.hidden_size, model_cfg.ffn_hidden_size
    hf = {_HF_EMBED: state[_M_EMBED][:vocab_size]}
    for i in range(model_cfg.num_layers):
        mp, hp = f"decoder.layers.{i}.", f"model.layers.{i}."
        for m_name, hf_name in _one_to_one(te_names):
            hf[hp + hf_name] = state[mp + m_name]
        qkv = state[mp + "self_attention.linear_qkv.weight"].view(ng, (nh // ng + 2) * hn, h)
        q, k, v = qkv.split([nh // ng * hn, hn, hn], dim=1)
        hf[hp + "self_attn.q_proj.weight"] = q.reshape(nh * hn, h).contiguous()
        hf[hp + "self_attn.k_proj.weight"] = k.reshape(ng * hn, h).contiguous()
        hf[hp + "self_attn.v_proj.weight"] = v.reshape(ng * hn, h).contiguous()
        gate, up = state[mp + "mlp.linear_fc1.weight"].split(ffn, dim=0)
        hf[hp + "mlp.gate_proj.weight"] = gate
        hf[hp + "mlp.up_proj.weight"] = up
    hf[_HF_FINAL_NORM] = state[_M_FINAL_NORM]
    if not model_cfg.tie_embeddings:
        hf[_HF_LM_HEAD] = state[_M_OUTPUT][:vocab_size]
    return hf


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    if w.shape[0] == rows:
        return w
    return torch.cat([w, w.new_zeros(rows - w.shape[0], w.shape[1])])


def hf_to_megatron(hf_state: dict[str, torch.Tensor], model_cfg: ModelConfig,
                   te_names: bool = False) -> dict[str, torch.Tensor]:
    """HF Qwen3ForCausalLM state dict → megatron GPTModel state dict (full, TP=1), without
    ``_extra_state`` keys (load it with ``strict=False`` and check only those are missing).

    Embedding and output rows are padded with zeros to a multiple of 128. A tied model may carry
    ``lm_head.weight`` as a second name for the embedding (as ``model.state_dict()`` does).
    """
    state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    if model_cfg.tie_embeddings:
        _drop_tied_copy(state, _HF_LM_HEAD, _HF_EMBED)
    vocab_rows = _rows(state, _HF_EMBED)
    _validate(state, _hf_shapes(model_cfg, vocab_rows), "HF")
    _check_vocab(vocab_rows, model_cfg, _HF_EMBED)

    nh, ng, hn = _heads(model_cfg)
    h = model_cfg.hidden_size
    rows = padded_vocab_size(vocab_rows)
    out = {_M_EMBED: _pad_rows(state[_HF_EMBED], rows)}
    for i in range(model_cfg.num_layers):
        mp, hp = f"decoder.layers.{i}.", f"model.layers.{i}."
        for m_name, hf_name in _one_to_one(te_names):
            out[mp + m_name] = state[hp + hf_name]
        q = state[hp + "self_attn.q_proj.weight"].reshape(ng, nh // ng * hn, h)
        k = state[hp + "self_attn.k_proj.weight"].reshape(ng, hn, h)
        v = state[hp + "self_attn.v_proj.weight"].reshape(ng, hn, h)
        out[mp + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h)
        out[mp + "mlp.linear_fc1.weight"] = torch.cat(
            [state[hp + "mlp.gate_proj.weight"], state[hp + "mlp.up_proj.weight"]], dim=0)
    out[_M_FINAL_NORM] = state[_HF_FINAL_NORM]
    if not model_cfg.tie_embeddings:
        out[_M_OUTPUT] = _pad_rows(state[_HF_LM_HEAD], rows)
    return out


def hf_config(model_cfg: ModelConfig, vocab_size: int, dtype: torch.dtype | str) -> Qwen3Config:
    """The Qwen3Config of a model built from model_cfg, with the true vocab_size (megatron_to_hf
    drops the padding rows).
    NTK-aware scaling (model.rope_scaling=ntk) is static: it maps exactly onto default RoPE with
    the raised base (rope_base), so the HF config carries that base and no scaling entry."""
    if model_cfg.rope_scaling == "ntk":
        rope = {"rope_type": "default", "rope_theta": rope_base(model_cfg)}
    elif model_cfg.rope_scaling_factor == 1.0:
        rope = {"rope_type": "default", "rope_theta": float(model_cfg.rope_theta)}
    else:
        rope = {"rope_type": "linear", "rope_theta": float(model_cfg.rope_theta),
                "factor": float(model_cfg.rope_scaling_factor)}
    nh, ng, hn = _heads(model_cfg)
    return Qwen3Config(
        architectures=["Qwen3ForCausalLM"],
        dtype=dtype,
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.ffn_hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=nh,
        num_key_value_heads=ng,
        head_dim=hn,
        hidden_act="silu",
        max_position_embeddings=model_cfg.max_position_embeddings,
        initializer_range=model_cfg.init_std,
        rms_norm_eps=model_cfg.norm_eps,
        tie_word_embeddings=model_cfg.tie_embeddings,
        rope_parameters=rope,
        attention_bias=False,
        use_sliding_window=False,
        max_window_layers=model_cfg.num_layers,
        attention_dropout=model_cfg.attention_dropout,
    )


def model_overrides_from_hf(hf_cfg: Qwen3Config | dict) -> dict:
    """ModelConfig field values for an HF Qwen3 config (a Qwen3Config or config.json's dict).

    Raises ConversionError naming the HF field for features our model does not have (biases,
    sliding windows, other activations, RoPE types other than default/linear).
    """
    if isinstance(hf_cfg, dict):
        hf_cfg = _qwen3_config_from_dict(hf_cfg, "config")
    if hf_cfg.model_type != "qwen3":
        raise ConversionError(f"model_type={hf_cfg.model_type!r}: expected a Qwen3 config ('qwen3')")
    unsupported = [(f, getattr(hf_cfg, f, None), ok) for f, ok in
                   (("attention_bias", False), ("hidden_act", "silu"), ("use_sliding_window", False))]
    for field, value, ok in unsupported:
        if value is not None and value != ok:
            raise ConversionError(f"HF config {field}={value!r} is not supported (our model has {field}={ok!r})")
    layer_types = set(getattr(hf_cfg, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise ConversionError(f"HF config layer_types={sorted(layer_types)}: only full_attention is supported")
    rope = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise ConversionError(f"HF config rope_parameters.rope_type={rope_type!r} is not supported "
                              "(default or linear only)")
    theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", None))
    if theta is None:
        raise ConversionError("HF config has no rope_parameters.rope_theta")
    return dict(
        num_layers=hf_cfg.num_hidden_layers,
        hidden_size=hf_cfg.hidden_size,
        ffn_hidden_size=hf_cfg.intermediate_size,
        num_attention_heads=hf_cfg.num_attention_heads,
        num_query_groups=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads,
        head_dim=hf_cfg.head_dim,
        vocab_size=hf_cfg.vocab_size,
        max_position_embeddings=hf_cfg.max_position_embeddings,
        rope_theta=float(theta),
        rope_scaling_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
        norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
    )


TRANSFORMERS_4_KEYS = ("rope_theta", "rope_scaling", "torch_dtype")
"""config.json keys transformers 4.51 reads where transformers 5 reads rope_parameters and dtype
(5.x also reads these, and prefers them when both are present; they are written equal)."""


def legacy_keys(hf_cfg: Qwen3Config) -> dict:
    """TRANSFORMERS_4_KEYS of hf_cfg: rope_theta, rope_scaling (null for default RoPE, else
    {rope_type, factor}) and torch_dtype."""
    rope = hf_cfg.rope_parameters
    scaling = None if rope["rope_type"] == "default" else {"rope_type": rope["rope_type"], "factor": rope["factor"]}
    return {"rope_theta": rope["rope_theta"], "rope_scaling": scaling,
            "torch_dtype": str(hf_cfg.dtype).removeprefix("torch.")}


GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
"""Sampling settings of the exported generation_config.json (those of Qwen3's own releases)."""


def generation_config(eos_id: int | None, pad_id: int | None) -> GenerationConfig:
    """generation_config.json of an export: the tokenizer's <eod> as eos and bos (documents are
    separated by it, so it precedes a prompt as Qwen3's <|endoftext|> does), <pad> as pad, and
    GENERATION_DEFAULTS."""
    return GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                            **GENERATION_DEFAULTS)


def save_hf_folder(hf_state: dict[str, torch.Tensor], hf_cfg: Qwen3Config, out_dir: str | Path) -> None:
    """Write ``config.json`` (with legacy_keys, for transformers 4.51), ``generation_config.json``
    (generation_config with hf_cfg's eos/pad ids) and ``model.safetensors`` (contiguous CPU
    tensors; a tied model's lm_head is not stored) — a folder ``AutoModelForCausalLM.from_pretrained``
    loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg.save_pretrained(out)
    config_file = out / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **legacy_keys(hf_cfg)},
                                      indent=2, sort_keys=True) + "\n")
    generation_config(hf_cfg.eos_token_id, hf_cfg.pad_token_id).save_pretrained(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in hf_state.items()
               if not (hf_cfg.tie_word_embeddings and k == _HF_LM_HEAD)}
    save_file(tensors, out / SAFETENSORS, metadata={"format": "pt"})


def _qwen3_config_from_dict(raw: dict, where: str) -> Qwen3Config:
    model_type = raw.get("model_type")
    if model_type != "qwen3":
        raise ConversionError(f"{where}: model_type={model_type!r} (architectures="
                              f"{raw.get('architectures')}); expected a Qwen3 model (model_type 'qwen3')")
    return Qwen3Config.from_dict(raw)


def load_hf_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], Qwen3Config]:
    """Read an HF Qwen3 folder: ``config.json`` plus ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``. Tensors keep their stored dtype, on the CPU.

    Raises ConversionError naming what is missing (config, weight files, shards, tensors).
    """
    folder = Path(path)
    cfg = _qwen3_config_from_dict(read_hf_config(folder), str(folder / "config.json"))
    state = read_hf_weights(folder, check_index_complete=True)

    model_cfg = ModelConfig(**model_overrides_from_hf(cfg))
    checked = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if model_cfg.tie_embeddings:
        _drop_tied_copy(checked, _HF_LM_HEAD, _HF_EMBED)
    _validate(checked, _hf_shapes(model_cfg, cfg.vocab_size), f"{folder}:")
    return state, cfg
