"""A map-style dataset over one preprocessed folder (sample_format.py): item i is global sample
i (shard order, then document order), turned into exactly what the omni model consumes.

Item (a dict; `None` for a skipped bad sample when not strict):
    id, kind                 sample id (= tar key) and source kind
    tokens      int64 [n]    the token stream, one placeholder per media item, ending in <eod>
    labels      int64 [n]    labels[i] = tokens[i + 1] (next token); labels[n-1] = <eod>
    loss_mask   float32 [n]  loss_mask[i] = format mask[i + 1]: the prediction at i is scored
                             when token i+1 is a target; loss_mask[n-1] = 0 (nothing follows)
    media_order list[(kind, j)]  placeholder order: the k-th placeholder is item j of its kind
    images      float32 [n_img, 3, S, S]        resized to image_size, normalised
    videos      list of float32 [T_v, 3, S, S]  frames sampled (at most max_video_frames)
    video_timestamps  list of float64 [T_v]     seconds from the clip start
    audio_mel   float32 [n_aud, n_mels, 3000]   Whisper log-mel (or unpadded, see config)
    audio_frames int64 [n_aud]                  mel frames that hold audio
    audio_video list[int | None]                per audio item: the video (index among videos)
                                                whose track it is
    spans       TMRoPE spans (positions/tmrope.py) of the sequence after each placeholder is
                replaced by its encoder tokens (token counts from `MediaTokens`)
    position_ids int64 [3, expanded_len]        tmrope_position_ids(spans) (config flag)
    expanded_length int

Bad samples are skipped: `__getitem__` returns None, adds one to `skip_counts[reason]` (reasons
in `SKIP_REASONS`) and logs the first few with shard and key; with `strict=True` it raises
`BadSampleError` naming shard and key instead. `skip_counts` counts reads in this process (a
DataLoader worker has its own): the mixture wraps the counts of every item it passed over into
the item it returns, so the training loop can sum them.
"""
from __future__ import annotations

import bisect
import collections
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_omni.data.multimodal import features, images as image_io
from megatron_omni.data.sample_format import (AUDIO_SAMPLE_RATE, LOSS_MASK_SUFFIX, PLACEHOLDERS,
                                              AudioInfo, ImageInfo, Manifest, SampleMeta,
                                              VideoInfo, media_field, sample_id,
                                              unpack_frames)
from megatron_omni.models.positions import tmrope

log = logging.getLogger(__name__)

SKIP_REASONS = ("missing_member", "bad_metadata", "empty_text", "placeholder_mismatch",
                "corrupt_image", "corrupt_video", "corrupt_audio", "truncated_audio",
                "wrong_sample_rate")
_LOGGED_PER_REASON = 5


class BadSampleError(ValueError):
    """A sample that cannot be used, under strict=True."""


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


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


@dataclass
class _Shard:
    name: str
    index: int
    samples: int
    tokens: object = None        # IndexedDataset, opened on first use (per process)
    masks: object = None
    members: dict | None = None  # key -> {field: (offset, size)}
    tar_size: int = 0


class MultimodalDataset(torch.utils.data.Dataset):
    """Samples of one preprocessed folder (see module docstring).

    Args:
        folder: holds manifest.json and the shards.
        tokenizer: a megatron_omni tokenizer (special ids); default: the manifest's.
        config: LoaderConfig.
        strict: raise BadSampleError at a bad sample instead of skipping it.
    """

    def __init__(self, folder: str | Path, tokenizer=None, config: LoaderConfig = LoaderConfig(),
                 strict: bool = False):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        if tokenizer is None:
            from megatron_omni.data.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(self.manifest.tokenizer["path"])
        self.config, self.strict = config, strict
        self.placeholder_kind = {tokenizer.special_ids[text]: kind
                                 for kind, text in PLACEHOLDERS.items()}
        self.eod_id = tokenizer.eod_id
        self.kind = self.manifest.kind
        self.backend = image_io.resolve_backend(config.image_backend)
        self._dali = None
        self.shards = [_Shard(s.name, s.index, s.samples) for s in self.manifest.shards
                       if s.samples > 0]
        self._starts = np.cumsum([0] + [s.samples for s in self.shards]).tolist()
        self.skip_counts: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[_Shard, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        position = bisect.bisect_right(self._starts, index) - 1
        return self.shards[position], index - self._starts[position]

    def token_lengths(self) -> np.ndarray:
        """Token count of every sample from the .idx files alone (no media decoded): the
        `lengths` for packing.PackedDataset (bad samples included; they pack as nothing)."""
        out = []
        for shard in self.shards:
            self._open(shard)
            out.append(np.asarray(shard.tokens.sequence_lengths[:shard.samples], np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ reading

    def _open(self, shard: _Shard) -> None:
        if shard.tokens is None:
            from megatron.core.datasets.indexed_dataset import IndexedDataset
            prefix = str(self.folder / shard.name)
            shard.tokens = IndexedDataset(prefix)
            shard.masks = IndexedDataset(prefix + LOSS_MASK_SUFFIX)
        if shard.members is None:
            shard.members, shard.tar_size = _index_tar(self.folder / f"{shard.name}.tar")

    def _read_member(self, shard: _Shard, key: str, field: str) -> bytes:
        where = shard.members.get(key, {}).get(field)
        if where is None:
            raise _Skip("missing_member", f"no member {key}.{field}")
        offset, size = where
        with open(self.folder / f"{shard.name}.tar", "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return data  # may be short for a truncated tar: the decoder then fails

    def raw(self, index: int) -> tuple[str, str, np.ndarray, np.ndarray, SampleMeta, list[bytes]]:
        """(shard name, key, tokens, format loss mask, metadata, stored media bytes) of sample
        `index`; raises _Skip."""
        shard, doc = self.locate(index)
        self._open(shard)
        key = sample_id(shard.index, doc)
        tokens = np.array(shard.tokens[doc], dtype=np.int64)
        mask = np.array(shard.masks[doc], dtype=bool)
        data = self._read_member(shard, key, "json")
        try:
            meta = SampleMeta.from_json(json.loads(data))
        except Exception as err:  # noqa: BLE001 - any damage to the JSON means unusable metadata
            raise _Skip("bad_metadata", f"{type(err).__name__}: {err}") from None
        if meta.id != key or len(tokens) != len(mask):
            raise _Skip("bad_metadata", f"metadata id {meta.id!r}, {len(tokens)} tokens, "
                                        f"{len(mask)} mask values")
        media = [self._read_member(shard, key, media_field(i, info))
                 for i, info in enumerate(meta.media)]
        return shard.name, key, tokens, mask, meta, media

    def __getitem__(self, index: int) -> dict | None:
        shard, doc = self.locate(index)
        try:
            return self._item(index)
        except _Skip as err:
            key = sample_id(shard.index, doc)
            message = f"{self.folder}/{shard.name}.tar key {key}: {err}"
            if self.strict:
                raise BadSampleError(message) from None
            self.skip_counts[err.reason] += 1
            if self.skip_counts[err.reason] <= _LOGGED_PER_REASON:
                log.warning("skipping bad sample %s", message)
            return None

    # ------------------------------------------------------------------ decoding

    def _item(self, index: int) -> dict:
        shard_name, key, tokens, mask, meta, media = self.raw(index)
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

        labels = np.empty_like(tokens)
        labels[:-1] = tokens[1:]
        labels[-1] = self.eod_id
        loss_mask = np.zeros(len(tokens), np.float32)
        loss_mask[:-1] = mask[1:]
        size = cfg.image_size
        item = {
            "id": key, "shard": shard_name, "kind": meta.kind,
            "tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask), "media_order": order,
            "images": images if images is not None else torch.zeros(0, 3, size, size),
            "videos": videos, "video_timestamps": stamps,
            "audio_mel": (torch.stack(mels) if mels
                          else torch.zeros(0, cfg.n_mels, features.N_FRAMES)),
            "audio_frames": torch.tensor(frames, dtype=torch.long),
            "audio_video": audio_video,
        }
        item["spans"] = self.spans(tokens, item)
        item["expanded_length"] = sum(s.num_tokens for s in item["spans"])
        if cfg.compute_position_ids:
            item["position_ids"] = tmrope.tmrope_position_ids(item["spans"])
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
        mel = features.log_mel(wave, self.config.n_mels, self.config.pad_audio_to_30s)
        if not self.config.pad_audio_to_30s:
            return mel, mel.shape[-1]
        return mel, features.num_valid_frames(len(wave))

    # ------------------------------------------------------------------ positions

    def spans(self, tokens: np.ndarray, item: dict) -> list:
        """TMRoPE spans of the expanded sequence: text runs, and per placeholder its item's
        span; a video followed by its own track's audio items is one AudioVideoSpan (the
        track's clips joined)."""
        mt = self.config.media_tokens
        spans, run = [], 0
        order = iter(item["media_order"])
        pending_av = None  # (video span, audio tokens so far, video index)

        def flush_av():
            nonlocal pending_av
            if pending_av is not None:
                video, n_audio, _ = pending_av
                spans.append(tmrope.AudioVideoSpan(video, tmrope.AudioSpan(
                    n_audio, mt.audio_seconds_per_token)) if n_audio else video)
                pending_av = None

        for t in tokens.tolist():
            if t not in self.placeholder_kind:
                run += 1
                continue
            kind, j = next(order)
            if (kind == "audio" and pending_av is not None
                    and item["audio_video"][j] == pending_av[2]):
                pending_av = (pending_av[0], pending_av[1]
                              + mt.audio_tokens(int(item["audio_frames"][j])), pending_av[2])
                continue
            flush_av()
            if run:
                spans.append(tmrope.TextSpan(run))
                run = 0
            if kind == "image":
                spans.append(tmrope.ImageSpan(*mt.image_grid))
            elif kind == "video":
                stamps = item["video_timestamps"][j][::mt.video_frames_per_group]
                pending_av = (tmrope.VideoSpan(*mt.video_grid, tuple(float(s) for s in stamps)),
                              0, j)
            else:
                spans.append(tmrope.AudioSpan(mt.audio_tokens(int(item["audio_frames"][j])),
                                              mt.audio_seconds_per_token))
        flush_av()
        if run:
            spans.append(tmrope.TextSpan(run))
        return spans


def sample_frame_indices(available: int, max_frames: int) -> list[int]:
    """All frames when at most `max_frames`, else `max_frames` spread evenly (first kept)."""
    if available <= max_frames:
        return list(range(available))
    return [int(i * available / max_frames) for i in range(max_frames)]


def _index_tar(path: Path) -> tuple[dict, int]:
    """{key: {field: (data offset, size)}} of a webdataset tar, from its headers. A tar cut
    short keeps the members whose headers were read (their data may be short)."""
    members: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
    size = path.stat().st_size if path.exists() else 0
    try:
        with tarfile.open(path) as tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError:
                    break
                if member is None:
                    break
                if member.isfile():
                    key, _, field = member.name.partition(".")
                    members[key][field] = (member.offset_data, member.size)
    except (OSError, tarfile.TarError) as err:
        log.warning("cannot read %s: %s", path, err)
    return dict(members), size
