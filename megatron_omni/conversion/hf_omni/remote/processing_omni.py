"""Processor of an exported megatron-omni model (remote code: no megatron_omni import).

Text with one ``<image>`` / ``<video>`` / ``<audio>`` placeholder per media item is tokenized,
each placeholder expanded to as many positions as the encoder + projector give its item (the
``media`` table of processor_config.json), and the TMRoPE ids [b, 3, s] computed:

    text        consecutive ids, the same on all three axes; after media: 1 + the largest id so far
    image       token (r, c): (s, s + r, s + c)
    video       token (f, r, c) of temporal group f: (s + floor(25 t_f), s + r, s + c)
    audio       token i: s + floor(25 i seconds_per_token) on all axes
    audio+video ``<video><audio>`` with ``audio_in_video=True``: both tracks from the same s, laid
                out per 2-second chunk, the chunk's video tokens first, then its audio tokens

(floors after adding 1e-6). Images go through SiglipImageProcessor, audio (16 kHz mono) through
WhisperFeatureExtractor (padded to 30 s or not, as in training); videos are lists of frames
(already sampled) with their timestamps in seconds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import ProcessorMixin

KINDS = ("image", "video", "audio")
IDS_PER_SECOND, SECONDS_PER_CHUNK, EPS = 25, 2.0, 1e-6


def _t(seconds: float) -> int:
    return math.floor(seconds * IDS_PER_SECOND + EPS)


def stride2(n: int) -> int:
    return (n - 1) // 2 + 1


class MegatronOmniProcessor(ProcessorMixin):
    """``processor(text, images=, videos=, video_timestamps=, audio=, audio_in_video=)`` -> the
    model's inputs (input_ids, attention_mask, position_ids and the media tensors)."""

    def __init__(self, image_processor=None, feature_extractor=None, tokenizer=None, chat_template=None,
                 media=None, **kwargs):
        self.media = dict(media or {})
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template)

    # ------------------------------------------------------------------ counts

    def audio_tokens(self, mel_frames: int) -> int:
        n = stride2(mel_frames)
        for _ in range(self.media["audio_downsample_convs"]):
            n = stride2(n)
        return n

    def video_groups(self, timestamps) -> list[float]:
        return list(timestamps)[:: self.media["video_frames_per_group"]]

    # ------------------------------------------------------------------ call

    def __call__(self, text, images=None, videos=None, video_timestamps=None, audio=None, audio_in_video=False,
                 return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images:
            out["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        if videos:
            frames = [self.image_processor(list(v), return_tensors="pt")["pixel_values"] for v in videos]
            out["pixel_values_videos"] = torch.cat(frames)
            out["video_frames"] = torch.tensor([f.shape[0] for f in frames])
            if video_timestamps is None:
                raise ValueError("videos need video_timestamps (seconds of each given frame)")
        mel_frames = []
        if audio:
            pad = self.media.get("pad_audio_to_30s", True)
            feats = [self.feature_extractor(np.asarray(a, np.float32), sampling_rate=16000, return_tensors="pt",
                                            padding="max_length" if pad else "longest",
                                            return_attention_mask=True) for a in audio]
            mel_frames = [int(f["attention_mask"].sum()) if pad else f["input_features"].shape[-1] for f in feats]
            width = max(f["input_features"].shape[-1] for f in feats)
            out["input_features"] = torch.cat([torch.nn.functional.pad(f["input_features"],
                                                                       (0, width - f["input_features"].shape[-1]))
                                               for f in feats])
            out["feature_frames"] = torch.tensor(mel_frames)
        counters = {"image": 0, "video": 0, "audio": 0}
        rows, positions = [], []
        for t in texts:
            ids, pos = self._expand(self.tokenizer(t, add_special_tokens=False)["input_ids"], counters,
                                    video_timestamps, mel_frames, audio_in_video)
            rows.append(ids)
            positions.append(pos)
        if len({len(r) for r in rows}) != 1:
            raise ValueError("texts of different expanded lengths: pass one prompt at a time")
        out["input_ids"] = torch.tensor(rows)
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        out["position_ids"] = torch.stack(positions)
        return out

    def _expand(self, ids, counters, video_timestamps, mel_frames, audio_in_video):
        """(expanded ids, TMRoPE ids [3, n]) of one tokenized text."""
        ph = self.media["placeholder_ids"]
        kind_of = {v: k for k, v in ph.items()}
        out, parts, nxt, i = [], [], 0, 0

        def emit(token_ids, pos):
            nonlocal nxt
            out.extend(token_ids)
            parts.append(pos)
            if pos.numel():
                nxt = int(pos.max()) + 1

        while i < len(ids):
            kind = kind_of.get(ids[i])
            if kind is None:
                emit([ids[i]], torch.full((3, 1), nxt))
                i += 1
                continue
            k = counters[kind]
            counters[kind] += 1
            if kind == "image":
                h, w = self.media["image_grid"]
                emit([ph["image"]] * (h * w), self._grid_ids([0.0], h, w, nxt))
            elif kind == "audio":
                n = self.audio_tokens(mel_frames[k])
                emit([ph["audio"]] * n, self._audio_ids(n, nxt))
            else:
                h, w = self.media["video_grid"]
                video = self._grid_ids(self.video_groups(video_timestamps[k]), h, w, nxt)
                if audio_in_video and i + 1 < len(ids) and ids[i + 1] == ph["audio"]:
                    a = counters["audio"]
                    counters["audio"] += 1
                    audio = self._audio_ids(self.audio_tokens(mel_frames[a]), nxt)
                    order, pos = self._interleave(video, audio, nxt)
                    emit([ph[track] for track in order], pos)
                    i += 1
                else:
                    emit([ph["video"]] * video.shape[1], video)
            i += 1
        return out, torch.cat(parts, dim=1)

    @staticmethod
    def _grid_ids(timestamps, h, w, start) -> torch.Tensor:
        t = torch.tensor([_t(s) for s in timestamps])
        f = len(timestamps)
        ids = torch.stack([t.view(-1, 1, 1).expand(f, h, w), torch.arange(h).view(1, -1, 1).expand(f, h, w),
                           torch.arange(w).view(1, 1, -1).expand(f, h, w)])
        return ids.reshape(3, -1) + start

    def _audio_ids(self, n, start) -> torch.Tensor:
        spt = self.media["audio_seconds_per_token"]
        return torch.tensor([_t(i * spt) for i in range(n)], dtype=torch.long).view(1, -1).expand(3, -1) + start

    @staticmethod
    def _interleave(video, audio, start):
        """Per 2-second chunk (by temporal id): the chunk's video tokens, then its audio tokens."""
        per_chunk = _t(SECONDS_PER_CHUNK)
        order, pos = [], []
        chunk_v, chunk_a = (video[0] - start) // per_chunk, (audio[0] - start) // per_chunk
        last = int(max(chunk_v.max(), chunk_a.max()))
        for c in range(last + 1):
            for track, ids, chunk in (("video", video, chunk_v), ("audio", audio, chunk_a)):
                sel = ids[:, chunk == c]
                order += [track] * sel.shape[1]
                pos.append(sel)
        return order, torch.cat(pos, dim=1)


__all__ = ["MegatronOmniProcessor"]
