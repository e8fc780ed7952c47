"""Layer specs for the Qwen3-style decoder: one builder, two backends.

Local backend (works everywhere, CPU included): megatron's ColumnParallelLinear/RowParallelLinear,
our SDPA core attention and our sequence-parallel RMSNorm. Transformer-engine backend (chosen
automatically when TE imports): megatron's TE spec with fused norm+linear and TE attention.
"""
from __future__ import annotations

import functools

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer, TransformerLayerSubmodules, get_transformer_layer_offset)

from megatron_omni.models.attention.sdpa import SDPAttention
from megatron_omni.models.norm import RMSNorm


@functools.cache
def te_available() -> bool:
    """True when transformer-engine imports (it needs CUDA)."""
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _  # noqa: F401
    except Exception:  # TE raises various errors without CUDA or on a version mismatch
        return False
    return True


def resolve_backend(backend: str) -> str:
    """'auto' → 'te' when transformer-engine imports, else 'local'."""
    if backend == "auto":
        return "te" if te_available() else "local"
    if backend == "te" and not te_available():
        raise RuntimeError("model.backend='te' but transformer-engine does not import here; "
                           "install transformer-engine (GPU only) or set model.backend=local")
    return backend


def dense_layer_spec(backend: str) -> ModuleSpec:
    """One Qwen3 decoder layer: pre-norm GQA self-attention with per-head QK RMSNorm, SwiGLU MLP."""
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=SDPAttention,
                    linear_proj=RowParallelLinear,
                    q_layernorm=RMSNorm,
                    k_layernorm=RMSNorm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(
                linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def decoder_block_spec(config: TransformerConfig, backend: str,
                       vp_stage: int | None = None) -> TransformerBlockSubmodules:
    """The layers this pipeline stage (and virtual stage) builds, plus the final norm."""
    layer_specs = [dense_layer_spec(backend)] * config.num_layers
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    if backend == "te":
        from megatron.core.extensions.transformer_engine import TENorm as final_norm
    else:
        final_norm = RMSNorm
    return TransformerBlockSubmodules(layer_specs=layer_specs[offset:offset + count], layer_norm=final_norm)
