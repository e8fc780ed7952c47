"""Placeholder expansion: a prepared sample's token stream with every placeholder replaced by as
many positions as the model's encoder + projector emit LLM tokens for its media item (counts:
contract/media.py MediaTokens, from the model config), each holding its kind's placeholder id,
and the sample's TMRoPE spans (contract/tmrope.py).

A video followed by clips of its own audio track is one audio-video span: its video and audio
positions interleave in 2-second chunks exactly as `tmrope.interleave_layout` orders them, so the
model fills the positions of each kind in order and needs no layout knowledge.

The per-position fields an expanded item gets (n = expanded length):
    tokens      int64 [n]    the expanded token stream, ending in <eod>
    labels      int64 [n]    labels[i] = tokens[i + 1] (next token); labels[n-1] = <eod>
    loss_mask   float32 [n]  1 where labels[i] is a training target (format mask of token i+1)
                             and token i is not a placeholder; 0 at media positions, before a
                             media item, and at n-1 (nothing follows)
    media_item  int64 [n]    per position, the media item (index in media_order) it belongs to,
                             -1 for text
    spans       the TMRoPE spans of the expanded sequence
    position_ids int64 [3, n]  tmrope_position_ids(spans) (when asked for)
    expanded_length int        n
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_omni.contract import tmrope
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal import features


def sample_frame_indices(available: int, max_frames: int) -> list[int]:
    """All frames when at most `max_frames`, else `max_frames` spread evenly (first kept)."""
    if available <= max_frames:
        return list(range(available))
    return [int(i * available / max_frames) for i in range(max_frames)]


def media_positions(tokens: MediaTokens, kind: str, size: int, max_video_frames: int,
                    pad_audio_to_30s: bool) -> int:
    """Positions one media item takes in the expanded stream: `size` as in
    sample_format.media_sizes (1 for an image, stored frames, audio samples)."""
    if kind == "image":
        return tokens.image_tokens
    if kind == "video":
        return tokens.video_tokens(len(sample_frame_indices(size, max_video_frames)))
    return tokens.audio_tokens(features.num_mel_frames(size, pad_audio_to_30s))


def _media_part(token_id: int, count: int, media_index: int) -> tuple:
    return np.full(count, token_id), np.zeros(count, bool), np.full(count, media_index)


@dataclass(frozen=True)
class Expander:
    """Expands the items of one tokenizer: `placeholder_id` {kind: token id}, `eod_id`, the
    model's `media_tokens`, and whether to compute `position_ids`."""

    placeholder_id: dict[str, int]
    eod_id: int
    media_tokens: MediaTokens
    position_ids: bool

    def expand(self, tokens: np.ndarray, mask: np.ndarray, item: dict) -> dict:
        """`item` (media_order, audio_frames, video_timestamps, audio_video) with the expanded
        stream of `tokens` / format `mask` (module doc): each placeholder replaced by its
        item's positions, a video and the following clips of its own track as one span."""
        kind_of = {i: kind for kind, i in self.placeholder_id.items()}
        mt, order = self.media_tokens, item["media_order"]
        spans, parts = [], []          # parts: (tokens, format mask, media item) arrays
        k, i, n = 0, 0, len(tokens)
        while i < n:
            if int(tokens[i]) not in kind_of:      # a text run
                j = i
                while j < n and int(tokens[j]) not in kind_of:
                    j += 1
                spans.append(tmrope.TextSpan(j - i))
                parts.append((tokens[i:j], mask[i:j], np.full(j - i, -1)))
                i = j
                continue
            kind, j = order[k]
            clips = 0
            if kind == "image":
                spans.append(tmrope.ImageSpan(*mt.image_grid))
                parts.append(_media_part(self.placeholder_id[kind], mt.image_tokens, k))
            elif kind == "audio":
                count = mt.audio_tokens(int(item["audio_frames"][j]))
                spans.append(tmrope.AudioSpan(count, mt.audio_seconds_per_token))
                parts.append(_media_part(self.placeholder_id[kind], count, k))
            else:
                clips = self._video(tokens[i + 1:], k, item, spans, parts)
            i += 1 + clips
            k += 1 + clips
        return self.finish(item, np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]),
                           np.concatenate([p[2] for p in parts]), spans)

    def _video(self, following: np.ndarray, k: int, item: dict, spans: list, parts: list) -> int:
        """Append the span and parts of video media item k (with the clips of its own track
        whose placeholders follow it in `following`); returns how many clips it took."""
        mt, order, ids = self.media_tokens, item["media_order"], self.placeholder_id
        j = order[k][1]
        stamps = item["video_timestamps"][j][::mt.video_frames_per_group]
        video = tmrope.VideoSpan(*mt.video_grid, tuple(float(t) for t in stamps))
        clips = []   # (media item, tokens) of this video's own track right after it
        while (len(clips) < len(following) and k + 1 + len(clips) < len(order)
               and order[k + 1 + len(clips)][0] == "audio"
               and int(following[len(clips)]) == ids["audio"]
               and item["audio_video"][order[k + 1 + len(clips)][1]] == j):
            a = order[k + 1 + len(clips)][1]
            clips.append((k + 1 + len(clips), mt.audio_tokens(int(item["audio_frames"][a]))))
        if not clips:
            spans.append(video)
            parts.append(_media_part(ids["video"], video.num_tokens, k))
            return 0
        span = tmrope.AudioVideoSpan(video, tmrope.AudioSpan(sum(c for _, c in clips),
                                                             mt.audio_seconds_per_token))
        spans.append(span)
        clip_of = np.repeat([m for m, _ in clips], [c for _, c in clips])
        for track, b, e in tmrope.interleave_layout(span):
            owner = np.full(e - b, k) if track == "video" else clip_of[b:e]
            parts.append((np.full(e - b, ids[track]), np.zeros(e - b, bool), owner))
        return len(clips)

    def finish(self, item: dict, tokens: np.ndarray, target: np.ndarray, media_item: np.ndarray,
               spans: list) -> dict:
        """`item` with the per-position fields of an expanded stream (`tokens`, the format mask
        `target`, `media_item`): labels, loss_mask, spans, expanded_length, position_ids."""
        tokens, target = tokens.astype(np.int64), target.astype(bool)
        media_item = media_item.astype(np.int64)
        labels = np.empty_like(tokens)
        labels[:-1] = tokens[1:]
        labels[-1] = self.eod_id
        loss_mask = np.zeros(len(tokens), np.float32)
        loss_mask[:-1] = target[1:]
        loss_mask[media_item >= 0] = 0
        item.update(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
                    loss_mask=torch.from_numpy(loss_mask), media_item=torch.from_numpy(media_item),
                    spans=spans, expanded_length=len(tokens))
        if self.position_ids:
            item["position_ids"] = tmrope.tmrope_position_ids(spans)
        return item
