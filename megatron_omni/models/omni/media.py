"""Token counts of media items and their assignment to the placeholder positions of a micro-batch.

The data path expands every media item into as many placeholder tokens as its encoder + projector
emits (docs/omni_batch.md; both sides count with contract/media.py MediaTokens, built here from
the model config by config/encoders.py `media_tokens`); the model fills the positions holding a kind's placeholder
with that kind's items *in order*. This module checks a micro-batch against the counts, naming
the sample when they disagree.
"""
from __future__ import annotations


import torch

from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import KINDS, PLACEHOLDERS, MediaTokens


def item_token_counts(tokens: MediaTokens, batch: OmniBatch | None) -> dict[str, list[int]]:
    """{kind: LLM tokens of each item, in order} for the media of a micro-batch (none without
    a batch)."""
    if batch is None:
        return {kind: [] for kind in KINDS}
    return {
        "image": [tokens.image_tokens] * int(batch.images.shape[0]),
        "video": [tokens.video_tokens(int(v.shape[0])) for v in batch.videos],
        "audio": [tokens.audio_tokens(n) for n in batch.mel_frames()],
    }


def sample_names(batch: OmniBatch | None, rows: int) -> list[str]:
    ids = batch.sample_ids if batch is not None else []
    return list(ids) if ids else [f"row {i}" for i in range(rows)]


def sample_of_token(batch: OmniBatch | None, tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] sample number of each token (the batch's sample_index; else one sample per row)."""
    if batch is not None:
        return batch.sample_index.to(tokens.device)
    return torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(tokens)


def assign_items(kind: str, positions: torch.Tensor, sample_index: torch.Tensor, counts: list[int],
                 names: list[str]) -> list[int]:
    """The sample number of each item of `kind`, after checking that each sample's placeholder
    positions are exactly filled by the items taken in order. Raises ValueError naming the
    sample and both counts (or the items left without positions)."""
    placeholder = PLACEHOLDERS[kind]
    owners = sample_index[positions]                       # row-major, as the items are ordered
    if bool((owners < 0).any()):
        raise ValueError(f"{placeholder} placeholder in padding (sample_index -1) of the micro-batch "
                         f"with samples {names}")
    per_sample = torch.bincount(owners, minlength=len(names)).tolist() if owners.numel() else [0] * len(names)
    item_sample, k = [], 0
    for sample, wanted in enumerate(per_sample):
        got = 0
        while got < wanted and k < len(counts):
            got += counts[k]
            item_sample.append(sample)
            k += 1
        if got != wanted:
            raise ValueError(f"sample {names[sample]}: {wanted} {placeholder} positions but its {kind} "
                             f"embeddings give {got} tokens")
    if k < len(counts):
        raise ValueError(f"{len(counts) - k} {kind} item(s) of {sum(counts[k:])} tokens have no "
                         f"{placeholder} positions (media without placeholder) in the micro-batch with "
                         f"samples {names}")
    return item_sample
