"""`OmniBatch`: the omni micro-batch, built by the data path (data/multimodal/packing.py
`collate`, or a test's synthetic batches) and consumed by the training step and the omni model.
Every field, its shape, dtype and conventions: docs/omni_batch.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

MODALITIES = ("text", "image_text", "video", "audio", "cross_modal")
"""The modalities of the data mix (data.multimodal.<m>, config/mixes.py): the one naming of
the training log (loss/<m> beside data/mix/<m>)."""

SAMPLE_MODALITY = {"text": "text", "image": "image_text", "video": "video", "audio": "audio",
                   "cross": "cross_modal"}
"""Values of OmniBatch.sample_modality (what media a sample holds; cross: more than one kind)
and the mix modality each is logged under."""


@dataclass
class OmniBatch:
    """b rows of s positions; n_img images, n_vid videos, n_aud audio clips over the whole
    micro-batch, each kind in order of appearance (row-major)."""

    tokens: torch.Tensor            # int64 [b, s], placeholders expanded
    labels: torch.Tensor            # int64 [b, s], next token
    loss_mask: torch.Tensor         # float32 [b, s]
    position_ids: torch.Tensor      # int64 [b, 3, s] (TMRoPE) or [b, s]
    sample_index: torch.Tensor      # int64 [b, s], sample number in the micro-batch, -1 padding
    sample_ids: list[str]           # per sample
    sample_modality: list[str]      # per sample, a key of SAMPLE_MODALITY
    sample_kinds: list[str]         # per sample, the source kind (manifest kind)
    images: torch.Tensor            # float32 [n_img, 3, S, S]
    videos: list[torch.Tensor]      # n_vid x float32 [T_v, 3, S, S]
    video_timestamps: list[torch.Tensor]  # n_vid x float64 [T_v], seconds from the clip start
    audio_mel: torch.Tensor         # float32 [n_aud, n_mels, F], padded to the longest clip
    audio_frames: torch.Tensor      # int64 [n_aud], valid mel frames per clip
    cu_seqlens: torch.Tensor | None = None  # int32 [k]: the rows as one varlen sequence; packed only

    @property
    def packed(self) -> bool:
        """True when the rows run as one sequence of b*s tokens split at cu_seqlens."""
        return self.cu_seqlens is not None

    def mel_frames(self) -> list[int]:
        """Valid mel frames of each audio clip."""
        return [int(f) for f in self.audio_frames.reshape(-1).tolist()]

    def non_padding_tokens(self) -> int:
        """Positions that hold a sample's token (padding excluded)."""
        return int((self.sample_index >= 0).sum())

    def modality_index(self) -> torch.Tensor:
        """[b, s] (or the shape of sample_index) index into MODALITIES (the mix's naming) of
        each position's sample, -1 in padding."""
        kinds = torch.tensor([MODALITIES.index(SAMPLE_MODALITY[m]) for m in self.sample_modality] + [-1])
        return kinds[self.sample_index]  # sample -1 (padding) -> the trailing -1

    def as_one_row(self) -> OmniBatch:
        """The same micro-batch with its b rows laid end to end as one row of b*s positions
        (tokens, labels, loss_mask, sample_index [1, b*s], position_ids [1, 3, b*s] or
        [1, b*s]): how a packed micro-batch runs (cu_seqlens already counts over b*s)."""
        position_ids = self.position_ids
        if position_ids.dim() == 3:  # [b, 3, s] -> [1, 3, b*s]
            position_ids = position_ids.transpose(0, 1).reshape(1, 3, -1)
        else:
            position_ids = position_ids.reshape(1, -1)
        return dataclasses.replace(
            self, tokens=self.tokens.reshape(1, -1), labels=self.labels.reshape(1, -1),
            loss_mask=self.loss_mask.reshape(1, -1), sample_index=self.sample_index.reshape(1, -1),
            position_ids=position_ids)
