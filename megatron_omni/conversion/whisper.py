"""Whisper encoder weights: Hugging Face → our AudioEncoder (models/encoders/audio.py).

Accepted inputs: a ``WhisperEncoder`` state dict (bare keys), a ``WhisperModel`` (``encoder.``)
or ``WhisperForConditionalGeneration`` (``model.encoder.``; the decoder is ignored), or a folder
with ``config.json`` and safetensors (e.g. a download of openai/whisper-medium).

Mapping (HF under the found prefix → ours, full TP=1)::

    conv1.{weight, bias}, conv2.{weight, bias}        unchanged
    embed_positions.weight [max_source_positions, h]  embed_positions (buffer; Whisper's sinusoids)
    layers.L.self_attn_layer_norm.{weight, bias}      transformer.layers.L.input_layernorm.{weight, bias}
    layers.L.self_attn.{q,k,v}_proj.weight            transformer.layers.L.self_attention.linear_qkv.weight
    layers.L.self_attn.{q,v}_proj.bias (k: none)      transformer.layers.L.self_attention.linear_qkv.bias
                                                      (per head [q_h; k_h; v_h]; the k-part is zero)
    layers.L.self_attn.out_proj.{weight, bias}        transformer.layers.L.self_attention.linear_proj.*
    layers.L.final_layer_norm.{weight, bias}          transformer.layers.L.pre_mlp_layernorm.{weight, bias}
    layers.L.fc{1,2}.{weight, bias}                   transformer.layers.L.mlp.linear_fc{1,2}.{weight, bias}
    layer_norm.{weight, bias}                         transformer.final_layernorm.{weight, bias}

Any TP: ``import_hf`` loads the full state into each rank's model, slicing the tensor-parallel
parameters (conversion/common.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import WhisperConfig

from megatron_omni.conversion.common import (ConversionError, check_state, fuse_qkv, import_encoder,
                                             load_encoder_folder, tower_state)
from megatron_omni.config.encoders import AudioEncoderConfig
from megatron_omni.models.encoders.audio import AudioEncoder

_ANCHOR = "conv1.weight"
_LAYER_NAMES = [  # (ours, HF) within a layer, copied unchanged
    ("input_layernorm.weight", "self_attn_layer_norm.weight"),
    ("input_layernorm.bias", "self_attn_layer_norm.bias"),
    ("self_attention.linear_proj.weight", "self_attn.out_proj.weight"),
    ("self_attention.linear_proj.bias", "self_attn.out_proj.bias"),
    ("pre_mlp_layernorm.weight", "final_layer_norm.weight"),
    ("pre_mlp_layernorm.bias", "final_layer_norm.bias"),
    ("mlp.linear_fc1.weight", "fc1.weight"), ("mlp.linear_fc1.bias", "fc1.bias"),
    ("mlp.linear_fc2.weight", "fc2.weight"), ("mlp.linear_fc2.bias", "fc2.bias"),
]


def config_from_hf(hf_cfg: WhisperConfig | dict) -> AudioEncoderConfig:
    """Our AudioEncoderConfig from a WhisperConfig or a whisper config.json dict."""
    if isinstance(hf_cfg, dict):
        if hf_cfg.get("model_type") != "whisper":
            raise ConversionError(f"config model_type={hf_cfg.get('model_type')!r}: expected 'whisper'")
        hf_cfg = WhisperConfig.from_dict(hf_cfg)
    if hf_cfg.activation_function != "gelu":
        raise ConversionError(f"HF config activation_function={hf_cfg.activation_function!r} is not "
                              "supported (our audio encoder uses exact GELU, 'gelu')")
    return AudioEncoderConfig(
        hidden_size=hf_cfg.d_model, num_layers=hf_cfg.encoder_layers,
        num_attention_heads=hf_cfg.encoder_attention_heads, ffn_hidden_size=hf_cfg.encoder_ffn_dim,
        num_mel_bins=hf_cfg.num_mel_bins, max_source_positions=hf_cfg.max_source_positions)


def _hf_shapes(cfg: AudioEncoderConfig) -> dict[str, tuple[int, ...]]:
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    shapes = {"conv1.weight": (h, cfg.num_mel_bins, 3), "conv1.bias": (h,),
              "conv2.weight": (h, h, 3), "conv2.bias": (h,),
              "embed_positions.weight": (cfg.max_source_positions, h),
              "layer_norm.weight": (h,), "layer_norm.bias": (h,)}
    for i in range(cfg.num_layers):
        pre = f"layers.{i}."
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            shapes.update({pre + name + ".weight": (h,), pre + name + ".bias": (h,)})
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[pre + f"self_attn.{name}.weight"] = (h, h)
            if name != "k_proj":
                shapes[pre + f"self_attn.{name}.bias"] = (h,)
        shapes.update({pre + "fc1.weight": (f, h), pre + "fc1.bias": (f,),
                       pre + "fc2.weight": (h, f), pre + "fc2.bias": (h,)})
    return shapes


def hf_to_megatron(hf_state: dict[str, torch.Tensor], cfg: AudioEncoderConfig) -> dict[str, torch.Tensor]:
    """HF Whisper (encoder or full model) state dict → our AudioEncoder's full (TP=1) state dict.
    Raises ConversionError listing missing / unexpected keys and wrong shapes."""
    prefix, state = tower_state(hf_state, _ANCHOR, "Whisper encoder", exclude="decoder")
    check_state(state, _hf_shapes(cfg), f"Whisper encoder state dict (prefix {prefix!r})")
    nh = cfg.num_attention_heads
    out = {name: state[name] for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")}
    out["embed_positions"] = state["embed_positions.weight"]
    out["transformer.final_layernorm.weight"] = state["layer_norm.weight"]
    out["transformer.final_layernorm.bias"] = state["layer_norm.bias"]
    for i in range(cfg.num_layers):
        ours, hf = f"transformer.layers.{i}.", f"layers.{i}.self_attn."
        for name, hf_name in _LAYER_NAMES:
            out[ours + name] = state[f"layers.{i}." + hf_name]
        q_bias = state[hf + "q_proj.bias"]
        out[ours + "self_attention.linear_qkv.weight"] = fuse_qkv(
            state[hf + "q_proj.weight"], state[hf + "k_proj.weight"], state[hf + "v_proj.weight"], nh)
        out[ours + "self_attention.linear_qkv.bias"] = fuse_qkv(
            q_bias, torch.zeros_like(q_bias), state[hf + "v_proj.bias"], nh)
    return out


def load_hf_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], AudioEncoderConfig]:
    """``(HF state dict, our config)`` of a Whisper folder (config.json + safetensors)."""
    return load_encoder_folder(path, config_from_hf)


def import_hf(model: AudioEncoder, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load HF Whisper encoder weights (a folder or a state dict) into ``model`` at any TP; a
    folder's config must match ``model.cfg``."""
    import_encoder(model, source, config_from_hf, hf_to_megatron)
