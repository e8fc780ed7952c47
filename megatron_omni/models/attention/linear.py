"""Lightning linear attention layer ('L' in model.layer_pattern), as in MiniCPM-SALA.

    q, k, v = QK-norm(x W_qkv);  q, k = RoPE(q), RoPE(k)          HyPE: RoPE after the QK norm
    S_t = exp(-s_h) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d)   per-head decay slopes s_h
    y   = o_proj(RMSNorm_{heads·d}(o) * sigmoid(x W_gate))

The recurrence runs in the op model.kernels picks (kernel_ops.py: the chunked Triton kernel on
GPU, its chunked PyTorch counterpart on CPU), with states restarting at the sample boundaries of
a packed batch. Under tensor parallelism each rank holds whole heads and their slopes; the output
RMSNorm spans all heads, so its per-token sum of squares is all-reduced over the TP group
(HeadsRMSNorm): every TP size computes the TP=1 result.
"""
from __future__ import annotations

import copy

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel import (copy_to_tensor_model_parallel_region,
                                           reduce_from_tensor_model_parallel_region)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import (ensure_metadata_has_dp_cp_group,
                                             make_sharded_tensors_for_checkpoint)
from megatron.core.utils import get_tensor_model_parallel_group_if_none
from omni_kernels.lightning import alibi_slopes, minimax_slopes

from megatron_omni.config.schema import LinearAttentionConfig
from megatron_omni.models.attention.gated import (GatedAttentionSubmodules, GatedSelfAttention,
                                                  KernelCoreAttention, packed_cu_seqlens)
from megatron_omni.models.attention.kernel_ops import kernel_ops
from megatron_omni.parallel.context_parallel import cp_packed_cu_seqlens, lightning_cp


def decay_slopes(settings: LinearAttentionConfig, num_heads: int,
                 layer: tuple[int, int]) -> torch.Tensor:
    """Slopes s_h [num_heads] of all heads: ALiBi, or MiniMax scaled for linear layer
    layer[0] of layer[1] (counted over the linear layers only)."""
    if settings.slopes == "alibi":
        return alibi_slopes(num_heads)
    if settings.slopes == "minimax":
        return minimax_slopes(num_heads, *layer)
    raise ValueError(f"model.linear.slopes={settings.slopes!r}; use alibi or minimax")


class LightningCoreAttention(KernelCoreAttention):
    """Core attention with megatron's core_attention constructor signature (plus `settings`,
    `decay_layer` and `kernels` (model.kernels), bound in the layer spec). Takes this TP rank's
    q [s, b, Hq, d] and k/v [s, b, Hkv, d] (after RoPE) and returns [s, b, Hq·d]; K/V heads are repeated over their
    query group for the kernel. Under context parallelism the recurrence is carried across
    CP ranks by ``lightning_cp`` (LASP-2 style state all-gather, load-balanced layout)."""

    kind = "Lightning"

    def __init__(self, config: TransformerConfig, *args, settings: LinearAttentionConfig,
                 decay_layer: tuple[int, int] = (0, 1), kernels: str = "auto", pg_collection=None,
                 **kwargs):
        super().__init__(config, *args, pg_collection=pg_collection, **kwargs)
        self.ops = kernel_ops(kernels)
        tp_group = get_tensor_model_parallel_group_if_none(
            None if pg_collection is None else pg_collection.tp)
        local = config.num_attention_heads // tp_group.size()
        first = tp_group.rank() * local  # ranks hold consecutive heads
        slopes = decay_slopes(settings, config.num_attention_heads, decay_layer)
        self.register_buffer("slopes", slopes[first:first + local].clone(), persistent=False)
        self.chunk_size = settings.chunk_size

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        s, b, n, d = query.shape
        if key.shape[2] != n:
            key, value = (t.repeat_interleave(n // key.shape[2], dim=2) for t in (key, value))
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # megatron sbhd -> kernel bshd
        if self.cp_group is not None and self.cp_group.size() > 1:
            cu_seqlens = cp_packed_cu_seqlens(packed_seq_params, b, "Lightning attention")
            out = lightning_cp(self.ops.lightning_attn, q, k, v, self.slopes, self.cp_group,
                               cu_seqlens, scale=self.scale, chunk_size=self.chunk_size)
            return out.transpose(0, 1).reshape(s, b, n * d)
        out, _ = self.ops.lightning_attn(q, k, v, self.slopes, scale=self.scale,
                                         cu_seqlens=packed_cu_seqlens(packed_seq_params, b),
                                         chunk_size=self.chunk_size)
        return out.transpose(0, 1).reshape(s, b, n * d)


class HeadsRMSNorm(torch.nn.Module):
    """RMSNorm over a token's whole heads·head_dim output while the heads are split over the TP
    ranks: y = w * x / sqrt(sum_over_all_ranks(x^2) / (heads·head_dim) + eps), in float32.

    The weight is this rank's slice [heads·head_dim / TP] (TP-sharded along dim 0 in checkpoints,
    gradient local to the rank). The sum of squares is all-reduced over the TP group.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6,
                 tp_group: torch.distributed.ProcessGroup | None = None):
        super().__init__()
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        self.hidden_size, self.eps = hidden_size, eps
        local = hidden_size // self.tp_group.size()
        self.weight = torch.nn.Parameter(torch.ones(local, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        sum_sq = x32.pow(2).sum(-1, keepdim=True)
        if self.tp_group.size() > 1:  # every rank's output depends on every rank's partial sum:
            # all-reduce forward (reduce_from) and backward (copy_to)
            sum_sq = copy_to_tensor_model_parallel_region(
                reduce_from_tensor_model_parallel_region(sum_sq, self.tp_group), self.tp_group)
        x32 = x32 * torch.rsqrt(sum_sq / self.hidden_size + self.eps)
        return self.weight * x32.to(dtype)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """The weight as a TP-sharded tensor (axis 0), so checkpoints reshard across TP sizes."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True), prefix, {"weight": 0}, sharded_offsets,
            tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"])


class LightningAttention(GatedSelfAttention):
    """The linear layer: GatedSelfAttention with RoPE after the QK norm, LightningCoreAttention,
    HeadsRMSNorm as out_norm and an optional output gate.

    `num_query_groups` sets this layer's K/V heads (None: one per query head, as SALA's Lightning
    layers); linear_qkv keeps the dense layer's group-interleaved layout for that head count.
    """

    trainable_group = "linear_attention"  # training/freeze.py: HALO distillation trains these first

    def __init__(self, config: TransformerConfig, submodules: GatedAttentionSubmodules,
                 layer_number: int, attn_mask_type: AttnMaskType = AttnMaskType.causal,
                 cp_comm_type: str | None = None, pg_collection=None,
                 num_query_groups: int | None = None):
        if submodules.out_norm is None:
            raise ValueError("LightningAttention needs an out_norm submodule (HeadsRMSNorm)")
        groups = num_query_groups or config.num_attention_heads
        if groups != config.num_query_groups:
            config = copy.copy(config)
            config.num_query_groups = groups
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         attn_mask_type=attn_mask_type, cp_comm_type=cp_comm_type,
                         pg_collection=pg_collection)

    def position_encode(self, query: torch.Tensor, key: torch.Tensor, rotary_pos_emb,
                        cu_seqlens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE on q/k [s, b, heads, d]; with `cu_seqlens` (thd packing) positions restart at
        each packed sample."""
        if rotary_pos_emb is None:
            raise ValueError("Lightning layers apply RoPE: build the model with "
                             "position_embedding_type='rope'")
        q_emb, k_emb = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb,) * 2

        def rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
            if cu_seqlens is None:
                return apply_rotary_pos_emb(x, freqs, config=self.config,
                                            cp_group=self.pg_collection.cp)
            # megatron's packed (thd) RoPE wants [t, heads, d]: drop the batch dim of size 1
            return apply_rotary_pos_emb(x[:, 0], freqs, config=self.config, cu_seqlens=cu_seqlens,
                                        cp_group=self.pg_collection.cp)[:, None]

        return rope(query, q_emb), rope(key, k_emb)
