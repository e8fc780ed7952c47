"""Token counts of media items and their assignment to the placeholder positions of a micro-batch.

The data path expands every media item into as many placeholder tokens as its encoder + projector
emits (contract: /work/briefs/omni_batch.md, data/multimodal/dataset.py MediaTokens); the model
fills the positions holding a kind's placeholder with that kind's items *in order*. This module
computes the counts from the model config and checks a micro-batch against them, naming the
sample when they disagree.
"""
from __future__ import annotations

import dataclasses

import torch

from megatron_omni.config.schema import OmniModelConfig
from megatron_omni.data.sample_format import PLACEHOLDERS
from megatron_omni.config.encoders import AUDIO_PRESETS, VISION_PRESETS, AudioEncoderConfig, VisionEncoderConfig
from megatron_omni.models.encoders.audio import audio_output_length
from megatron_omni.models.projectors.conv_gmlp import conv_gmlp_output_length

KINDS = ("image", "video", "audio")


def vision_config(omni: OmniModelConfig) -> VisionEncoderConfig:
    """The vision preset with model.omni.vision_overrides applied."""
    return dataclasses.replace(VISION_PRESETS[omni.vision], **(omni.vision_overrides or {}))


def audio_config(omni: OmniModelConfig) -> AudioEncoderConfig:
    """The audio preset with model.omni.audio_overrides applied."""
    return dataclasses.replace(AUDIO_PRESETS[omni.audio], **(omni.audio_overrides or {}))


def image_tokens(omni: OmniModelConfig) -> int:
    """LLM tokens per image: the resampler's queries, or one per patch with the mlp projector."""
    return omni.image_tokens if omni.vision_projector == "resampler" else vision_config(omni).num_patches


def frames_per_package(omni: OmniModelConfig) -> int:
    """Video frames that become one group of image_tokens tokens (1 with the mlp projector)."""
    return omni.frames_per_package if omni.vision_projector == "resampler" else 1


def video_tokens(omni: OmniModelConfig, frames: int) -> int:
    return -(-frames // frames_per_package(omni)) * image_tokens(omni)


def audio_tokens(omni: OmniModelConfig, mel_frames: int) -> int:
    """Whisper's stride-2 conv, then Conv-GMLP's 4x (or one token per encoder frame with mlp)."""
    n = audio_output_length(mel_frames)
    return conv_gmlp_output_length(n) if omni.audio_projector == "conv_gmlp" else n


def audio_seconds_per_token(omni: OmniModelConfig) -> float:
    return 0.08 if omni.audio_projector == "conv_gmlp" else 0.02


def token_grid(omni: OmniModelConfig) -> tuple[int, int]:
    """(h, w) layout of one image's / one video package's tokens for TMRoPE."""
    if omni.vision_projector == "mlp":
        g = vision_config(omni).grid_size
        return g, g
    side = int(round(omni.image_tokens ** 0.5))
    return side, side


def item_token_counts(omni: OmniModelConfig, batch: dict) -> dict[str, list[int]]:
    """{kind: LLM tokens of each item, in order} for the media of a micro-batch."""
    images = batch.get("images")
    return {
        "image": [image_tokens(omni)] * (0 if images is None else int(images.shape[0])),
        "video": [video_tokens(omni, int(v.shape[0])) for v in batch.get("videos") or []],
        "audio": [audio_tokens(omni, int(f)) for f in audio_frames(batch)],
    }


def audio_frames(batch: dict) -> list[int]:
    """Valid mel frames of each audio clip of the micro-batch."""
    frames = batch.get("audio_frames")
    return [] if frames is None else [int(f) for f in frames.reshape(-1).tolist()]


def sample_names(batch: dict, rows: int) -> list[str]:
    ids = batch.get("sample_ids")
    return list(ids) if ids else [f"row {i}" for i in range(rows)]


def sample_of_token(batch: dict, tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] sample number of each token (the batch's sample_index; else one sample per row)."""
    index = batch.get("sample_index")
    if index is not None:
        return index.to(tokens.device)
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
