"""The TMRoPE rotary embedding (Qwen2.5-Omni style): three position ids per token (temporal,
height, width) rotate three sections of the rotary head dimension, in megatron-core's ``mrope``
layout. The ids come with the batch; their rules and the span types live in
megatron_omni/contract/tmrope.py (shared with the data path).
"""
from __future__ import annotations

from typing import Sequence

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding


class TMRotaryEmbedding(torch.nn.Module):
    """Rotary frequencies for TMRoPE in megatron-core's layout ``[s, b, 1, rotary_dim]``, ready
    for megatron's ``apply_rotary_pos_emb`` (rotate-half, non-interleaved).

    Frequency pair i (of rotary_dim / 2; inv_freq_i = base^(-2i / rotary_dim)) is rotated by the
    temporal position for i < sections[0], the height position for the next sections[1], and the
    width position for the last sections[2] (megatron's MultimodalRotaryEmbedding, Qwen2-VL's
    mrope). Qwen2.5-Omni uses sections (16, 24, 24) for head_dim 128.

    Args:
        head_dim: the attention head size (kv_channels).
        sections: (t, h, w) frequency pairs per axis; must sum to rotary_dim / 2.
        rotary_base: RoPE theta.
        rotary_percent: fraction of head_dim that is rotated (rotary_dim = head_dim * percent).
    """

    def __init__(self, head_dim: int, sections: Sequence[int], rotary_base: float = 10000.0,
                 rotary_percent: float = 1.0):
        super().__init__()
        rotary_dim = int(head_dim * rotary_percent) if rotary_percent < 1.0 else head_dim
        if len(sections) != 3 or min(sections) < 0 or 2 * sum(sections) != rotary_dim:
            raise ValueError(f"mrope sections {tuple(sections)} must be three non-negative counts summing to "
                             f"rotary_dim / 2 = {rotary_dim // 2} (e.g. {default_sections(rotary_dim)})")
        self.sections = list(sections)
        self.rope = MultimodalRotaryEmbedding(kv_channels=head_dim, rotary_percent=rotary_percent,
                                              rotary_base=rotary_base)
        # megatron's module keeps the CP group and slices its output for the CP layout; the ids
        # given here are already this CP rank's (training/step.py splits them), so never re-slice
        self.rope.cp_group = None

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """``[3, b, s]`` TMRoPE ids, or ``[b, s]`` 1-D positions → ``[s, b, 1, rotary_dim]``, one
        row per id given (under context parallelism: this rank's ids, in their local order)."""
        if position_ids.dim() == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        if position_ids.dim() != 3 or position_ids.shape[0] != 3:
            raise ValueError(f"TMRotaryEmbedding expects position ids [3, b, s] or [b, s]; "
                             f"got {tuple(position_ids.shape)}")
        return self.rope(position_ids, self.sections)


def default_sections(rotary_dim: int) -> tuple[int, int, int]:
    """Qwen2.5-Omni's 1:1.5:1.5 split (16, 24, 24 at 128), rounded to sum to rotary_dim / 2."""
    half = rotary_dim // 2
    t = half // 4
    h = (half - t) // 2
    return t, h, half - t - h
