"""TMRoPE position ids: time-aligned multimodal rotary positions (Qwen2.5-Omni style).

Every token gets three position ids (temporal, height, width); the model rotates one section of
the rotary head dimension by each axis (models/positions/tmrope.py ``TMRotaryEmbedding``). The
data path computes the ids of each sample from its spans (this module), so data and model share
the span types without importing each other. A sample is described, in sequence order, by
spans of tokens:

    TextSpan(n)                        n text tokens (special tokens such as <audio_bos> are text)
    ImageSpan(grid_h, grid_w)          grid_h * grid_w tokens, row-major
    VideoSpan(grid_h, grid_w, timestamps)
                                       len(timestamps) temporal groups (frames, or resampler
                                       packages) of grid_h * grid_w row-major tokens each;
                                       timestamps in seconds from the clip start
    AudioSpan(n, seconds_per_token, windows)
                                       n audio tokens, token i starting at i * seconds_per_token;
                                       audio longer than the encoder's window (Whisper: 30 s)
                                       lists its windows: (tokens, start seconds) each
    AudioVideoSpan(video, audio)       the video and the audio track of one clip, interleaved

Rules (R = ids_per_second = 25, C = seconds_per_chunk = 2; ``s`` = the span's start id):

1. Text: each token's id is the same on all three axes; ids run consecutively. The first token
   of the sample gets ``start`` (0); a span that follows any other span starts at
   ``s = 1 + (largest id of any axis so far)`` — so text after media continues after the
   largest id the media used.
2. Image: token (r, c) gets (s, s + r, s + c) — temporal id fixed at s.
3. Video: token (f, r, c) of temporal group f gets (s + ⌊R·timestamps[f]⌋, s + r, s + c).
4. Audio: token i gets s + ⌊R·i·seconds_per_token⌋ on all three axes (with 40 ms tokens this is
   s + i; our Whisper + Conv-GMLP tokens are 80 ms, giving s + 2i). Audio encoded in several
   windows (one span for the whole recording): token j of the window starting at w seconds
   gets s + ⌊R·(w + j·seconds_per_token)⌋, so window k of 30 s windows starts at s + 750·k
   whatever the token count of the windows before it.
5. Audio-video of one clip: both tracks start at the same s and keep their own ids (rules 3, 4,
   audio timestamps and video timestamps on the same clock). Tokens are grouped into chunks of
   C seconds by temporal id, chunk k = ⌊(t - s) / (R·C)⌋ (50 ids per chunk), and laid out chunk
   by chunk, video tokens of the chunk first, then its audio tokens (``interleave_layout``
   gives this order so the embedding merge places the tracks identically).

Floors are taken after adding 1e-6, so a frame at 1.16 s gets id 29 although 1.16 · 25 is
28.999999999999996 in floating point (transformers truncates the raw product). Otherwise the ids
equal those of transformers' Qwen2.5-Omni ``get_rope_index`` (tested) except in two places: its
chunker mislabels the chunks after a chunk without frames (rule 5 does not), and it gives the two
adjacent <bos> (and <eos>) tokens around an audio-in-video block one shared id, where rule 1
numbers every text token.

Plain 1-D RoPE stays available: ``TMRotaryEmbedding`` accepts ``[b, s]`` positions (the same id
on every axis), which is exactly standard RoPE.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import torch

IDS_PER_SECOND = 25
SECONDS_PER_CHUNK = 2.0
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class TextSpan:
    num_tokens: int


@dataclasses.dataclass(frozen=True)
class ImageSpan:
    grid_h: int
    grid_w: int

    @property
    def num_tokens(self) -> int:
        return self.grid_h * self.grid_w


@dataclasses.dataclass(frozen=True)
class VideoSpan:
    grid_h: int
    grid_w: int
    timestamps: tuple[float, ...]
    """Start time (s, from the clip start) of each temporal group of grid_h * grid_w tokens."""

    @property
    def num_tokens(self) -> int:
        return len(self.timestamps) * self.grid_h * self.grid_w


@dataclasses.dataclass(frozen=True)
class AudioSpan:
    num_tokens: int
    seconds_per_token: float = 0.04
    windows: tuple[tuple[int, float], ...] = ()
    """Audio encoded in consecutive encoder windows: (tokens, start seconds from the span's
    time origin) of each window in order, the tokens summing to num_tokens. Empty: one window
    starting at 0 s."""

    def token_seconds(self) -> list[float]:
        """Start time of each token, seconds from the span's time origin."""
        windows = self.windows or ((self.num_tokens, 0.0),)
        if sum(n for n, _ in windows) != self.num_tokens or min(n for n, _ in windows) < 0:
            raise ValueError(f"audio windows {self.windows} do not hold num_tokens={self.num_tokens}")
        times = [w + j * self.seconds_per_token for n, w in windows for j in range(n)]
        if any(b < a for a, b in zip(times, times[1:])) or min(times, default=0) < 0:
            raise ValueError(f"audio windows {self.windows} overlap or start before 0 s: each "
                             f"must start after the previous one's last token")
        return times


@dataclasses.dataclass(frozen=True)
class AudioVideoSpan:
    video: VideoSpan
    audio: AudioSpan

    @property
    def num_tokens(self) -> int:
        return self.video.num_tokens + self.audio.num_tokens


Span = Union[TextSpan, ImageSpan, VideoSpan, AudioSpan, AudioVideoSpan]


def _temporal_id(seconds: float, ids_per_second: float) -> int:
    return math.floor(seconds * ids_per_second + _EPS)


def _video_ids(span: VideoSpan, start: int, ids_per_second: float) -> torch.Tensor:
    """[3, num_tokens] ids of a video (or, with timestamps (0,), an image)."""
    stamps = span.timestamps
    if any(b < a for a, b in zip(stamps, stamps[1:])) or min(stamps, default=0) < 0:
        raise ValueError(f"video timestamps must be non-negative and non-decreasing; got {span.timestamps}")
    t = torch.tensor([_temporal_id(ts, ids_per_second) for ts in span.timestamps])
    frames, h, w = len(span.timestamps), span.grid_h, span.grid_w
    ids = torch.stack([t.view(-1, 1, 1).expand(frames, h, w),
                       torch.arange(h).view(1, -1, 1).expand(frames, h, w),
                       torch.arange(w).view(1, 1, -1).expand(frames, h, w)])
    return ids.reshape(3, -1) + start


def _audio_ids(span: AudioSpan, start: int, ids_per_second: float) -> torch.Tensor:
    t = torch.tensor([_temporal_id(seconds, ids_per_second) for seconds in span.token_seconds()],
                     dtype=torch.long)
    return t.view(1, -1).expand(3, -1) + start


def _chunk_ranges(temporal: torch.Tensor, start: int, ids_per_chunk: int,
                  chunks: int) -> list[tuple[int, int]]:
    """(begin, end) token ranges of each chunk, for non-decreasing temporal ids."""
    chunk = (temporal - start) // ids_per_chunk
    bounds = torch.searchsorted(chunk, torch.arange(chunks + 1)).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _interleave(span: AudioVideoSpan, start: int, ids_per_second: float,
                seconds_per_chunk: float) -> tuple[list[tuple[str, int, int]], torch.Tensor]:
    video = _video_ids(span.video, start, ids_per_second)
    audio = _audio_ids(span.audio, start, ids_per_second)
    ids_per_chunk = _temporal_id(seconds_per_chunk, ids_per_second)
    if ids_per_chunk < 1:
        raise ValueError(f"seconds_per_chunk={seconds_per_chunk} gives no temporal id per chunk")
    last = max([int(t.max()) for t in (video[0], audio[0]) if t.numel()], default=start)
    chunks = (last - start) // ids_per_chunk + 1
    layout, parts = [], []
    for (v0, v1), (a0, a1) in zip(_chunk_ranges(video[0], start, ids_per_chunk, chunks),
                                  _chunk_ranges(audio[0], start, ids_per_chunk, chunks)):
        for kind, ids, (b, e) in (("video", video, (v0, v1)), ("audio", audio, (a0, a1))):
            if e > b:
                layout.append((kind, b, e))
                parts.append(ids[:, b:e])
    return layout, torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)


def interleave_layout(span: AudioVideoSpan, ids_per_second: float = IDS_PER_SECOND,
                      seconds_per_chunk: float = SECONDS_PER_CHUNK) -> list[tuple[str, int, int]]:
    """Sequence order of an audio-video span's tokens: ``[(track, begin, end), ...]`` where track
    is "video" or "audio" and [begin, end) indexes that track's own tokens; per chunk, video first."""
    return _interleave(span, 0, ids_per_second, seconds_per_chunk)[0]


def tmrope_position_ids(spans: Sequence[Span], ids_per_second: float = IDS_PER_SECOND,
                        seconds_per_chunk: float = SECONDS_PER_CHUNK, start: int = 0) -> torch.Tensor:
    """TMRoPE ids ``[3, sum(span.num_tokens)]`` (rows: temporal, height, width) of one sample
    (rules in the module docstring)."""
    parts, nxt = [], start
    for span in spans:
        grid = (span.grid_h, span.grid_w) if isinstance(span, ImageSpan | VideoSpan) else (1,)
        if span.num_tokens < 0 or min(grid) < 1:
            raise ValueError(f"invalid span {span}: sizes must be positive")
        if isinstance(span, TextSpan):
            ids = torch.arange(span.num_tokens).view(1, -1).expand(3, -1) + nxt
        elif isinstance(span, ImageSpan):
            ids = _video_ids(VideoSpan(span.grid_h, span.grid_w, (0.0,)), nxt, ids_per_second)
        elif isinstance(span, VideoSpan):
            ids = _video_ids(span, nxt, ids_per_second)
        elif isinstance(span, AudioSpan):
            ids = _audio_ids(span, nxt, ids_per_second)
        elif isinstance(span, AudioVideoSpan):
            ids = _interleave(span, nxt, ids_per_second, seconds_per_chunk)[1]
        else:
            raise TypeError(f"unknown span {span!r}; expected one of TextSpan, ImageSpan, VideoSpan, "
                            "AudioSpan, AudioVideoSpan")
        parts.append(ids)
        if ids.numel():
            nxt = int(ids.max()) + 1
    return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
