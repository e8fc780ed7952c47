"""Dense causal attention on torch.nn.functional.scaled_dot_product_attention.

A drop-in ``core_attention`` for megatron-core's SelfAttention: it receives the projected (and
rotated) query/key/value in megatron's [s, b, heads, head_dim] layout and returns
[s, b, heads * head_dim]. SDPA picks flash / memory-efficient kernels on GPU and never
materialises the s x s scores there, unlike megatron's local DotProductAttention. Under context
parallelism it all-gathers K/V over the CP group and attends with global causal positions.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.models.attention.core import CoreAttention
from megatron_omni.parallel.context_parallel import (cp_packed_cu_seqlens, gather_sequence,
                                                     local_chunks, sample_ids)


def packed_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Boolean [total, total] mask, True where a query may attend: same sample and causal."""
    seq_id = sample_ids(cu_seqlens, total)
    same = seq_id[:, None] == seq_id[None, :]
    return same & torch.ones(total, total, dtype=torch.bool, device=cu_seqlens.device).tril()


class SDPAttention(CoreAttention):
    """Core attention (GQA aware) with megatron's core_attention constructor signature; the
    softmax scale defaults to 1/sqrt(kv_channels)."""

    def __init__(self, config: TransformerConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if self.scale is None:
            self.scale = 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None):
        if attention_bias is not None:
            raise ValueError("SDPAttention does not take an attention_bias")
        s, b, n, d = query.shape
        if self.cp_group is not None and self.cp_group.size() > 1:
            return self._forward_cp(query, key, value, attention_mask, attn_mask_type,
                                    packed_seq_params)
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

    def _forward_cp(self, query, key, value, attention_mask, attn_mask_type, packed_seq_params):
        """Context parallel (load-balanced layout, see megatron_omni.parallel.context_parallel):
        all-gather K/V over the CP group; each of this rank's two query chunks attends the keys
        up to its end, causal by global position (and within its sample when packed)."""
        cu_seqlens = cp_packed_cu_seqlens(packed_seq_params, query.shape[1], "SDPAttention")
        causal = (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal
        if attention_mask is not None or not causal:
            raise NotImplementedError("SDPAttention with context parallelism is causal only "
                                      "(no attention_mask)")
        s, b, n, d = query.shape
        group = self.cp_group
        key, value = (gather_sequence(t, 0, group) for t in (key, value))  # [T, b, hkv, d]
        chunk = s // 2
        seq_id = None if cu_seqlens is None else sample_ids(cu_seqlens, key.shape[0]).to(query.device)
        dropout = self.dropout_p if self.training else 0.0
        outs = []
        for i, c in enumerate(local_chunks(group.size(), group.rank())):
            start, end = c * chunk, (c + 1) * chunk
            q = query[i * chunk:(i + 1) * chunk].permute(1, 2, 0, 3)
            k, v = (t[:end].permute(1, 2, 0, 3) for t in (key, value))
            # query row i (global start + i) sees keys j <= start + i: bottom-right causal
            mask = (torch.arange(end, device=q.device)[None, :]
                    <= torch.arange(start, end, device=q.device)[:, None])
            if seq_id is not None:
                mask = mask & (seq_id[None, :end] == seq_id[start:end, None])
            fork = tensor_parallel.get_cuda_rng_tracker().fork
            with fork() if dropout > 0 else contextlib.nullcontext():
                outs.append(F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale,
                    enable_gqa=k.shape[1] != n))
        out = torch.cat(outs, dim=2)  # [b, heads, s, d]
        return out.permute(2, 0, 1, 3).reshape(s, b, n * d)
