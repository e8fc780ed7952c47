"""Synthetic omni micro-batches (contract/batch.py OmniBatch, docs/omni_batch.md): one sample per
row, placeholders expanded to the model's token counts, TMRoPE ids from the spans, random media.
Tests only; the trainer reads the real loader."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_omni.config.schema import OmniModelConfig
from megatron_omni.contract import tmrope
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import PLACEHOLDERS, MediaTokens
from megatron_omni.config import encoders

PLACEHOLDER_IDS = {"image": 3, "video": 4, "audio": 5}
"""Placeholder ids of the model-level tests (the trainer uses its tokenizer's)."""
PAD_ID = 0
MIXED = ("text", "image", "video", "audio", "cross")
MODALITY_MEDIA = {"text": (), "image": ("image",), "video": ("video",), "audio": ("audio",),
                  "cross": ("video", "audio")}
"""What each sample_modality holds (cross = a video with its audio track, interleaved)."""


def micro_batch(omni: OmniModelConfig, modalities: list[str], seq_length: int, vocab_size: int,
                seed: int = 0, video_frames: int = 3, audio_frames: int = 40, tmrope_ids: bool = True,
                ids: list[str] | None = None, placeholder_ids: dict[str, int] = PLACEHOLDER_IDS,
                text_ids_from: int = 8) -> OmniBatch:
    """A micro-batch with one sample per modality (row i holds sample i): 3 text tokens, the
    media, then text up to a few tokens before seq_length (the rest is padding). Text tokens are
    drawn from [text_ids_from, vocab_size)."""
    g = torch.Generator().manual_seed(seed)
    vcfg, acfg = encoders.vision_config(omni), encoders.audio_config(omni)
    counts = encoders.media_tokens(omni)
    size = vcfg.image_size
    b = len(modalities)
    tokens = torch.full((b, seq_length), PAD_ID, dtype=torch.long)
    sample_index = torch.full((b, seq_length), -1, dtype=torch.long)
    positions = []
    images, videos, stamps, mels, frames = [], [], [], [], []
    for row, modality in enumerate(modalities):
        spans, layout = _media(MODALITY_MEDIA[modality], counts, g, size, acfg.num_mel_bins, video_frames,
                               audio_frames, (images, videos, stamps, mels, frames))
        spans.insert(0, tmrope.TextSpan(3))
        used = 3 + sum(n for _, n in layout)
        tail = seq_length - 2 - used
        if tail < 2:
            raise ValueError(f"seq_length={seq_length} is too short for a {modality} sample ({used} tokens)")
        spans.append(tmrope.TextSpan(tail))
        row_tokens = [torch.randint(text_ids_from, vocab_size, (3,), generator=g)]
        row_tokens += [torch.full((n,), placeholder_ids[kind], dtype=torch.long) for kind, n in layout]
        row_tokens.append(torch.randint(text_ids_from, vocab_size, (tail,), generator=g))
        row_tokens = torch.cat(row_tokens)
        tokens[row, :len(row_tokens)] = row_tokens
        sample_index[row, :len(row_tokens)] = row
        positions.append(tmrope.tmrope_position_ids(spans))
    labels = torch.cat([tokens[:, 1:], torch.full((b, 1), PAD_ID, dtype=torch.long)], dim=1)
    is_placeholder = torch.isin(tokens, torch.tensor(list(placeholder_ids.values())))
    label_placeholder = torch.isin(labels, torch.tensor(list(placeholder_ids.values())))
    next_valid = torch.cat([sample_index[:, 1:] >= 0, torch.zeros(b, 1, dtype=torch.bool)], dim=1)
    loss_mask = (~is_placeholder & ~label_placeholder & next_valid).float()
    position_ids = batch_position_ids(positions, seq_length).transpose(0, 1).contiguous()
    mel_width = max(frames, default=audio_frames)
    return OmniBatch(
        tokens=tokens, labels=labels, loss_mask=loss_mask,
        position_ids=position_ids if tmrope_ids else position_ids[:, 0].contiguous(),
        sample_index=sample_index, sample_modality=list(modalities),
        sample_ids=ids or [f"{m}-{seed}-{i}" for i, m in enumerate(modalities)],
        sample_kinds=["synthetic"] * b,
        images=torch.stack(images) if images else torch.zeros(0, 3, size, size),
        videos=videos, video_timestamps=stamps,
        audio_mel=(torch.stack([torch.nn.functional.pad(m, (0, mel_width - m.shape[1])) for m in mels])
                   if mels else torch.zeros(0, acfg.num_mel_bins, mel_width)),
        audio_frames=torch.tensor(frames, dtype=torch.long),
    )


def _media(kinds: tuple, counts: MediaTokens, g: torch.Generator, size: int, n_mels: int, video_frames: int,
           audio_frames: int, out: tuple[list, ...]) -> tuple[list, list]:
    """(TMRoPE spans, [(kind, positions)] in sequence order) of one sample's random media of
    `kinds`, appending the media to `out` = (images, videos, video_timestamps, mels, frames)."""
    images, videos, stamps, mels, frames = out
    spans, layout, video, audio = [], [], None, None
    if "image" in kinds:
        images.append(torch.randn(3, size, size, generator=g))
        spans.append(tmrope.ImageSpan(*counts.image_grid))
        layout.append(("image", counts.image_tokens))
    if "video" in kinds:
        t = torch.arange(video_frames, dtype=torch.float64)
        videos.append(torch.randn(video_frames, 3, size, size, generator=g))
        stamps.append(t)
        video = tmrope.VideoSpan(*counts.video_grid, tuple(t[::counts.video_frames_per_group].tolist()))
    if "audio" in kinds:
        mels.append(torch.randn(n_mels, audio_frames, generator=g))
        frames.append(audio_frames)
        audio = tmrope.AudioSpan(counts.audio_tokens(audio_frames), counts.audio_seconds_per_token)
    if video is not None and audio is not None:
        span = tmrope.AudioVideoSpan(video, audio)
        spans.append(span)
        layout += [(kind, end - begin) for kind, begin, end in tmrope.interleave_layout(span)]
    elif video is not None or audio is not None:
        span = video or audio
        spans.append(span)
        layout.append(("video" if video is not None else "audio", span.num_tokens))
    return spans, layout


def batch_position_ids(samples: Sequence[torch.Tensor], seq_length: int) -> torch.Tensor:
    """Stack per-sample ids ``[3, L_i]`` into ``[3, b, seq_length]``; padding after a sample
    continues its numbering as text (so padded positions stay distinct)."""
    out = torch.empty(3, len(samples), seq_length, dtype=torch.long)
    for i, ids in enumerate(samples):
        if ids.dim() != 2 or ids.shape[0] != 3 or ids.shape[1] > seq_length:
            raise ValueError(f"sample {i}: expected ids [3, L] with L ≤ seq_length={seq_length}; "
                             f"got {tuple(ids.shape)}")
        n = ids.shape[1]
        out[:, i, :n] = ids
        nxt = int(ids.max()) + 1 if n else 0
        out[:, i, n:] = torch.arange(nxt, nxt + seq_length - n)
    return out


def synthetic_stream(cfg, tokenizer, consumed_samples: int, dp_rank: int, dp: int):
    """Stand-in for the trainer's omni_micro_batches: step k's global batch is the same for every
    layout (micro-batch g of the run cycles its rows through MIXED, seeded by g); DP rank r
    takes the r-th share of each step's micro-batches."""
    t = cfg.training
    per_step = t.global_batch_size // t.micro_batch_size
    per_rank = per_step // dp
    special = tokenizer.special_ids
    placeholder_ids = {kind: special[text] for kind, text in PLACEHOLDERS.items()}
    step = consumed_samples // t.global_batch_size
    while True:
        for i in range(dp_rank * per_rank, (dp_rank + 1) * per_rank):
            g = step * per_step + i
            modalities = [MIXED[(g * t.micro_batch_size + j) % len(MIXED)] for j in range(t.micro_batch_size)]
            yield micro_batch(cfg.model.omni, modalities, cfg.data.seq_length, tokenizer.vocab_size, seed=g,
                              placeholder_ids=placeholder_ids, text_ids_from=max(special.values()) + 1)
        step += 1
