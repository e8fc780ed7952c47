"""Dense causal attention on torch.nn.functional.scaled_dot_product_attention.

A drop-in ``core_attention`` for megatron-core's SelfAttention: it receives the projected (and
rotated) query/key/value in megatron's [s, b, heads, head_dim] layout and returns
[s, b, heads * head_dim]. SDPA picks flash / memory-efficient kernels on GPU and never
materialises the s x s scores there, unlike megatron's local DotProductAttention.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


def packed_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean [total, total] mask, True where a query may attend: same sample and causal."""
    seq_id = torch.bucketize(torch.arange(total, device=cu_seqlens.device), cu_seqlens[1:], right=True)
    same = seq_id[:, None] == seq_id[None, :]
    return same & torch.ones(total, total, dtype=torch.bool, device=cu_seqlens.device).tril()


class SDPAttention(MegatronModule):
    """Core attention (GQA aware) with megatron's core_attention constructor signature."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(
                "SDPAttention has no context parallelism; set parallel.cp=1 for dense attention")
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None):
        if attention_bias is not None:
            raise ValueError("SDPAttention does not take an attention_bias")
        s, b, n, d = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        mask, causal = None, (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal
        if packed_seq_params is not None:
            mask, causal = packed_causal_mask(packed_seq_params.cu_seqlens_q, s), False
        elif attention_mask is not None:
            mask, causal = ~attention_mask, False  # megatron: True = masked out
        dropout = self.dropout_p if self.training else 0.0
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.scale,
                enable_gqa=k.shape[1] != n)
        return out.permute(2, 0, 1, 3).reshape(s, b, n * d)

