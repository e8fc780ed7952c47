"""Sequence packing: dataset items (dataset.py: expanded streams) laid into rows of a fixed length
L, several samples per row, each attending only to itself; and the omni micro-batch of those rows
(`collate`: contract/batch.py OmniBatch, docs/omni_batch.md).

A row holds samples s_1..s_k back to back, then padding:
    tokens       int64 [L]      the samples' expanded tokens, then pad_id
    labels       int64 [L]      within sample s: its next token; its last token's label is its
                                own <eod> (never the next sample's first token); pad_id in padding
    loss_mask    float32 [L]    each sample's loss_mask (0 at its last position); 0 in padding
    position_ids int64 [3, L]   each sample's TMRoPE ids (restarting at 0), with tmrope; else
                 int64 [L]      1-D positions restarting at 0 in every sample. Padding continues
                                the last sample's numbering.
    sample_index int64 [L]      0..k-1 per sample, -1 in padding
    cu_seqlens   int32 [k+1|k+2] boundaries [0, n_1, n_1+n_2, ..., total(, L)]: the padding is a
                                segment of its own, so attention never crosses a boundary
    samples      list[dict]     the samples' other fields (id, modality, media), in order

A sample longer than L is cut (`fit`) at the start of the first media item that does not fit
whole (the model checks positions per item), else at L; its last kept position then predicts
nothing. A conversation (kind "conversation") is cut further back, right after the end-of-turn
token of its last assistant turn that fits whole, so no answer is trained half-way; one whose
first answer does not fit keeps the rule above. The turns after the cut are not trained
(prepare dialogues longer than the row as several records to keep them). Only a sample that
starts with an item longer than L keeps nothing (the loader counts it too_long).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import KINDS
from megatron_omni.data.multimodal.features import N_FRAMES

PER_POSITION = ("tokens", "labels", "loss_mask", "position_ids", "media_item")
CONVERSATION = "conversation"
"""The manifest kind of prepared conversations (data_prep/multimodal/conversations.py), cut at
turn ends."""


def fit(item: dict, seq_length: int) -> dict | None:
    """`item` cut to at most `seq_length` positions without splitting a media item: the cut
    moves back to the first position of any item that would not fit whole; media tensors keep
    the items still present. None when nothing is left (the sample starts with an item longer
    than seq_length)."""
    n = item["expanded_length"]
    if n <= seq_length:
        return item
    media = item["media_item"]
    cut = seq_length
    while True:   # an interleaved audio-video span can pull the cut back more than once
        owners = media[cut:]
        owners = owners[owners >= 0].unique()
        first = [int((media == k).nonzero()[0]) for k in owners.tolist()]
        if not first or min(first) >= cut:
            break
        cut = min(first)
    if item.get("kind") == CONVERSATION and cut > 1:
        cut = _last_turn_end(item["loss_mask"], cut) or cut
    if cut == 0:
        return None
    kept = int(media[:cut].max()) + 1
    out = dict(item)
    for key in PER_POSITION:
        if key in item:
            out[key] = item[key][..., :cut]
    out["loss_mask"] = out["loss_mask"].clone()
    out["loss_mask"][cut - 1:] = 0
    out["expanded_length"] = cut
    order = item["media_order"][:kept]
    count = {kind: sum(1 for k, _ in order if k == kind) for kind in KINDS}
    out["media_order"] = order
    out["images"] = item["images"][:count["image"]]
    out["videos"] = item["videos"][:count["video"]]
    out["video_timestamps"] = item["video_timestamps"][:count["video"]]
    out["audio_mel"] = item["audio_mel"][:count["audio"]]
    out["audio_frames"] = item["audio_frames"][:count["audio"]]
    out["audio_video"] = item["audio_video"][:count["audio"]]
    out["audio_times"] = item["audio_times"][:count["audio"]]
    return out


def _last_turn_end(loss_mask: torch.Tensor, cut: int) -> int:
    """The largest c <= cut right after an assistant turn's end-of-turn token: position c - 1
    holds that token, so the loss mask (1 where the next token is a target: the answer and its
    end-of-turn) is 1 at c - 2 and 0 at c - 1. 0 when no answer ends before cut."""
    ends = ((loss_mask[:cut - 1] > 0) & (loss_mask[1:cut] == 0)).nonzero()
    return int(ends[-1]) + 2 if len(ends) else 0


def pack_row(samples: Sequence[dict], seq_length: int, pad_id: int, tmrope: bool) -> dict:
    """One row (module doc) from dataset items, each already `fit` and together at most
    `seq_length` positions; `tmrope` picks [3, L] TMRoPE ids over 1-D positions."""
    tokens = torch.full((seq_length,), pad_id, dtype=torch.long)
    labels = torch.full((seq_length,), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    positions = torch.zeros((3, seq_length) if tmrope else (seq_length,), dtype=torch.long)
    sample_index = torch.full((seq_length,), -1, dtype=torch.long)
    bounds, at, nxt = [0], 0, 0
    for i, s in enumerate(samples):
        n = s["expanded_length"]
        if at + n > seq_length:
            raise ValueError(f"samples of {sum(x['expanded_length'] for x in samples)} positions "
                             f"do not fit in {seq_length}")
        tokens[at:at + n] = s["tokens"]
        labels[at:at + n] = s["labels"]
        loss_mask[at:at + n] = s["loss_mask"]
        ids = s["position_ids"] if tmrope else torch.arange(n)
        positions[..., at:at + n] = ids
        nxt = int(ids.max()) + 1 if n else 0
        sample_index[at:at + n] = i
        at += n
        bounds.append(at)
    if at < seq_length:
        bounds.append(seq_length)
        positions[..., at:] = torch.arange(nxt, nxt + seq_length - at)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": positions,
            "sample_index": sample_index, "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
            "samples": [{k: v for k, v in s.items() if k not in PER_POSITION} for s in samples]}


def sample_modality(sample: dict) -> str:
    """text, image, video, audio, or cross (more than one kind of media, e.g. a video with its
    audio track, or an image with audio)."""
    kinds = {kind for kind, _ in sample["media_order"]}
    return kinds.pop() if len(kinds) == 1 else "cross" if kinds else "text"


def collate(rows: Sequence[dict], image_size: int, n_mels: int, packed: bool = True) -> OmniBatch:
    """The omni micro-batch (contract/batch.py OmniBatch, docs/omni_batch.md) of `rows`:
    sample_index numbered over the micro-batch (-1 = padding), cu_seqlens (the rows as one
    varlen batch of b·s tokens) only when `packed`, media in order of appearance, row-major,
    audio_mel padded to the longest clip."""
    stacked = {key: torch.stack([r[key] for r in rows])
               for key in ("tokens", "labels", "loss_mask", "position_ids")}
    index, before = [], 0
    for r in rows:
        index.append(torch.where(r["sample_index"] >= 0, r["sample_index"] + before, -1))
        before += len(r["samples"])
    cu_seqlens = None
    if packed:
        length = rows[0]["tokens"].shape[0]
        parts = [r["cu_seqlens"][(1 if i else 0):] + i * length for i, r in enumerate(rows)]
        cu_seqlens = torch.cat(parts).to(torch.int32)
    samples = [s for r in rows for s in r["samples"]]
    mels = [m for s in samples for m in s["audio_mel"]]
    if mels:
        frames = max(m.shape[-1] for m in mels)
        audio_mel = torch.stack([torch.nn.functional.pad(m, (0, frames - m.shape[-1])) for m in mels])
    else:
        audio_mel = torch.zeros(0, n_mels, N_FRAMES)
    return OmniBatch(
        **stacked, sample_index=torch.stack(index), cu_seqlens=cu_seqlens,
        sample_ids=[s["id"] for s in samples],
        sample_modality=[sample_modality(s) for s in samples],
        sample_kinds=[s["kind"] for s in samples],
        images=torch.cat([torch.zeros(0, 3, image_size, image_size)] + [s["images"] for s in samples]),
        videos=[v for s in samples for v in s["videos"]],
        video_timestamps=[torch.as_tensor(t, dtype=torch.float64)
                          for s in samples for t in s["video_timestamps"]],
        audio_mel=audio_mel,
        audio_frames=torch.cat([torch.zeros(0, dtype=torch.long)] + [s["audio_frames"] for s in samples]))
