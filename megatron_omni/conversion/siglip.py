"""SigLIP vision tower weights: Hugging Face → our VisionEncoder (models/encoders/vision.py).

Accepted inputs: a ``SiglipVisionModel`` state dict (bare keys, as transformers 5 saves it, or
under ``vision_model.``), a full ``SiglipModel`` (the text tower, ``logit_scale`` / ``logit_bias``
are ignored), or a folder with ``config.json`` and safetensors (e.g. a download of
google/siglip-so400m-patch14-384). The pooling ``head.*`` is dropped: our tower ends at
``post_layernorm``, matching HF's ``last_hidden_state``.

The mapping (HF under the found prefix → ours, full TP=1) is the table SIGLIP below, applied by
conversion/encoder_import.py: the patch embedding, positions and ``post_layernorm`` by name, each
layer's norms, ``out_proj`` and MLP by name, and ``self_attn.{q,k,v}_proj`` fused into
``linear_qkv``. Any TP: ``import_hf`` slices the tensor-parallel parameters for each rank.
"""
from __future__ import annotations

from transformers import SiglipVisionConfig

from megatron_omni.config.encoders import VisionEncoderConfig
from megatron_omni.conversion.common import ConversionError
from megatron_omni.conversion.encoder_import import EncoderMapping


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


def _tower(cfg: VisionEncoderConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    h, p = cfg.hidden_size, cfg.patch_size
    return {"patch_embed.weight": ("embeddings.patch_embedding.weight", (h, cfg.num_channels, p, p)),
            "patch_embed.bias": ("embeddings.patch_embedding.bias", (h,)),
            "position_embedding": ("embeddings.position_embedding.weight", (cfg.num_patches, h)),
            "transformer.final_layernorm.weight": ("post_layernorm.weight", (h,)),
            "transformer.final_layernorm.bias": ("post_layernorm.bias", (h,))}


SIGLIP = EncoderMapping(
    what="SigLIP vision tower", anchor="embeddings.patch_embedding.weight", exclude="text_model",
    config_from_hf=config_from_hf, tower=_tower, layer_prefix="encoder.layers.{i}.",
    layer={"input_layernorm.weight": "layer_norm1.weight", "input_layernorm.bias": "layer_norm1.bias",
           "self_attention.linear_proj.weight": "self_attn.out_proj.weight",
           "self_attention.linear_proj.bias": "self_attn.out_proj.bias",
           "pre_mlp_layernorm.weight": "layer_norm2.weight", "pre_mlp_layernorm.bias": "layer_norm2.bias",
           "mlp.linear_fc1.weight": "mlp.fc1.weight", "mlp.linear_fc1.bias": "mlp.fc1.bias",
           "mlp.linear_fc2.weight": "mlp.fc2.weight", "mlp.linear_fc2.bias": "mlp.fc2.bias"},
    qkv="self_attn.{}_proj", dropped="head.")  # the pooling head: our tower ends at post_layernorm
hf_to_megatron, load_hf_folder, import_hf = SIGLIP.hf_to_megatron, SIGLIP.load_hf_folder, SIGLIP.import_hf
