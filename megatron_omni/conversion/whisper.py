"""Whisper encoder weights: Hugging Face → our AudioEncoder (models/encoders/audio.py).

Accepted inputs: a ``WhisperEncoder`` state dict (bare keys), a ``WhisperModel`` (``encoder.``)
or ``WhisperForConditionalGeneration`` (``model.encoder.``; the decoder is ignored), or a folder
with ``config.json`` and safetensors (e.g. a download of openai/whisper-medium).

The mapping (HF under the found prefix → ours, full TP=1) is the table WHISPER below, applied by
conversion/encoder_import.py: the convolutions, ``embed_positions`` (a buffer: Whisper's
sinusoids) and the final ``layer_norm`` by name, each layer's norms, ``out_proj`` and ``fc1/fc2``
by name, and ``self_attn.{q,k,v}_proj`` fused into ``linear_qkv`` (Whisper's k projection has no
bias: its part of the fused bias is zero). Any TP: ``import_hf`` slices the tensor-parallel
parameters for each rank.
"""
from __future__ import annotations

from transformers import WhisperConfig

from megatron_omni.config.encoders import AudioEncoderConfig
from megatron_omni.conversion.common import ConversionError
from megatron_omni.conversion.encoder_import import EncoderMapping


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


def _tower(cfg: AudioEncoderConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    h = cfg.hidden_size
    return {"conv1.weight": ("conv1.weight", (h, cfg.num_mel_bins, 3)), "conv1.bias": ("conv1.bias", (h,)),
            "conv2.weight": ("conv2.weight", (h, h, 3)), "conv2.bias": ("conv2.bias", (h,)),
            "embed_positions": ("embed_positions.weight", (cfg.max_source_positions, h)),
            "transformer.final_layernorm.weight": ("layer_norm.weight", (h,)),
            "transformer.final_layernorm.bias": ("layer_norm.bias", (h,))}


WHISPER = EncoderMapping(
    what="Whisper encoder", anchor="conv1.weight", exclude="decoder",
    config_from_hf=config_from_hf, tower=_tower, layer_prefix="layers.{i}.",
    layer={"input_layernorm.weight": "self_attn_layer_norm.weight",
           "input_layernorm.bias": "self_attn_layer_norm.bias",
           "self_attention.linear_proj.weight": "self_attn.out_proj.weight",
           "self_attention.linear_proj.bias": "self_attn.out_proj.bias",
           "pre_mlp_layernorm.weight": "final_layer_norm.weight",
           "pre_mlp_layernorm.bias": "final_layer_norm.bias",
           "mlp.linear_fc1.weight": "fc1.weight", "mlp.linear_fc1.bias": "fc1.bias",
           "mlp.linear_fc2.weight": "fc2.weight", "mlp.linear_fc2.bias": "fc2.bias"},
    qkv="self_attn.{}_proj", k_bias=False)
hf_to_megatron, load_hf_folder, import_hf = WHISPER.hf_to_megatron, WHISPER.load_hf_folder, WHISPER.import_hf
