"""megatron-core layer specs shared by the decoder and the encoders: a pre-norm transformer layer
around a self-attention spec, with a two-linear (optionally gated) MLP."""
from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_omni.models.attention.sdpa import SDPAttention


def sdpa_self_attention_spec(mask_type: AttnMaskType, qk_norm: type | None = None) -> ModuleSpec:
    """megatron's SelfAttention with tensor-parallel qkv / output linears and our SDPA core;
    ``qk_norm``: the per-head norm of queries and keys (None: no QK norm)."""
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": mask_type},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=SDPAttention,
            linear_proj=RowParallelLinear,
            q_layernorm=qk_norm,
            k_layernorm=qk_norm,
        ),
    )


def pre_norm_layer_spec(norm: type, self_attention: ModuleSpec) -> ModuleSpec:
    """x + attention(norm(x)), then x + mlp(norm(x)); the MLP is fc1 (column-parallel) →
    activation (gated when the config says gated_linear_unit) → fc2 (row-parallel)."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=self_attention,
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(
                linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )
