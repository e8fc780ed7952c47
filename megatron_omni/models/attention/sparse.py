"""InfLLM-V2 sparse attention layer ('S' in model.layer_pattern), as in MiniCPM4 / MiniCPM-SALA.

The dense layer's parameters (plus an optional output gate), no rotary embedding (NoPE under
HyPE), dense causal attention for samples with fewer than ``dense_len`` tokens and block-sparse
attention above, through ``omni_kernels.infllmv2`` (Triton on GPU, its interpreter on CPU).
"""
from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from omni_kernels.infllmv2 import infllmv2_attention

from megatron_omni.config.schema import SparseAttentionConfig
from megatron_omni.models.attention.gated import GatedSelfAttention, packed_cu_seqlens


class InfLLMv2CoreAttention(MegatronModule):
    """Core attention with megatron's core_attention constructor signature (plus `settings`,
    bound in the layer spec). Takes this TP rank's q [s, b, Hq, d] and k/v [s, b, Hkv, d] and
    returns [s, b, Hq·d]; GQA groups stay whole on a rank, so each group selects its own blocks.
    Context parallelism is to hook in here: all-gather k/v over the CP group and pass this rank's
    global ``position_offset`` to the kernel."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection=None, *, settings: SparseAttentionConfig):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("InfLLM-V2 layers have no context parallelism yet; set parallel.cp=1")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout > 0:
            raise ValueError(f"InfLLM-V2 layers have no attention dropout; set "
                             f"model.attention_dropout=0 (got {dropout})")
        self.settings = settings
        self.scale = softmax_scale

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        s, b, n, d = query.shape
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # megatron sbhd -> kernel bshd
        st = self.settings
        out = infllmv2_attention(
            q, k, v, dense_len=st.dense_len, block_size=st.block_size, topk=st.topk,
            init_blocks=st.init_blocks, local_blocks=st.local_blocks, kernel_size=st.kernel_size,
            kernel_stride=st.kernel_stride, cu_seqlens=packed_cu_seqlens(packed_seq_params, b),
            scale=self.scale)
        return out.transpose(0, 1).reshape(s, b, n * d)


class InfLLMv2Attention(GatedSelfAttention):
    """The sparse layer: GatedSelfAttention with InfLLMv2CoreAttention, no output norm, NoPE
    (the rotary embedding the decoder passes in is ignored) and an optional output gate."""
