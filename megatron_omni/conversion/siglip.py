"""SigLIP vision tower weights: Hugging Face → our VisionEncoder (models/encoders/vision.py).

Accepted inputs: a ``SiglipVisionModel`` state dict (bare keys, as transformers 5 saves it, or
under ``vision_model.``), a full ``SiglipModel`` (the text tower, ``logit_scale`` / ``logit_bias``
are ignored), or a folder with ``config.json`` and safetensors (e.g. a download of
google/siglip-so400m-patch14-384). The pooling ``head.*`` is dropped: our tower ends at
``post_layernorm``, matching HF's ``last_hidden_state``.

Mapping (HF under the found prefix → ours, full TP=1)::

    embeddings.patch_embedding.{weight, bias}      patch_embed.{weight, bias}
    embeddings.position_embedding.weight [N, h]    position_embedding [N, h]
    encoder.layers.L.layer_norm1.{weight, bias}    transformer.layers.L.input_layernorm.{weight, bias}
    encoder.layers.L.self_attn.{q,k,v}_proj.*      transformer.layers.L.self_attention.linear_qkv.*
                                                   (per head [q_h; k_h; v_h], see common.fuse_qkv)
    encoder.layers.L.self_attn.out_proj.*          transformer.layers.L.self_attention.linear_proj.*
    encoder.layers.L.layer_norm2.{weight, bias}    transformer.layers.L.pre_mlp_layernorm.{weight, bias}
    encoder.layers.L.mlp.fc{1,2}.{weight, bias}    transformer.layers.L.mlp.linear_fc{1,2}.{weight, bias}
    post_layernorm.{weight, bias}                  transformer.final_layernorm.{weight, bias}

Any TP: ``import_hf`` loads the full state into each rank's model, slicing the tensor-parallel
parameters (conversion/common.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import SiglipVisionConfig

from megatron_omni.conversion.common import (ConversionError, check_state, fuse_qkv, import_encoder,
                                             load_encoder_folder, tower_state)
from megatron_omni.config.encoders import VisionEncoderConfig
from megatron_omni.models.encoders.vision import VisionEncoder

_ANCHOR = "embeddings.patch_embedding.weight"
_LAYER_NAMES = [  # (ours, HF) within a layer, copied unchanged
    ("input_layernorm.weight", "layer_norm1.weight"), ("input_layernorm.bias", "layer_norm1.bias"),
    ("self_attention.linear_proj.weight", "self_attn.out_proj.weight"),
    ("self_attention.linear_proj.bias", "self_attn.out_proj.bias"),
    ("pre_mlp_layernorm.weight", "layer_norm2.weight"), ("pre_mlp_layernorm.bias", "layer_norm2.bias"),
    ("mlp.linear_fc1.weight", "mlp.fc1.weight"), ("mlp.linear_fc1.bias", "mlp.fc1.bias"),
    ("mlp.linear_fc2.weight", "mlp.fc2.weight"), ("mlp.linear_fc2.bias", "mlp.fc2.bias"),
]


def config_from_hf(hf_cfg: SiglipVisionConfig | dict) -> VisionEncoderConfig:
    """Our VisionEncoderConfig from a SiglipVisionConfig, or a config.json dict of a
    ``siglip_vision_model`` or a full ``siglip`` model (its ``vision_config`` is used)."""
    if isinstance(hf_cfg, dict):
        model_type = hf_cfg.get("model_type")
        if model_type == "siglip":
            hf_cfg = hf_cfg.get("vision_config") or {}
        elif model_type != "siglip_vision_model":
            raise ConversionError(f"config model_type={model_type!r}: expected 'siglip' or "
                                  "'siglip_vision_model'")
        hf_cfg = SiglipVisionConfig(**{k: v for k, v in hf_cfg.items() if k != "model_type"})
    if hf_cfg.hidden_act != "gelu_pytorch_tanh":
        raise ConversionError(f"HF config hidden_act={hf_cfg.hidden_act!r} is not supported "
                              "(our vision encoder uses gelu_pytorch_tanh)")
    return VisionEncoderConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers,
        num_attention_heads=hf_cfg.num_attention_heads, ffn_hidden_size=hf_cfg.intermediate_size,
        patch_size=hf_cfg.patch_size, image_size=hf_cfg.image_size, num_channels=hf_cfg.num_channels,
        layer_norm_eps=hf_cfg.layer_norm_eps)


def _hf_shapes(cfg: VisionEncoderConfig) -> dict[str, tuple[int, ...]]:
    h, f, p = cfg.hidden_size, cfg.ffn_hidden_size, cfg.patch_size
    shapes = {"embeddings.patch_embedding.weight": (h, cfg.num_channels, p, p),
              "embeddings.patch_embedding.bias": (h,),
              "embeddings.position_embedding.weight": (cfg.num_patches, h),
              "post_layernorm.weight": (h,), "post_layernorm.bias": (h,)}
    for i in range(cfg.num_layers):
        pre = f"encoder.layers.{i}."
        for name in ("layer_norm1", "layer_norm2"):
            shapes.update({pre + name + ".weight": (h,), pre + name + ".bias": (h,)})
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({pre + f"self_attn.{name}.weight": (h, h), pre + f"self_attn.{name}.bias": (h,)})
        shapes.update({pre + "mlp.fc1.weight": (f, h), pre + "mlp.fc1.bias": (f,),
                       pre + "mlp.fc2.weight": (h, f), pre + "mlp.fc2.bias": (h,)})
    return shapes


def hf_to_megatron(hf_state: dict[str, torch.Tensor], cfg: VisionEncoderConfig) -> dict[str, torch.Tensor]:
    """HF SigLIP (vision tower or full model) state dict → our VisionEncoder's full (TP=1) state
    dict. Raises ConversionError listing missing / unexpected keys and wrong shapes."""
    prefix, tower = tower_state(hf_state, _ANCHOR, "SigLIP vision tower", exclude="text_model")
    state = {k: v for k, v in tower.items() if not k.startswith("head.")}
    check_state(state, _hf_shapes(cfg), f"SigLIP vision state dict (prefix {prefix!r})")
    nh = cfg.num_attention_heads
    out = {"patch_embed.weight": state["embeddings.patch_embedding.weight"],
           "patch_embed.bias": state["embeddings.patch_embedding.bias"],
           "position_embedding": state["embeddings.position_embedding.weight"],
           "transformer.final_layernorm.weight": state["post_layernorm.weight"],
           "transformer.final_layernorm.bias": state["post_layernorm.bias"]}
    for i in range(cfg.num_layers):
        ours, hf = f"transformer.layers.{i}.", f"encoder.layers.{i}.self_attn."
        for name, hf_name in _LAYER_NAMES:
            out[ours + name] = state[f"encoder.layers.{i}." + hf_name]
        for kind in ("weight", "bias"):
            out[ours + "self_attention.linear_qkv." + kind] = fuse_qkv(
                state[hf + f"q_proj.{kind}"], state[hf + f"k_proj.{kind}"], state[hf + f"v_proj.{kind}"], nh)
    return out


def load_hf_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], VisionEncoderConfig]:
    """``(HF state dict, our config)`` of a SigLIP folder (config.json + safetensors)."""
    return load_encoder_folder(path, config_from_hf)


def import_hf(model: VisionEncoder, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load HF SigLIP weights (a folder or a state dict) into ``model`` at any TP; a folder's
    config must match ``model.cfg``."""
    import_encoder(model, source, config_from_hf, hf_to_megatron)
