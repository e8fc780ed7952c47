"""Media items of multimodal samples (the format of sample_format.py): their metadata
(`ImageInfo`, `AudioInfo`, `VideoInfo`, listed in each sample's `SampleMeta`), their sizes per
shard (`<shard>.media.json`), their tar field names, and how each is stored (`pack_frames`) and
decoded (`decode_media`)."""
from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

AUDIO_SAMPLE_RATE = 16000
MAX_AUDIO_SECONDS = 30.0


@dataclass(frozen=True)
class ImageInfo:
    """An image stored as its encoded bytes; `ext` is "jpg", "png" or "webp"."""

    ext: str
    width: int
    height: int
    kind: ClassVar[str] = "image"


@dataclass(frozen=True)
class AudioInfo:
    """A mono 16-bit FLAC clip of `num_samples` samples at `sample_rate` (always 16 kHz).

    Attributes:
        start: where the clip begins in its source recording (or video), in seconds.
        source_sample_rate: the rate of the source before resampling.
        video_index: for a clip of a video's audio track, the media index of that video (its
            frame timestamps and `start` share one clock: TMRoPE's audio-video span); None for
            standalone audio.
    """

    num_samples: int
    start: float
    source_sample_rate: int
    video_index: int | None = None
    sample_rate: int = AUDIO_SAMPLE_RATE
    ext: str = "flac"
    kind: ClassVar[str] = "audio"

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclass(frozen=True)
class VideoInfo:
    """Frames of a video (`pack_frames`): `num_frames` RGB frames of `height` x `width`.

    Attributes:
        fps: the sampling rate used: the requested fps, or lower when the clip was longer than
            max_frames / fps and the frames were spread over all of it.
        timestamps: presentation time of each frame in the source, seconds.
        duration: the source clip's duration, seconds.
    """

    num_frames: int
    width: int
    height: int
    fps: float
    timestamps: tuple[float, ...]
    duration: float
    ext: str = "frames.npz"
    kind: ClassVar[str] = "video"


MediaInfo = ImageInfo | AudioInfo | VideoInfo
_MEDIA_CLASSES = {cls.kind: cls for cls in (ImageInfo, AudioInfo, VideoInfo)}


def media_field(index: int, info: MediaInfo) -> str:
    """The tar field (member name after `<key>.`) of media item `index`."""
    return f"{index}.{info.ext}"


def media_to_json(info: MediaInfo) -> dict:
    return {"kind": info.kind, **dataclasses.asdict(info)}


def media_sizes(media: Sequence[MediaInfo]) -> list[list]:
    """A sample's entry of `<shard>.media.json`: [kind, size] per item, size = 1 for an image,
    the stored frames of a video, the samples (at 16 kHz) of an audio clip."""
    return [[m.kind, 1 if isinstance(m, ImageInfo) else
             m.num_frames if isinstance(m, VideoInfo) else m.num_samples] for m in media]


def write_media_sizes(path: str | Path, samples: Sequence[Sequence[MediaInfo]]) -> None:
    """`<shard>.media.json`: {"samples": [media_sizes(sample media) per sample]}."""
    Path(path).write_text(json.dumps({"samples": [media_sizes(m) for m in samples]}))


def read_media_sizes(path: str | Path) -> list[list[list]]:
    """The per-sample [kind, size] lists of a `<shard>.media.json`."""
    return json.loads(Path(path).read_text())["samples"]


def media_from_json(obj: dict) -> MediaInfo:
    obj = dict(obj)
    cls = _MEDIA_CLASSES[obj.pop("kind")]
    if cls is VideoInfo:
        obj["timestamps"] = tuple(obj["timestamps"])
    return cls(**obj)



def pack_frames(jpegs: Sequence[bytes], timestamps: Sequence[float]) -> bytes:
    """An npz (stored, deterministic bytes) of JPEG-encoded frames: `jpeg` (uint8, all frames
    concatenated), `offsets` (int64, frame i is jpeg[offsets[i]:offsets[i + 1]]) and
    `timestamps` (float64 seconds)."""
    offsets = np.zeros(len(jpegs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(j) for j in jpegs])
    arrays = {"jpeg": np.frombuffer(b"".join(jpegs), np.uint8), "offsets": offsets,
              "timestamps": np.asarray(timestamps, np.float64)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, array, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        npy.getvalue())
    return buf.getvalue()


def unpack_frames(data: bytes) -> tuple[list[bytes], np.ndarray]:
    """(JPEG bytes per frame, timestamps) of a `pack_frames` npz."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        jpeg, offsets, timestamps = npz["jpeg"], npz["offsets"], npz["timestamps"]
    return [jpeg[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])], timestamps


def decode_media(info: MediaInfo, data: bytes) -> np.ndarray:
    """Decode one stored item: image -> uint8 [H, W, 3]; audio -> float32 [num_samples] at
    16 kHz; video -> uint8 [T, H, W, 3]."""
    from PIL import Image

    if isinstance(info, ImageInfo):
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    if isinstance(info, AudioInfo):
        import soundfile

        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        if rate != info.sample_rate:
            raise ValueError(f"audio item stored at {rate} Hz, metadata says {info.sample_rate}")
        return wave
    jpegs, _ = unpack_frames(data)
    frames = []
    for jpeg in jpegs:
        with Image.open(io.BytesIO(jpeg)) as img:
            frames.append(np.asarray(img.convert("RGB")))
    return np.stack(frames)
