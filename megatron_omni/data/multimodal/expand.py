"""Placeholder expansion: a prepared sample's token stream with every placeholder replaced by as
many positions as the model's encoder + projector emit LLM tokens for its media item (counts:
contract/media.py MediaTokens, from the model config), each holding its kind's placeholder id,
and the sample's TMRoPE spans (contract/tmrope.py).

Long audio is stored as consecutive windows of the encoder's 30 s (data_prep/multimodal/media.py
`audio_items`), one placeholder each. Placeholders next to each other whose clips follow each
other in time (a clip starts where the previous one ends, `audio_times`) are one audio span
whose windows keep their own start times (`tmrope.AudioSpan.windows`), so window k of a
recording starts 30·k s after its first whatever the token counts. A video followed by the
windows of its own audio track is one audio-video span, the windows at their times on the
video's clock: its video and audio positions interleave in 2-second chunks exactly as
`tmrope.interleave_layout` orders them, so the model fills the positions of each kind in order
and needs no layout knowledge.

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


_SAME_TIME = 1e-4
"""Seconds within which a clip's start counts as its predecessor's end (same recording)."""


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
        """`item` (media_order, audio_frames, audio_times, video_timestamps, audio_video) with
        the expanded stream of `tokens` / format `mask` (module doc): each placeholder replaced
        by its item's positions, the windows of one recording as one span, a video and the
        following windows of its own track as one span."""
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
                clips = self._audio(tokens[i + 1:], k, item, spans, parts)
            else:
                clips = self._video(tokens[i + 1:], k, item, spans, parts)
            i += 1 + clips
            k += 1 + clips
        return self.finish(item, np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]),
                           np.concatenate([p[2] for p in parts]), spans)

    def _clips(self, following: np.ndarray, k: int, item: dict, joins) -> list[int]:
        """Media items k+1, k+2, ... that are audio clips whose placeholders come next in
        `following`, while `joins(previous audio index or None, audio index)` holds."""
        order, audio_id = item["media_order"], self.placeholder_id["audio"]
        clips, previous = [], order[k][1] if order[k][0] == "audio" else None
        while (len(clips) < len(following) and k + 1 + len(clips) < len(order)
               and order[k + 1 + len(clips)][0] == "audio"
               and int(following[len(clips)]) == audio_id
               and joins(previous, order[k + 1 + len(clips)][1])):
            previous = order[k + 1 + len(clips)][1]
            clips.append(k + 1 + len(clips))
        return clips

    def _audio_span(self, clips: list[int], item: dict, origin: float) -> tuple[tmrope.AudioSpan,
                                                                              list[int]]:
        """The audio span of consecutive windows `clips` (media items) of one recording, their
        start times taken from `origin` seconds, and each window's token count."""
        mt, order = self.media_tokens, item["media_order"]
        audio = [order[m][1] for m in clips]
        counts = [mt.audio_tokens(int(item["audio_frames"][a])) for a in audio]
        starts = [item["audio_times"][a][0] - origin for a in audio]
        windows = tuple(zip(counts, starts)) if len(audio) > 1 or starts[0] else ()
        return tmrope.AudioSpan(sum(counts), mt.audio_seconds_per_token, windows), counts

    def _audio(self, following: np.ndarray, k: int, item: dict, spans: list, parts: list) -> int:
        """Append the span and parts of standalone audio item k with the windows of the same
        recording (each starting where the previous ends) whose placeholders follow it;
        returns how many windows it took after k."""
        times, video_of = item["audio_times"], item["audio_video"]

        def follows(previous: int, a: int) -> bool:
            return video_of[a] is None and abs(times[a][0] - times[previous][1]) < _SAME_TIME

        clips = [k] + self._clips(following, k, item, follows)
        span, counts = self._audio_span(clips, item, times[item["media_order"][k][1]][0])
        spans.append(span)
        for m, c in zip(clips, counts):
            parts.append(_media_part(self.placeholder_id["audio"], c, m))
        return len(clips) - 1

    def _video(self, following: np.ndarray, k: int, item: dict, spans: list, parts: list) -> int:
        """Append the span and parts of video media item k (with the windows of its own track
        whose placeholders follow it in `following`); returns how many windows it took."""
        mt, order, ids = self.media_tokens, item["media_order"], self.placeholder_id
        j = order[k][1]
        stamps = item["video_timestamps"][j][::mt.video_frames_per_group]
        video = tmrope.VideoSpan(*mt.video_grid, tuple(float(t) for t in stamps))
        clips = self._clips(following, k, item, lambda _, a: item["audio_video"][a] == j)
        if not clips:
            spans.append(video)
            parts.append(_media_part(ids["video"], video.num_tokens, k))
            return 0
        audio, counts = self._audio_span(clips, item, 0.0)
        span = tmrope.AudioVideoSpan(video, audio)
        spans.append(span)
        clip_of = np.repeat(clips, counts)
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
