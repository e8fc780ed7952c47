"""The frame shared by the sparse (InfLLM-V2) and linear (Lightning) attention layers.

    q, k, v = QK-norm(linear_qkv(x))                     megatron's SelfAttention projection
    q, k    = position_encode(q, k)                      NoPE (sparse) or RoPE (linear)
    o       = core_attention(q, k, v)                    InfLLM-V2 or Lightning kernel
    o       = out_norm(o) * sigmoid(linear_gate(x))      both optional
    y       = linear_proj(o)

The parameters keep the dense layer's names (linear_qkv, linear_proj, q_layernorm, k_layernorm)
and layout, so dense weights copy over; linear_gate and out_norm are the only new ones. Tensor
and sequence parallelism come from the column/row-parallel linears (heads split over TP ranks,
each rank holding whole GQA groups). Training only: no inference KV cache, causal attention,
packed batches through ``packed_seq_params.cu_seqlens_q`` with batch size 1: qkv_format "thd"
restarts RoPE positions at each sample, "sbhd" keeps positions within the pack (the same
attention, as RoPE is relative; the layout packed context parallelism needs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.models.attention.core import CoreAttention


@dataclass
class GatedAttentionSubmodules(SelfAttentionSubmodules):
    """SelfAttention's slots plus an optional output gate and output norm."""

    linear_gate: ModuleSpec | type | None = None
    """Column-parallel hidden -> heads·head_dim gate projection; None = no gate."""
    out_norm: ModuleSpec | type | None = None
    """Norm of the core attention output [s, b, heads·head_dim] before the gate; None = none."""


def packed_cu_seqlens(packed_seq_params: PackedSeqParams | None, batch: int) -> torch.Tensor | None:
    """Sample offsets of a packed batch (None when not packed); packing needs batch size 1."""
    if packed_seq_params is None:
        return None
    if batch != 1:
        raise ValueError(f"a packed batch (packed_seq_params) must have batch size 1, got {batch}")
    return packed_seq_params.cu_seqlens_q


class KernelCoreAttention(CoreAttention):
    """Base of the Triton core attentions (InfLLMv2CoreAttention, LightningCoreAttention): the
    kernels take the softmax scale (None: 1/sqrt(d)) and have no attention dropout, so a
    dropout probability is refused."""

    kind = "Kernel"
    """The layer type named in errors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dropout_p > 0:
            raise ValueError(f"{self.kind} layers have no attention dropout; set "
                             f"model.attention_dropout=0 (got {self.dropout_p})")


class GatedSelfAttention(SelfAttention):
    """SelfAttention with a swappable position encoding (none here), an optional output norm and
    an optional sigmoid output gate. Subclasses: InfLLMv2Attention, LightningAttention."""

    def __init__(self, config: TransformerConfig, submodules: GatedAttentionSubmodules,
                 layer_number: int, attn_mask_type: AttnMaskType = AttnMaskType.causal,
                 cp_comm_type: str | None = None, pg_collection=None):
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"{type(self).__name__} is causal only, got {attn_mask_type}")
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         attn_mask_type=attn_mask_type, cp_comm_type=cp_comm_type,
                         pg_collection=pg_collection)
        self.linear_gate = None
        if submodules.linear_gate is not None:
            self.linear_gate = build_module(
                submodules.linear_gate, self.config.hidden_size, self.query_projection_size,
                config=self.config, init_method=self.config.init_method, gather_output=False,
                bias=False, skip_bias_add=False, is_expert=False, tp_comm_buffer_name="gate",
                tp_group=self.pg_collection.tp)
        self.out_norm = None
        if submodules.out_norm is not None:
            self.out_norm = build_module(
                submodules.out_norm, config=self.config, hidden_size=self.query_projection_size,
                eps=self.config.layernorm_epsilon, tp_group=self.pg_collection.tp)

    def position_encode(self, query: torch.Tensor, key: torch.Tensor, rotary_pos_emb,
                        cu_seqlens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of q/k [s, b, heads, d]; NoPE here (the rotary embedding is ignored)."""
        return query, key

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                key_value_states=None, inference_context=None, rotary_pos_emb=None,
                rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                attention_bias=None, packed_seq_params: PackedSeqParams | None = None,
                sequence_len_offset=None, *, inference_params=None):
        """hidden_states [s, b, hidden] (s/TP under sequence parallelism) -> (output, bias)."""
        if inference_context is not None or inference_params is not None:
            raise NotImplementedError(f"{type(self).__name__} has no inference (KV-cache) path")
        if attention_mask is not None or attention_bias is not None:
            raise ValueError(f"{type(self).__name__} is causal only: pass attention_mask=None and "
                             "packed_seq_params for packed samples")
        query, key, value = self.get_query_key_value_tensors(hidden_states)  # [s, b, heads, d]
        cu_seqlens = packed_cu_seqlens(packed_seq_params, query.shape[1])
        if packed_seq_params is not None and packed_seq_params.qkv_format != "thd":
            cu_seqlens = None  # sbhd packing: RoPE by position within the pack
        query, key = self.position_encode(query, key, rotary_pos_emb, cu_seqlens)
        if self.checkpoint_core_attention and self.training:  # training.recompute=selective
            out = self._checkpointed_attention_forward(query, key, value, None,
                                                       packed_seq_params=packed_seq_params)
        else:
            out = self.core_attention(query, key, value, None, packed_seq_params=packed_seq_params)
        if self.out_norm is not None:
            out = self.out_norm(out)
        if self.linear_gate is not None:
            gate, _ = self.linear_gate(hidden_states)
            out = (out.float() * torch.sigmoid(gate.float())).to(out.dtype)
        return self.linear_proj(out)
