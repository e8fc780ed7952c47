"""Map-style datasets over prepared data, item i turned into exactly what the omni model
consumes: `MultimodalDataset` over one preprocessed folder (sample_format.py; item i is global
sample i: shard order, then document order) and `TextDocuments` over a text indexed binary
(data_prep/preprocess_text.py; item i is document i).

Placeholders are expanded (expand.py: each media item takes as many positions as the model's
encoder + projector emit LLM tokens for it, contract/media.py MediaTokens). `planned_length(i)`
gives an item's expanded length from the index files and `<shard>.media.json` alone (no media
decoded), for packing.

Item (a dict; `None` for a skipped bad sample when not strict):
    id, kind                 sample id (= tar key; "<prefix>:<doc>" for text) and source kind
    tokens, labels, loss_mask, media_item, spans, position_ids, expanded_length
                             the expanded stream (expand.py)
    media_order list[(kind, j)]  placeholder order: the k-th placeholder is item j of its kind
    images      float32 [n_img, 3, S, S]        resized to image_size, normalised
    videos      list of float32 [T_v, 3, S, S]  frames sampled (at most max_video_frames)
    video_timestamps  list of float64 [T_v]     seconds from the clip start
    audio_mel   float32 [n_aud, n_mels, F]      Whisper log-mel (F = 3000, or unpadded)
    audio_frames int64 [n_aud]                  mel frames that hold audio
    audio_video list[int | None]                per audio item: the video (index among videos)
                                                whose track it is
    audio_times list[(float, float)]            per audio item: (start, end) seconds on its
                                                source's clock (the video's for a track)

Bad samples are skipped (data/bad_samples.py): `__getitem__` returns None, adds one to
`skip_counts[reason]` (reasons in `READ_SKIP_REASONS`) and logs the first few with shard and
key; with `strict=True` it raises `BadSampleError` naming shard and key instead. `skip_counts`
counts reads in this process (a DataLoader worker has its own): the mixture wraps the counts of
every item it passed over into the item it returns, so the training loop can sum them. Reading
the stored parts of a sample is data/sample_reader.py's `SampleReader`.
"""
from __future__ import annotations

import collections
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_omni.contract import tmrope
from megatron_omni.contract.media import PLACEHOLDERS, MediaTokens
from megatron_omni.data.bad_samples import SkipCounter, SkipSample
from megatron_omni.data.media_items import (AUDIO_SAMPLE_RATE, AudioInfo, ImageInfo, VideoInfo,
                                            read_media_sizes, unpack_frames)
from megatron_omni.data.multimodal import features, images as image_io
from megatron_omni.data.multimodal.expand import Expander, media_positions, sample_frame_indices
from megatron_omni.data.sample_format import MEDIA_SIZES_SUFFIX
from megatron_omni.data.sample_reader import SampleReader


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


class SkippingDataset(torch.utils.data.Dataset):
    """A map-style dataset whose `_item` raises SkipSample for a bad item: `__getitem__` then
    returns None and hands the skip, named by `where(index)`, to `skips` (which raises
    BadSampleError under strict). `skip_counts` counts the skips of this process (a DataLoader
    worker has its own)."""

    skips: SkipCounter

    @property
    def skip_counts(self) -> collections.Counter:
        return self.skips.counts

    def where(self, index: int) -> str:
        raise NotImplementedError

    def _item(self, index: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self._item(index)
        except SkipSample as err:
            self.skips.skip(err, self.where(index))
            return None


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
        self.expander = Expander(self.placeholder_id, self.eod_id, config.media_tokens,
                                 config.compute_position_ids)
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
        return media_positions(self.config.media_tokens, kind, size, self.config.max_video_frames,
                               self.config.pad_audio_to_30s)

    # ------------------------------------------------------------------ decoding

    def _item(self, index: int) -> dict:
        shard_name, key, tokens, mask, meta, media = self.reader.raw(index)
        found = [self.placeholder_kind[t] for t in tokens.tolist() if t in self.placeholder_kind]
        stored = [m.kind for m in meta.media]
        if found != stored:
            raise SkipSample("placeholder_mismatch", f"placeholders {found} but media {stored}")
        is_text = ~np.isin(tokens, list(self.placeholder_kind) + [self.eod_id])
        if len(tokens) == 0 or not (is_text & mask).any():
            raise SkipSample("empty_text", "no text token is a training target")

        cfg = self.config
        images, videos, stamps, mels, frames, audio_video, times = [], [], [], [], [], [], []
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
                times.append((info.start, info.start + info.duration))
        images = self._images(encoded_images)

        size = cfg.image_size
        item = {
            "id": key, "shard": shard_name, "kind": meta.kind, "media_order": order,
            "images": images if images is not None else torch.zeros(0, 3, size, size),
            "videos": videos, "video_timestamps": stamps,
            "audio_mel": (torch.stack(mels) if mels
                          else torch.zeros(0, cfg.n_mels, features.N_FRAMES)),
            "audio_frames": torch.tensor(frames, dtype=torch.long),
            "audio_video": audio_video, "audio_times": times,
        }
        item = self.expander.expand(tokens, mask, item)
        planned = int(self.planned_lengths()[index])
        if item["expanded_length"] != planned:
            raise SkipSample("bad_metadata", f"{item['expanded_length']} positions, "
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
                    raise SkipSample("corrupt_image", f"{type(err).__name__}: {err}") from None
                if size != (info.width, info.height):
                    raise SkipSample("corrupt_image", f"header {size}, metadata "
                                                 f"{(info.width, info.height)}")
            if self._dali is None:
                self._dali = image_io.DaliImageDecoder(cfg.image_size, cfg.image_mean,
                                                       cfg.image_std)
            try:
                return self._dali([data for _, data in encoded])
            except RuntimeError as err:
                raise SkipSample("corrupt_image", f"DALI: {err}") from None
        decoded = []
        for info, data in encoded:  # a damaged image is skipped
            try:
                img = image_io.decode_rgb(data)
            except Exception as err:  # noqa: BLE001 - PIL raises many types on damaged input
                raise SkipSample("corrupt_image", f"{type(err).__name__}: {err}") from None
            if img.size != (info.width, info.height):
                raise SkipSample("corrupt_image", f"decoded {img.size}, metadata "
                                             f"{(info.width, info.height)}")
            decoded.append(img)
        return torch.stack([image_io.pil_to_tensor(img, cfg.image_size, cfg.image_mean,
                                                   cfg.image_std) for img in decoded])

    def _video(self, info: VideoInfo, data: bytes) -> tuple[torch.Tensor, np.ndarray]:
        cfg = self.config
        try:
            jpegs, stamps = unpack_frames(data)
        except Exception as err:  # noqa: BLE001
            raise SkipSample("corrupt_video", f"frames npz: {type(err).__name__}: {err}") from None
        if len(jpegs) != info.num_frames or len(stamps) != len(jpegs) or not jpegs:
            raise SkipSample("corrupt_video", f"{len(jpegs)} frames, metadata {info.num_frames}")
        keep = sample_frame_indices(len(jpegs), cfg.max_video_frames)
        out = []
        for j in keep:
            try:
                img = image_io.decode_rgb(jpegs[j])
            except Exception as err:  # noqa: BLE001
                raise SkipSample("corrupt_video", f"frame {j}: {type(err).__name__}: {err}") from None
            out.append(image_io.pil_to_tensor(img, cfg.image_size, cfg.image_mean, cfg.image_std))
        return torch.stack(out), np.asarray(stamps, np.float64)[keep]

    def _audio(self, info: AudioInfo, data: bytes) -> tuple[torch.Tensor, int]:
        import soundfile

        if info.sample_rate != AUDIO_SAMPLE_RATE:
            raise SkipSample("wrong_sample_rate", f"metadata says {info.sample_rate} Hz")
        try:
            wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001 - libsndfile errors on damaged input
            raise SkipSample("corrupt_audio", f"{type(err).__name__}: {err}") from None
        if rate != AUDIO_SAMPLE_RATE:
            raise SkipSample("wrong_sample_rate", f"stored at {rate} Hz, expected {AUDIO_SAMPLE_RATE}")
        if wave.shape[1] != 1 or len(wave) > info.num_samples or not np.isfinite(wave).all():
            raise SkipSample("corrupt_audio", f"{wave.shape} samples, metadata {info.num_samples}")
        if len(wave) < info.num_samples:
            raise SkipSample("truncated_audio", f"{len(wave)} of {info.num_samples} samples")
        wave = wave[:, 0]
        pad = self.config.pad_audio_to_30s
        return features.log_mel(wave, self.config.n_mels, pad), features.num_mel_frames(
            len(wave), pad)

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
        placeholder_id = {kind: tokenizer.special_ids[t] for kind, t in PLACEHOLDERS.items()}
        self.placeholders = np.array(list(placeholder_id.values()))
        self.eod_id = tokenizer.eod_id
        self.expander = Expander(placeholder_id, self.eod_id, config.media_tokens,
                                 config.compute_position_ids)

    def __len__(self) -> int:
        return len(self.documents)

    def planned_lengths(self) -> np.ndarray:
        return np.asarray(self.documents.sequence_lengths, np.int64)

    def where(self, index: int) -> str:
        return f"{self.prefix}.bin document {index}"

    def _item(self, index: int) -> dict:
        tokens = np.array(self.documents[index], dtype=np.int64)
        if np.isin(tokens, self.placeholders).any():
            raise SkipSample("placeholder_mismatch", "placeholder ids in a text document")
        if not (tokens != self.eod_id).any():
            raise SkipSample("empty_text", "no text token")
        size, n = self.config.image_size, len(tokens)
        item = {"id": f"{Path(self.prefix).name}:{index}", "kind": self.kind, "media_order": [],
                "images": torch.zeros(0, 3, size, size), "videos": [], "video_timestamps": [],
                "audio_mel": torch.zeros(0, self.config.n_mels, features.N_FRAMES),
                "audio_frames": torch.zeros(0, dtype=torch.long), "audio_video": [],
                "audio_times": []}
        return self.expander.finish(item, tokens, np.ones(n, bool), np.full(n, -1),
                                    [tmrope.TextSpan(n)])

