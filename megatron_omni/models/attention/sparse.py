"""InfLLM-V2 sparse attention layer ('S' in model.layer_pattern), as in MiniCPM4 / MiniCPM-SALA.

The dense layer's parameters (plus an optional output gate), no rotary embedding (NoPE under
HyPE), dense causal attention for samples with fewer than ``dense_len`` tokens and block-sparse
attention above, through the op model.kernels picks (kernel_ops.py: the Triton op on GPU, its
PyTorch counterpart on CPU).
"""
from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_omni.config.schema import SparseAttentionConfig
from megatron_omni.models.attention.gated import (GatedSelfAttention, KernelCoreAttention,
                                                  packed_cu_seqlens)
from megatron_omni.models.attention.kernel_ops import kernel_ops
from megatron_omni.parallel.context_parallel import cp_packed_cu_seqlens, gather_sequence, local_chunks


class InfLLMv2CoreAttention(KernelCoreAttention):
    """Core attention with megatron's core_attention constructor signature (plus `settings` and
    `kernels` (model.kernels), bound in the layer spec). Takes this TP rank's q [s, b, Hq, d]
    and k/v [s, b, Hkv, d] and returns [s, b, Hq·d]; GQA groups stay whole on a rank, so each
    group selects its own blocks. Under context parallelism (load-balanced layout, megatron_omni.parallel.context_parallel)
    k/v are all-gathered over the CP group and each of this rank's two query chunks runs the
    kernel against the keys up to its end with ``position_offset`` = the chunk's global start;
    dense-vs-sparse is decided by the global sequence length, as on one rank. Exact parity with
    one rank needs chunk starts on block boundaries (seq_length / (2·cp) a multiple of
    block_size: selection is per query block). Packed batches under CP (qkv_format sbhd) also
    gather q and run each sample piece separately (``_forward_cp_packed``)."""

    kind = "InfLLM-V2"

    def __init__(self, *args, settings: SparseAttentionConfig, kernels: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.ops = kernel_ops(kernels)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        s, b, n, d = query.shape
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # megatron sbhd -> kernel bshd
        st = self.settings
        if self.cp_group is not None and self.cp_group.size() > 1:
            return self._forward_cp(q, k, v, packed_seq_params).transpose(0, 1).reshape(s, b, n * d)
        out = self.ops.infllmv2_attention(
            q, k, v, dense_len=st.dense_len, block_size=st.block_size, topk=st.topk,
            init_blocks=st.init_blocks, local_blocks=st.local_blocks, kernel_size=st.kernel_size,
            kernel_stride=st.kernel_stride, cu_seqlens=packed_cu_seqlens(packed_seq_params, b),
            scale=self.scale)
        return out.transpose(0, 1).reshape(s, b, n * d)

    def _kernel(self, q, k, v, dense: bool, position_offset: int = 0) -> torch.Tensor:
        """The kernel on keys [0, position_offset + Tq) of one sequence, dense or sparse as
        decided by the caller (from the whole sequence's length)."""
        st = self.settings
        return self.ops.infllmv2_attention(
            q, k, v, dense_len=k.shape[1] + 1 if dense else 0, block_size=st.block_size,
            topk=st.topk, init_blocks=st.init_blocks, local_blocks=st.local_blocks,
            kernel_size=st.kernel_size, kernel_stride=st.kernel_stride,
            position_offset=position_offset, scale=self.scale)

    def _forward_cp(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    packed_seq_params) -> torch.Tensor:
        """q/k/v [b, 2n, heads, d] of this CP rank -> out [b, 2n, Hq, d]."""
        group, st = self.cp_group, self.settings
        cu_seqlens = cp_packed_cu_seqlens(packed_seq_params, q.shape[0], "InfLLM-V2 attention")
        k, v = (gather_sequence(t, 1, group) for t in (k, v))  # [b, T, Hkv, d], global order
        total, chunk = k.shape[1], q.shape[1] // 2
        if chunk % st.block_size and total >= st.dense_len:
            raise ValueError(
                f"InfLLM-V2 with context parallelism: each CP chunk (seq_length / (2*cp) = "
                f"{chunk}) must be a multiple of model.sparse.block_size={st.block_size} "
                "(block selection is per query block)")
        if cu_seqlens is not None:
            return self._forward_cp_packed(gather_sequence(q, 1, group), k, v, cu_seqlens.tolist())
        outs = []
        for i, c in enumerate(local_chunks(group.size(), group.rank())):
            end = (c + 1) * chunk
            # the kernel decides dense/sparse by the keys it sees; decide by the global length
            outs.append(self._kernel(q[:, i * chunk:(i + 1) * chunk], k[:, :end], v[:, :end],
                                     total < st.dense_len, c * chunk))
        return torch.cat(outs, dim=1)

    def _forward_cp_packed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           offsets: list[int]) -> torch.Tensor:
        """Packed batch (b = 1) under CP, from the gathered q/k/v [1, T, heads, d] in global
        order and the global sample offsets: for each piece [lo, hi) of a sample [a, e) inside
        one of this rank's chunks, the queries are widened to whole blocks counted from a (the
        single-rank query blocks, so the same blocks are selected), run against the sample's
        keys [a, widened end), and the piece's rows kept."""
        bs, group = self.settings.block_size, self.cp_group
        chunk = q.shape[1] // (2 * group.size())
        pieces = []
        for c in local_chunks(group.size(), group.rank()):
            start, end = c * chunk, (c + 1) * chunk
            for a, e in zip(offsets, offsets[1:]):
                lo, hi = max(a, start), min(e, end)
                if lo >= hi:
                    continue
                q_lo = a + (lo - a) // bs * bs
                q_hi = min(e, a + -(-(hi - a) // bs) * bs)
                out = self._kernel(q[:, q_lo:q_hi], k[:, a:q_hi], v[:, a:q_hi],
                                   e - a < self.settings.dense_len, q_lo - a)
                pieces.append(out[:, lo - q_lo:hi - q_lo])
        return torch.cat(pieces, dim=1)


class InfLLMv2Attention(GatedSelfAttention):
    """The sparse layer: GatedSelfAttention with InfLLMv2CoreAttention, no output norm, NoPE
    (the rotary embedding the decoder passes in is ignored) and an optional output gate."""
