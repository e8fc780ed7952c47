"""The transformer layers and the tower base (EncoderTower) shared by our encoders (SigLIP- and
Whisper-shaped), on megatron-core.

One pre-LN encoder layer::

    x = x + proj(attention(qkv(LayerNorm(x))))      non-causal (AttnMaskType.no_mask), biased
    x = x + fc2(act(fc1(LayerNorm(x))))             biased, no gating

qkv / fc1 are ColumnParallelLinear and proj / fc2 RowParallelLinear, so tensor parallelism splits
heads and the MLP's hidden dimension; our SDPAttention is the core attention. The norms are
megatron's WrappedTorchNorm, i.e. ``torch.nn.LayerNorm`` with weight and bias — exactly HF's
``nn.LayerNorm``, so the encoders stay fp32-exact against transformers. Encoders run before the
LLM's sequence-parallel split and never use sequence parallelism (WrappedTorchNorm asserts it).

Parameter names under an encoder's ``transformer.``::

    layers.L.{input_layernorm, pre_mlp_layernorm}.{weight, bias}
    layers.L.self_attention.linear_qkv.{weight, bias}   per head [q_h; k_h; v_h]
    layers.L.self_attention.linear_proj.{weight, bias}
    layers.L.mlp.linear_fc{1,2}.{weight, bias}
    final_layernorm.{weight, bias}
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from megatron.core import parallel_state
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.models.layer_spec import pre_norm_layer_spec, sdpa_self_attention_spec
from megatron_omni.models.transformer_config import base_transformer_config


class EncoderShape(Protocol):
    """The fields of an encoder config (VisionEncoderConfig, AudioEncoderConfig) that shape its
    transformer layers."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    layer_norm_eps: float


def encoder_layer_spec() -> ModuleSpec:
    """One pre-LN, non-causal encoder layer with biased linears and a plain (non-gated) MLP (the
    biases and the ungated MLP come from encoder_transformer_config)."""
    return pre_norm_layer_spec(WrappedTorchNorm, sdpa_self_attention_spec(AttnMaskType.no_mask))


def encoder_block_spec(num_layers: int) -> TransformerBlockSubmodules:
    """All ``num_layers`` layers plus a final LayerNorm (encoders are never pipeline-split: they
    live on the first pipeline stage)."""
    return TransformerBlockSubmodules(layer_specs=[encoder_layer_spec()] * num_layers,
                                      layer_norm=WrappedTorchNorm)


def encoder_transformer_config(shape: EncoderShape, activation_func: Callable, *,
                               tensor_model_parallel_size: int | None = None,
                               params_dtype: torch.dtype = torch.float32, **overrides) -> TransformerConfig:
    """megatron-core's TransformerConfig for an encoder tower of the given ``shape``.

    No GQA (``num_query_groups = num_attention_heads``), biases on every linear, LayerNorm, no
    sequence or pipeline parallelism, no bias-activation fusion (megatron's fused bias-GELU is the
    tanh approximation, which would change Whisper's exact-erf GELU). ``tensor_model_parallel_size``
    defaults to the size of megatron's TP group (1 when parallel_state is not initialised).
    ``overrides`` go to TransformerConfig unchanged (e.g. dropout, recompute settings).
    """
    if tensor_model_parallel_size is None:
        tensor_model_parallel_size = (parallel_state.get_tensor_model_parallel_world_size()
                                      if parallel_state.model_parallel_is_initialized() else 1)
    fields = dict(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_attention_heads,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=1,
        sequence_parallel=False,
        normalization="LayerNorm",
        layernorm_epsilon=shape.layer_norm_eps,
        activation_func=activation_func,
        gated_linear_unit=False,
        add_bias_linear=True,
        add_qkv_bias=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return base_transformer_config(params_dtype, **{**fields, **overrides})


def check_encoder_config(config: TransformerConfig, shape: EncoderShape, name: str) -> None:
    """Raise ValueError when a caller-supplied TransformerConfig disagrees with the encoder's
    ``shape`` or asks for a feature the encoder layer does not have."""
    wrong = [f"{field}={getattr(config, field)} (expected {want})" for field, want in (
        ("num_layers", shape.num_layers), ("hidden_size", shape.hidden_size),
        ("num_attention_heads", shape.num_attention_heads), ("num_query_groups", shape.num_attention_heads),
        ("ffn_hidden_size", shape.ffn_hidden_size), ("normalization", "LayerNorm"),
        ("add_bias_linear", True), ("gated_linear_unit", False), ("sequence_parallel", False),
        ("pipeline_model_parallel_size", 1)) if getattr(config, field) != want]
    if wrong:
        raise ValueError(f"{name}: TransformerConfig does not fit the encoder: " + ", ".join(wrong)
                         + "; build it with encoder_transformer_config()")


class EncoderTower(MegatronModule):
    """Base of VisionEncoder and AudioEncoder: checks ``config`` against the encoder config
    ``cfg``, builds the subclass's input layers (``build_inputs``), then the transformer block;
    ``encode`` runs that block on batch-first tokens."""

    def __init__(self, cfg: EncoderShape, config: TransformerConfig):
        check_encoder_config(config, cfg, name=type(self).__name__)
        super().__init__(config=config)
        self.cfg = cfg
        self.build_inputs(cfg, config)
        self.transformer = TransformerBlock(config, encoder_block_spec(cfg.num_layers),
                                            pre_process=True, post_process=True)

    def build_inputs(self, cfg: EncoderShape, config: TransformerConfig) -> None:
        """Create the layers in front of the transformer (built first, so their initialisation
        draws from the RNG before the transformer's)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[b, L, hidden]`` through the transformer block → ``[b, L, hidden]``."""
        x = self.transformer(x.transpose(0, 1).contiguous(), attention_mask=None)  # [L, b, hidden]
        return x.transpose(0, 1)
