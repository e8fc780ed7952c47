"""Layer specs for the Qwen3-style decoder: one builder, two backends, three attention types.

Local backend (works everywhere, CPU included): megatron's ColumnParallelLinear/RowParallelLinear,
our SDPA core attention and our sequence-parallel RMSNorm. Transformer-engine backend (what
model.backend=auto picks on a CUDA machine where TE imports: megatron_omni/platform/backend.py):
megatron's TE spec with fused norm+linear and TE attention.

``model.layer_pattern`` picks each layer's attention: D dense (the layer above), S sparse
(InfLLM-V2) or L linear (Lightning). S and L layers are built from local modules under either
backend (their cores call the ops model.kernels picks: models/attention/kernel_ops.py); they
differ from D only in the self_attention slot.
"""
from __future__ import annotations

import functools

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_omni.config.schema import LinearAttentionConfig, ModelConfig, SparseAttentionConfig
from megatron_omni.models.attention.gated import GatedAttentionSubmodules
from megatron_omni.models.attention.linear import (HeadsRMSNorm, LightningAttention,
                                                  LightningCoreAttention)
from megatron_omni.models.attention.sparse import InfLLMv2Attention, InfLLMv2CoreAttention
from megatron_omni.models.layer_spec import pre_norm_layer_spec, sdpa_self_attention_spec
from megatron_omni.models.norm import RMSNorm


def dense_layer_spec(backend: str) -> ModuleSpec:
    """One Qwen3 decoder layer: pre-norm GQA self-attention with per-head QK RMSNorm, SwiGLU MLP."""
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return pre_norm_layer_spec(RMSNorm, sdpa_self_attention_spec(AttnMaskType.causal, RMSNorm))


def sparse_layer_spec(settings: SparseAttentionConfig, kernels: str = "auto") -> ModuleSpec:
    """A decoder layer whose attention is InfLLM-V2 (NoPE, the dense layer's parameters, an
    optional output gate); `kernels` is model.kernels."""
    return pre_norm_layer_spec(RMSNorm, ModuleSpec(
        module=InfLLMv2Attention,
        submodules=GatedAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=functools.partial(InfLLMv2CoreAttention, settings=settings,
                                             kernels=kernels),
            linear_proj=RowParallelLinear,
            q_layernorm=RMSNorm,
            k_layernorm=RMSNorm,
            linear_gate=ColumnParallelLinear if settings.output_gate else None,
        ),
    ))


def linear_layer_spec(settings: LinearAttentionConfig, linear_index: int = 0,
                      num_linear: int = 1, kernels: str = "auto") -> ModuleSpec:
    """A decoder layer whose attention is Lightning; `linear_index` of `num_linear` counts the
    linear layers only (it sets the MiniMax decay scaling); `kernels` is model.kernels."""
    return pre_norm_layer_spec(RMSNorm, ModuleSpec(
        module=LightningAttention,
        params={"num_query_groups": settings.num_query_groups},
        submodules=GatedAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=functools.partial(LightningCoreAttention, settings=settings,
                                             decay_layer=(linear_index, num_linear),
                                             kernels=kernels),
            linear_proj=RowParallelLinear,
            q_layernorm=RMSNorm,
            k_layernorm=RMSNorm,
            linear_gate=ColumnParallelLinear if settings.output_gate else None,
            out_norm=HeadsRMSNorm,
        ),
    ))


def layer_specs(model: ModelConfig | None, num_layers: int, backend: str) -> list[ModuleSpec]:
    """One spec per layer of the whole decoder, by model.layer_pattern (all dense for None)."""
    pattern = "D" * num_layers if model is None else model.layer_types()
    if len(pattern) != num_layers or set(pattern) - set("DSL"):
        raise ValueError(f"model.layer_pattern={pattern!r} must have one of D, S, L for each of "
                         f"the {num_layers} layers")
    specs = []
    for i, letter in enumerate(pattern):
        if letter == "D":
            specs.append(dense_layer_spec(backend))
        elif letter == "S":
            specs.append(sparse_layer_spec(model.sparse, model.kernels))
        else:
            specs.append(linear_layer_spec(model.linear, pattern[:i].count("L"), pattern.count("L"),
                                           model.kernels))
    return specs


def decoder_block_spec(config: TransformerConfig, backend: str, vp_stage: int | None = None,
                       model: ModelConfig | None = None) -> TransformerBlockSubmodules:
    """The layers this pipeline stage (and virtual stage) builds, plus the final norm; `model`
    gives the layer pattern and the sparse/linear settings (None: all dense)."""
    specs = layer_specs(model, config.num_layers, backend)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm as final_norm
    else:
        final_norm = RMSNorm
    return TransformerBlockSubmodules(layer_specs=specs[offset:offset + count], layer_norm=final_norm)
