"""Map-style datasets over prepared data, item i turned into exactly what the omni model
consumes: `MultimodalDataset` over one preprocessed folder (sample_format.py; item i is global
sample i: shard order, then document order) and `TextDocuments` over a text indexed binary
(data_prep/preprocess_text.py; item i is document i).

Placeholders are expanded: each media item occupies as many consecutive positions as the model's
encoder + projector emit LLM tokens for it (`MediaTokens`, from the model config), each holding
its kind's placeholder id. A video followed by clips of its own audio track is one TMRoPE
audio-video span: its video and audio positions interleave in 2-second chunks exactly as
`tmrope.interleave_layout` orders them, so the model fills the positions of each kind in order
and needs no layout knowledge. `planned_length(i)` gives an item's expanded length from the
index files and `<shard>.media.json` alone (no media decoded), for packing.

Item (a dict; `None` for a skipped bad sample when not strict), n = expanded length:
    id, kind                 sample id (= tar key; "<prefix>:<doc>" for text) and source kind
    tokens      int64 [n]    the expanded token stream, ending in <eod>
    labels      int64 [n]    labels[i] = tokens[i + 1] (next token); labels[n-1] = <eod>
    loss_mask   float32 [n]  1 where labels[i] is a training target (format mask of token i+1)
                             and token i is not a placeholder; 0 at media positions, before a
                             media item, and at n-1 (nothing follows)
    media_item  int64 [n]    per position, the media item (index in media_order) it belongs to,
                             -1 for text
    media_order list[(kind, j)]  placeholder order: the k-th placeholder is item j of its kind
    images      float32 [n_img, 3, S, S]        resized to image_size, normalised
    videos      list of float32 [T_v, 3, S, S]  frames sampled (at most max_video_frames)
    video_timestamps  list of float64 [T_v]     seconds from the clip start
    audio_mel   float32 [n_aud, n_mels, F]      Whisper log-mel (F = 3000, or unpadded)
    audio_frames int64 [n_aud]                  mel frames that hold audio
    audio_video list[int | None]                per audio item: the video (index among videos)
                                                whose track it is
    spans       TMRoPE spans (positions/tmrope.py) of the expanded sequence
    position_ids int64 [3, n]                   tmrope_position_ids(spans) (config flag)
    expanded_length int                         n

Bad samples are skipped (data/bad_samples.py): `__getitem__` returns None, adds one to
`skip_counts[reason]` (reasons in `READ_SKIP_REASONS`) and logs the first few with shard and
key; with `strict=True` it raises `BadSampleError` naming shard and key instead. `skip_counts`
counts reads in this process (a DataLoader worker has its own): the mixture wraps the counts of
every item it passed over into the item it returns, so the training loop can sum them. Reading
the stored parts of a sample is data/sample_reader.py's `SampleReader`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_omni.data.bad_samples import SkipCounter, SkippingDataset
from megatron_omni.data.bad_samples import SkipSample as _Skip
from megatron_omni.data.media_items import (AUDIO_SAMPLE_RATE, AudioInfo, ImageInfo, VideoInfo,
                                            read_media_sizes, unpack_frames)
from megatron_omni.data.multimodal import features, images as image_io
from megatron_omni.data.sample_format import MEDIA_SIZES_SUFFIX, PLACEHOLDERS
from megatron_omni.data.sample_reader import SampleReader
from megatron_omni.models.positions import tmrope


@dataclass(frozen=True)
class MediaTokens:
    """How many LLM tokens each media item becomes, for the TMRoPE spans.

    image_grid: (h, w) tokens per image (the resampler's 64 queries = 8 x 8).
    video_grid: (h, w) tokens per temporal group of `video_frames_per_group` frames.
    audio_seconds_per_token: 0.08 for Whisper (50/s) + Conv-GMLP (4x down).
    """

    image_grid: tuple[int, int] = (8, 8)
    video_grid: tuple[int, int] = (8, 8)
    video_frames_per_group: int = 1
    audio_seconds_per_token: float = 0.08

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    def video_tokens(self, frames: int) -> int:
        """Tokens of a video of `frames` (sampled) frames: one grid per temporal group."""
        return -(-frames // self.video_frames_per_group) * self.video_grid[0] * self.video_grid[1]

    def audio_tokens(self, mel_frames: int) -> int:
        """Whisper encoder (stride 2) then Conv-GMLP (two stride-2 convs) on the valid frames."""
        n = (mel_frames - 1) // 2 + 1
        for _ in range(2):
            n = (n - 1) // 2 + 1
        return n


@dataclass(frozen=True)
class LoaderConfig:
    """What the loader produces.

    image_size, image_mean, image_std: the vision tower's square input and normalisation
        (SigLIP: 384, mean = std = 0.5).
    image_backend: "pil", "dali" or "auto" (DALI when installed).
    max_video_frames: frames kept per video, spread evenly over the stored ones.
    n_mels: 80 (Whisper medium) or 128 (large-v3).
    pad_audio_to_30s: Whisper's fixed 3000 frames; False keeps the clip's own length.
    media_tokens: token counts for the spans; compute_position_ids: also return TMRoPE ids.
    """

    image_size: int = 384
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_backend: str = "pil"
    max_video_frames: int = 16
    n_mels: int = 80
    pad_audio_to_30s: bool = True
    media_tokens: MediaTokens = MediaTokens()
    compute_position_ids: bool = True


class MultimodalDataset(SkippingDataset):
    """Samples of one preprocessed folder (see module docstring).

    Args:
        folder: holds manifest.json and the shards.
        tokenizer: a megatron_omni tokenizer (special ids); default: the manifest's.
        config: LoaderConfig.
        strict: raise BadSampleError at a bad sample instead of skipping it.
    """

    def __init__(self, folder: str | Path, tokenizer=None, config: LoaderConfig = LoaderConfig(),
                 strict: bool = False):
        self.reader = SampleReader(folder)
        self.folder, self.manifest = self.reader.folder, self.reader.manifest
        if tokenizer is None:
            from megatron_omni.data.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(self.manifest.tokenizer["path"])
        self.config, self.skips = config, SkipCounter(strict)
        self.placeholder_id = {kind: tokenizer.special_ids[text]
                               for kind, text in PLACEHOLDERS.items()}
        self.placeholder_kind = {i: kind for kind, i in self.placeholder_id.items()}
        self.eod_id = tokenizer.eod_id
        self.kind = self.manifest.kind
        self.backend = image_io.resolve_backend(config.image_backend)
        self._dali = None
        self._planned: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def where(self, index: int) -> str:
        return self.reader.where(index)

    def planned_lengths(self) -> np.ndarray:
        if self._planned is None:
            self._planned = self._read_planned_lengths()
        return self._planned

    def _read_planned_lengths(self) -> np.ndarray:
        """Expanded length of every sample (`media_positions` per item, the rest one position
        per token) from the .idx files and `<shard>.media.json` alone: what packing plans with.
        A bad sample gets the length its index and media sizes claim (it reads as nothing)."""
        out = []
        for shard in self.reader.shards:
            self.reader.open(shard, tar=False)
            lengths = np.asarray(shard.tokens.sequence_lengths[:shard.samples], np.int64)
            sizes = read_media_sizes(self.folder / f"{shard.name}{MEDIA_SIZES_SUFFIX}")
            if len(sizes) != shard.samples:
                raise ValueError(f"{self.folder}/{shard.name}{MEDIA_SIZES_SUFFIX} lists "
                                 f"{len(sizes)} samples, the shard has {shard.samples}")
            out.append(lengths + np.array([sum(self.media_positions(k, n) - 1 for k, n in media)
                                           for media in sizes], np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def media_positions(self, kind: str, size: int) -> int:
        """Positions one media item takes in the expanded stream: `size` as in
        sample_format.media_sizes (1 for an image, stored frames, audio samples)."""
        mt = self.config.media_tokens
        if kind == "image":
            return mt.image_tokens
        if kind == "video":
            return mt.video_tokens(len(sample_frame_indices(size, self.config.max_video_frames)))
        return mt.audio_tokens(features.num_mel_frames(size, self.config.pad_audio_to_30s))

    # ------------------------------------------------------------------ decoding

    def _item(self, index: int) -> dict:
        shard_name, key, tokens, mask, meta, media = self.reader.raw(index)
        found = [self.placeholder_kind[t] for t in tokens.tolist() if t in self.placeholder_kind]
        stored = [m.kind for m in meta.media]
        if found != stored:
            raise _Skip("placeholder_mismatch", f"placeholders {found} but media {stored}")
        is_text = ~np.isin(tokens, list(self.placeholder_kind) + [self.eod_id])
        if len(tokens) == 0 or not (is_text & mask).any():
            raise _Skip("empty_text", "no text token is a training target")

        cfg = self.config
        images, videos, stamps, mels, frames, audio_video = [], [], [], [], [], []
        order, video_of_media = [], {}
        encoded_images = []
        for i, (info, data) in enumerate(zip(meta.media, media)):
            if isinstance(info, ImageInfo):
                order.append(("image", len(encoded_images)))
                encoded_images.append((info, data))
            elif isinstance(info, VideoInfo):
                video_of_media[i] = len(videos)
                order.append(("video", len(videos)))
                v, t = self._video(info, data)
                videos.append(v)
                stamps.append(t)
            else:
                order.append(("audio", len(mels)))
                mel, n = self._audio(info, data)
                mels.append(mel)
                frames.append(n)
                audio_video.append(video_of_media.get(info.video_index)
                                   if info.video_index is not None else None)
        images = self._images(encoded_images)

        size = cfg.image_size
        item = {
            "id": key, "shard": shard_name, "kind": meta.kind, "media_order": order,
            "images": images if images is not None else torch.zeros(0, 3, size, size),
            "videos": videos, "video_timestamps": stamps,
            "audio_mel": (torch.stack(mels) if mels
                          else torch.zeros(0, cfg.n_mels, features.N_FRAMES)),
            "audio_frames": torch.tensor(frames, dtype=torch.long),
            "audio_video": audio_video,
        }
        item = self._expand(tokens, mask, item)
        planned = int(self.planned_lengths()[index])
        if item["expanded_length"] != planned:
            raise _Skip("bad_metadata", f"{item['expanded_length']} positions, "
                                        f"{MEDIA_SIZES_SUFFIX} says {planned}")
        return item

    def _images(self, encoded: list[tuple[ImageInfo, bytes]]) -> torch.Tensor | None:
        if not encoded:
            return None
        cfg = self.config
        if self.backend == "dali":
            # PIL reads only the headers here; DALI decodes, and a failure of the batch marks
            # the sample corrupt.
            for info, data in encoded:
                try:
                    size = image_io.image_size(data)
                except Exception as err:  # noqa: BLE001
                    raise _Skip("corrupt_image", f"{type(err).__name__}: {err}") from None
                if size != (info.width, info.height):
                    raise _Skip("corrupt_image", f"header {size}, metadata "
                                                 f"{(info.width, info.height)}")
            if self._dali is None:
                self._dali = image_io.DaliImageDecoder(cfg.image_size, cfg.image_mean,
                                                       cfg.image_std)
            try:
                return self._dali([data for _, data in encoded])
            except RuntimeError as err:
                raise _Skip("corrupt_image", f"DALI: {err}") from None
        decoded = []
        for info, data in encoded:  # a damaged image is skipped
            try:
                img = image_io.decode_rgb(data)
            except Exception as err:  # noqa: BLE001 - PIL raises many types on damaged input
                raise _Skip("corrupt_image", f"{type(err).__name__}: {err}") from None
            if img.size != (info.width, info.height):
                raise _Skip("corrupt_image", f"decoded {img.size}, metadata "
                                             f"{(info.width, info.height)}")
            decoded.append(img)
        return torch.stack([image_io.pil_to_tensor(img, cfg.image_size, cfg.image_mean,
                                                   cfg.image_std) for img in decoded])

    def _video(self, info: VideoInfo, data: bytes) -> tuple[torch.Tensor, np.ndarray]:
        cfg = self.config
        try:
            jpegs, stamps = unpack_frames(data)
        except Exception as err:  # noqa: BLE001
            raise _Skip("corrupt_video", f"frames npz: {type(err).__name__}: {err}") from None
        if len(jpegs) != info.num_frames or len(stamps) != len(jpegs) or not jpegs:
            raise _Skip("corrupt_video", f"{len(jpegs)} frames, metadata {info.num_frames}")
        keep = sample_frame_indices(len(jpegs), cfg.max_video_frames)
        out = []
        for j in keep:
            try:
                img = image_io.decode_rgb(jpegs[j])
            except Exception as err:  # noqa: BLE001
                raise _Skip("corrupt_video", f"frame {j}: {type(err).__name__}: {err}") from None
            out.append(image_io.pil_to_tensor(img, cfg.image_size, cfg.image_mean, cfg.image_std))
        return torch.stack(out), np.asarray(stamps, np.float64)[keep]

    def _audio(self, info: AudioInfo, data: bytes) -> tuple[torch.Tensor, int]:
        import soundfile

        if info.sample_rate != AUDIO_SAMPLE_RATE:
            raise _Skip("wrong_sample_rate", f"metadata says {info.sample_rate} Hz")
        try:
            wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001 - libsndfile errors on damaged input
            raise _Skip("corrupt_audio", f"{type(err).__name__}: {err}") from None
        if rate != AUDIO_SAMPLE_RATE:
            raise _Skip("wrong_sample_rate", f"stored at {rate} Hz, expected {AUDIO_SAMPLE_RATE}")
        if wave.shape[1] != 1 or len(wave) > info.num_samples or not np.isfinite(wave).all():
            raise _Skip("corrupt_audio", f"{wave.shape} samples, metadata {info.num_samples}")
        if len(wave) < info.num_samples:
            raise _Skip("truncated_audio", f"{len(wave)} of {info.num_samples} samples")
        wave = wave[:, 0]
        pad = self.config.pad_audio_to_30s
        return features.log_mel(wave, self.config.n_mels, pad), features.num_mel_frames(
            len(wave), pad)

    # ------------------------------------------------------------------ expansion

    def _expand(self, tokens: np.ndarray, mask: np.ndarray, item: dict) -> dict:
        """`item` with the expanded stream (tokens, labels, loss_mask, media_item), its TMRoPE
        spans and position ids: each placeholder replaced by its item's positions, a video and
        the following clips of its own track as one interleaved audio-video span."""
        mt = self.config.media_tokens
        ids = {kind: self.placeholder_id[kind] for kind in PLACEHOLDERS}
        spans, parts = [], []          # parts: (tokens, format mask, media item) arrays
        order = item["media_order"]
        k, i, n = 0, 0, len(tokens)
        while i < n:
            if int(tokens[i]) not in self.placeholder_kind:      # a text run
                j = i
                while j < n and int(tokens[j]) not in self.placeholder_kind:
                    j += 1
                spans.append(tmrope.TextSpan(j - i))
                parts.append((tokens[i:j], mask[i:j], np.full(j - i, -1)))
                i = j
                continue
            kind, j = order[k]
            if kind == "image":
                spans.append(tmrope.ImageSpan(*mt.image_grid))
                parts.append(_media_part(ids[kind], mt.image_tokens, k))
            elif kind == "audio":
                count = mt.audio_tokens(int(item["audio_frames"][j]))
                spans.append(tmrope.AudioSpan(count, mt.audio_seconds_per_token))
                parts.append(_media_part(ids[kind], count, k))
            else:
                stamps = item["video_timestamps"][j][::mt.video_frames_per_group]
                video = tmrope.VideoSpan(*mt.video_grid, tuple(float(t) for t in stamps))
                clips = []   # (media item, tokens) of this video's own track right after it
                while (i + 1 + len(clips) < n and k + 1 + len(clips) < len(order)
                       and order[k + 1 + len(clips)][0] == "audio"
                       and int(tokens[i + 1 + len(clips)]) == ids["audio"]
                       and item["audio_video"][order[k + 1 + len(clips)][1]] == j):
                    a = order[k + 1 + len(clips)][1]
                    clips.append((k + 1 + len(clips),
                                  mt.audio_tokens(int(item["audio_frames"][a]))))
                if not clips:
                    spans.append(video)
                    parts.append(_media_part(ids[kind], video.num_tokens, k))
                else:
                    span = tmrope.AudioVideoSpan(video, tmrope.AudioSpan(
                        sum(c for _, c in clips), mt.audio_seconds_per_token))
                    spans.append(span)
                    clip_of = np.repeat([m for m, _ in clips], [c for _, c in clips])
                    for track, b, e in tmrope.interleave_layout(span):
                        owner = np.full(e - b, k) if track == "video" else clip_of[b:e]
                        parts.append((np.full(e - b, ids[track]), np.zeros(e - b, bool), owner))
                    i += len(clips)
                    k += len(clips)
            i += 1
            k += 1
        return _finish_item(item, np.concatenate([p[0] for p in parts]),
                            np.concatenate([p[1] for p in parts]),
                            np.concatenate([p[2] for p in parts]), spans, self.eod_id,
                            self.config.compute_position_ids)


def _finish_item(item: dict, tokens: np.ndarray, target: np.ndarray, media_item: np.ndarray,
                 spans: list, eod_id: int, position_ids: bool) -> dict:
    """`item` with the per-position fields of an expanded stream (`tokens`, the format mask
    `target`, `media_item`): labels, loss_mask, spans, expanded_length, position_ids."""
    tokens, target = tokens.astype(np.int64), target.astype(bool)
    media_item = media_item.astype(np.int64)
    labels = np.empty_like(tokens)
    labels[:-1] = tokens[1:]
    labels[-1] = eod_id
    loss_mask = np.zeros(len(tokens), np.float32)
    loss_mask[:-1] = target[1:]
    loss_mask[media_item >= 0] = 0
    item.update(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
                loss_mask=torch.from_numpy(loss_mask), media_item=torch.from_numpy(media_item),
                spans=spans, expanded_length=len(tokens))
    if position_ids:
        item["position_ids"] = tmrope.tmrope_position_ids(spans)
    return item


def _media_part(token_id: int, count: int, media_index: int) -> tuple:
    return np.full(count, token_id), np.zeros(count, bool), np.full(count, media_index)


class TextDocuments(SkippingDataset):
    """The documents of a text indexed binary (data_prep/preprocess_text.py) as items of the
    same format: every token but the first is a target, no media. A document holding a
    placeholder id is skipped (placeholder_mismatch), an empty one (empty_text).

    Args:
        prefix: path without .bin/.idx.
        tokenizer: its special ids and <eod>.
        config: LoaderConfig (image_size, n_mels for the empty media tensors; position ids).
        strict: raise BadSampleError at a bad document instead of skipping it.
    """

    kind = "text"

    def __init__(self, prefix: str | Path, tokenizer, config: LoaderConfig = LoaderConfig(),
                 strict: bool = False):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix, self.config, self.skips = str(prefix), config, SkipCounter(strict)
        self.documents = IndexedDataset(self.prefix)
        self.placeholders = np.array([tokenizer.special_ids[t] for t in PLACEHOLDERS.values()])
        self.eod_id = tokenizer.eod_id

    def __len__(self) -> int:
        return len(self.documents)

    def planned_lengths(self) -> np.ndarray:
        return np.asarray(self.documents.sequence_lengths, np.int64)

    def where(self, index: int) -> str:
        return f"{self.prefix}.bin document {index}"

    def _item(self, index: int) -> dict:
        tokens = np.array(self.documents[index], dtype=np.int64)
        if np.isin(tokens, self.placeholders).any():
            raise _Skip("placeholder_mismatch", "placeholder ids in a text document")
        if not (tokens != self.eod_id).any():
            raise _Skip("empty_text", "no text token")
        size, n = self.config.image_size, len(tokens)
        item = {"id": f"{Path(self.prefix).name}:{index}", "kind": self.kind, "media_order": [],
                "images": torch.zeros(0, 3, size, size), "videos": [], "video_timestamps": [],
                "audio_mel": torch.zeros(0, self.config.n_mels, features.N_FRAMES),
                "audio_frames": torch.zeros(0, dtype=torch.long), "audio_video": []}
        return _finish_item(item, tokens, np.ones(n, bool), np.full(n, -1),
                            [tmrope.TextSpan(n)], self.eod_id, self.config.compute_position_ids)


def sample_frame_indices(available: int, max_frames: int) -> list[int]:
    """All frames when at most `max_frames`, else `max_frames` spread evenly (first kept)."""
    if available <= max_frames:
        return list(range(available))
    return [int(i * available / max_frames) for i in range(max_frames)]

