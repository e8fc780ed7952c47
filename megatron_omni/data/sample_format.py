"""The multimodal sample format: what offline preprocessing (data_prep/multimodal/) writes and the
training loaders read. This module is its one definition.

A preprocessed corpus is one folder:

    manifest.json                    `Manifest`: kind, source files, tokenizer (path, sha256),
                                     token dtype, options, per-shard counts, sizes and skips
    shard-00000.bin / .idx           tokens: a Megatron indexed dataset, one sequence per sample
    shard-00000_loss_mask.bin / .idx per-token loss mask (uint8 0/1): an indexed dataset with
                                     exactly the same sequence lengths
    shard-00000.tar                  media and metadata: a webdataset shard, one sample per key
    shard-00000.media.json           per sample, the kind and size of each media item
                                     (`media_sizes`): what the loader needs to know how many
                                     positions a sample takes once its placeholders are expanded,
                                     without opening the tar
    ...

Sample `d` of a shard is document `d` of both indexed datasets and the `d`-th key of the tar
(keys are written in document order). Its id, which is also its tar key, is
`<shard index:05d>-<d:06d>` (`sample_id`); `locate` maps an id to its files and positions.

Tokens. Text is tokenized piece by piece (`build_token_stream`); each media item is ONE
placeholder token (`<image>`, `<video>` or `<audio>` from the tokenizer's special ids) at the place
it is read or heard. The model replaces every placeholder by that item's encoder tokens, so the
number of placeholders equals the number of media items and their kinds match the media list in
order; `Sample.check` verifies this. Every sample ends with `<eod>`.

Loss mask. `loss_mask[i] == 1` means token `i` is a training target (the prediction made at
position `i - 1` is scored). Placeholders are never targets. Pretraining kinds (captions,
interleaved documents, transcripts, video text) mark all text and `<eod>` as targets;
conversations mark only the assistant turns' content and their turn-end markers
(`render_conversation`).

Why a parallel loss-mask dataset and not `IndexedDatasetBuilder(multimodal=True)` modes: modes
are per sequence, so a token-exact mask would cut every sample into one sequence per masked
span, and megatron-core's GPTDataset treats each sequence as a document, so such a binary would
no longer read as one document per sample. A second indexed dataset keeps one sequence per sample
in both files, costs one byte per token (the media dwarf it), and reads with the same
`IndexedDataset` class.

Media in the tar, field `<index>.<ext>` for media item `index` (`media_field`), next to
`<key>.json` (`SampleMeta`):
    image  original JPEG/PNG/WebP bytes (anything else re-encoded as PNG): `<i>.jpg|png|webp`
    audio  16 kHz mono FLAC (16-bit), at most 30 s each (longer audio becomes consecutive
           items): `<i>.flac`
    video  frames sampled at `fps` (at most `max_frames`, spread over the clip when longer), each
           JPEG-encoded, in one uncompressed npz (`pack_frames`): `<i>.frames.npz`; a video's
           audio track is separate `audio` items right after it (placeholders
           `<video><audio>...`), each naming the video in `AudioInfo.video_index`.
Webdataset groups members by the name before the first dot, so keys contain no dots.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

FORMAT_NAME = "megatron-omni-multimodal"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
LOSS_MASK_SUFFIX = "_loss_mask"
MEDIA_SIZES_SUFFIX = ".media.json"
AUDIO_SAMPLE_RATE = 16000
MAX_AUDIO_SECONDS = 30.0

from megatron_omni.contract.media import PLACEHOLDERS  # noqa: E402 - defined in the contract
_PLACEHOLDER_RE = re.compile("(" + "|".join(map(re.escape, PLACEHOLDERS.values())) + ")")
_KIND_OF_PLACEHOLDER = {text: kind for kind, text in PLACEHOLDERS.items()}

TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>\n"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


# ----------------------------------------------------------------------------- media metadata

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


@dataclass
class SampleMeta:
    """`<key>.json` in the tar.

    Attributes:
        id: the sample id (= tar key), see `sample_id`.
        kind: the source kind that made it ("image_caption", "interleaved", "audio_transcript",
            "video_caption", "conversation").
        media: media items in placeholder order; item i is tar field `media_field(i, info)`.
        source: where it came from: {"file": input path, "loc": line number or tar key,
            "id": the record's own id or None}.
        extra: kind-specific data, e.g. subtitles with their times.
    """

    id: str
    kind: str
    media: list[MediaInfo]
    source: dict
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "media": [media_to_json(m) for m in self.media],
                "source": self.source, "extra": self.extra}

    @classmethod
    def from_json(cls, obj: dict) -> SampleMeta:
        return cls(obj["id"], obj["kind"], [media_from_json(m) for m in obj["media"]],
                   obj["source"], obj.get("extra", {}))


# ----------------------------------------------------------------------------- ids and manifest

def sample_id(shard_index: int, doc_index: int) -> str:
    """The id and tar key of document `doc_index` of shard `shard_index`."""
    return f"{shard_index:05d}-{doc_index:06d}"


def shard_name(shard_index: int) -> str:
    """File stem of shard `shard_index`: `<name>.bin/.idx`, `<name>_loss_mask.*`, `<name>.tar`."""
    return f"shard-{shard_index:05d}"


@dataclass
class ShardInfo:
    """One shard: its files, what went in and what came out.

    Attributes:
        name: file stem, `shard_name(index)`.
        source: the input file its records came from.
        first, last: location (line number or tar key) of its first and last input record.
        records: input records read; samples: records kept; skipped: the rest, per reason.
            A shard without samples has empty files, which megatron-core's IndexedDataset
            cannot open (it memory-maps the .bin): readers skip it.
        tokens, loss_tokens: token count and loss-mask sum over its samples.
        media: stored media items per kind.
        bytes: sizes of its files: "tokens" (.bin), "loss_mask" (.bin), "tar".
        fingerprint: hash of the options, tokenizer and raw input records that made it (a rerun
            reuses the shard only when this matches).
    """

    name: str
    source: str
    first: int | str
    last: int | str
    records: int
    samples: int
    tokens: int
    loss_tokens: int
    media: dict[str, int]
    bytes: dict[str, int]
    skipped: dict[str, int]
    fingerprint: str

    @property
    def index(self) -> int:
        return int(self.name.rsplit("-", 1)[1])


@dataclass
class Manifest:
    """`manifest.json`: written last, so a folder with a manifest is complete.

    Attributes:
        kind: source kind (see `SampleMeta.kind`).
        source: the input files, in order.
        tokenizer: {"path", "sha256", "vocab_size"}.
        dtype: numpy dtype name of the tokens.
        options: the preprocessing options that shaped the samples.
        shards: in order; global sample order is shard order, then document order.
    The JSON also holds totals ("counts", "sizes", "skipped"), derived from the shards.
    """

    kind: str
    source: list[str]
    tokenizer: dict
    dtype: str
    options: dict
    shards: list[ShardInfo]
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def totals(self) -> dict:
        """Sums over shards: counts (records, samples, tokens, loss_tokens, media per kind),
        sizes in bytes per file kind, and skipped records per reason."""
        counts = {"records": 0, "samples": 0, "tokens": 0, "loss_tokens": 0,
                  "media": dict.fromkeys(PLACEHOLDERS, 0)}
        sizes: dict[str, int] = {}
        skipped: dict[str, int] = {}
        for shard in self.shards:
            for key in ("records", "samples", "tokens", "loss_tokens"):
                counts[key] += getattr(shard, key)
            for kind, n in shard.media.items():
                counts["media"][kind] += n
            for key, n in shard.bytes.items():
                sizes[key] = sizes.get(key, 0) + n
            for reason, n in shard.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        return {"counts": counts, "sizes": sizes, "skipped": skipped}

    def to_json(self) -> dict:
        return {"format": self.format, "version": self.version, "kind": self.kind,
                "source": self.source, "tokenizer": self.tokenizer, "dtype": self.dtype,
                "options": self.options, **self.totals(),
                "shards": [dataclasses.asdict(s) for s in self.shards]}

    @classmethod
    def from_json(cls, obj: dict) -> Manifest:
        if obj.get("format") != FORMAT_NAME or obj.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT_NAME} v{FORMAT_VERSION} manifest "
                             f"(format {obj.get('format')!r}, version {obj.get('version')!r})")
        return cls(obj["kind"], obj["source"], obj["tokenizer"], obj["dtype"], obj["options"],
                   [ShardInfo(**s) for s in obj["shards"]])

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: the folder was not preprocessed, or "
                                    f"the run did not finish (rerun it to resume)")
        return cls.from_json(json.loads(path.read_text()))


@dataclass(frozen=True)
class SampleLocation:
    """Where sample `id` lives: document `doc_index` of `<prefix>` and `<prefix>_loss_mask`,
    key `key` of `tar`; `global_index` counts samples over all shards in order."""

    id: str
    shard: str
    doc_index: int
    global_index: int
    key: str
    prefix: Path
    tar: Path


def locate(folder: str | Path, manifest: Manifest, sid: str) -> SampleLocation:
    """Map a sample id to its shard files and positions; ValueError for an unknown id."""
    match = re.fullmatch(r"(\d{5})-(\d{6})", sid)
    names = [s.name for s in manifest.shards]
    name = shard_name(int(match.group(1))) if match else None
    if name not in names:
        raise ValueError(f"no sample {sid!r} in {folder} (ids look like 00000-000000)")
    position = names.index(name)
    doc = int(match.group(2))
    if doc >= manifest.shards[position].samples:
        raise ValueError(f"no sample {sid!r}: shard {name} has "
                         f"{manifest.shards[position].samples} samples")
    before = sum(s.samples for s in manifest.shards[:position])
    folder = Path(folder)
    return SampleLocation(sid, name, doc, before + doc, sid, folder / name,
                          folder / f"{name}.tar")


# ----------------------------------------------------------------------------- token streams

@dataclass(frozen=True)
class Text:
    """Text to tokenize; `loss` marks its tokens as training targets."""

    text: str
    loss: bool


@dataclass(frozen=True)
class Placeholder:
    """One media item's placeholder token; `kind` is "image", "video" or "audio"."""

    kind: str


Piece = Text | Placeholder


def split_placeholders(text: str, loss: bool) -> list[Piece]:
    """`text` cut at literal "<image>", "<video>" and "<audio>" into Text and Placeholder pieces
    (empty texts dropped)."""
    pieces: list[Piece] = []
    for part in _PLACEHOLDER_RE.split(text):
        if part in _KIND_OF_PLACEHOLDER:
            pieces.append(Placeholder(_KIND_OF_PLACEHOLDER[part]))
        elif part:
            pieces.append(Text(part, loss))
    return pieces


def placeholder_kinds(pieces: Sequence[Piece]) -> list[str]:
    return [p.kind for p in pieces if isinstance(p, Placeholder)]


def render_conversation(turns: Sequence[tuple[str, list[Piece]]]) -> list[Piece]:
    """Pieces of a conversation: each turn is `<|im_start|>{role}\\n` + content + `<|im_end|>\\n`.

    `turns` holds (role, content pieces) with role "user", "assistant" or "system". Only the
    assistant turns' content text and their `<|im_end|>\\n` are targets; headers, other turns
    and every placeholder are not.
    """
    pieces: list[Piece] = []
    for role, content in turns:
        assistant = role == "assistant"
        pieces.append(Text(f"{TURN_START}{role}\n", False))
        pieces.extend(Text(p.text, assistant) if isinstance(p, Text) else p for p in content)
        pieces.append(Text(TURN_END, assistant))
    return pieces


def build_token_stream(pieces: Sequence[Piece], tokenizer, eod_loss: bool
                       ) -> tuple[list[int], list[int]]:
    """(tokens, loss mask) of `pieces` followed by `<eod>`.

    Each Text is encoded on its own (`tokenizer.encode`), so a caption's tokens are exactly
    `tokenizer.encode(caption)`; each Placeholder is its special id with mask 0.
    """
    tokens: list[int] = []
    mask: list[int] = []
    for piece in pieces:
        if isinstance(piece, Placeholder):
            tokens.append(tokenizer.special_ids[PLACEHOLDERS[piece.kind]])
            mask.append(0)
        else:
            ids = tokenizer.encode(piece.text)
            tokens.extend(ids)
            mask.extend([int(piece.loss)] * len(ids))
    tokens.append(tokenizer.eod_id)
    mask.append(int(eod_loss))
    return tokens, mask


# ----------------------------------------------------------------------------- media codecs

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


# ----------------------------------------------------------------------------- reading

@dataclass
class Sample:
    """One sample read back: tokens and loss mask (same length), metadata, and its media in
    placeholder order (decoded arrays, or raw bytes when read with decode=False)."""

    id: str
    tokens: np.ndarray
    loss_mask: np.ndarray
    meta: SampleMeta
    media: list

    def check(self, tokenizer) -> None:
        """Raise ValueError unless the placeholders match the media list in number and kind."""
        by_id = {tokenizer.special_ids[text]: kind for kind, text in PLACEHOLDERS.items()}
        found = [by_id[t] for t in self.tokens.tolist() if t in by_id]
        stored = [m.kind for m in self.meta.media]
        if found != stored:
            raise ValueError(f"sample {self.id}: placeholders {found} but media {stored}")


def iter_tar_groups(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) per sample of a webdataset tar, in member order: the key is a
    member name up to its first dot, the field the rest; consecutive members share a key."""
    key, fields = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name_key, _, name_field = member.name.partition(".")
            if name_key != key and key is not None:
                yield key, fields
                fields = {}
            key = name_key
            fields[name_field] = tar.extractfile(member).read()
    if key is not None:
        yield key, fields


def iter_samples(folder: str | Path, decode: bool = True) -> Iterator[Sample]:
    """All samples of a preprocessed folder, shard by shard, in order."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    folder = Path(folder)
    for shard in Manifest.load(folder).shards:
        if shard.samples == 0:
            continue
        tokens = IndexedDataset(str(folder / shard.name))
        masks = IndexedDataset(str(folder / shard.name) + LOSS_MASK_SUFFIX)
        groups = iter_tar_groups(folder / f"{shard.name}.tar")
        for doc, (key, fields) in zip(range(shard.samples), groups, strict=True):
            yield _sample(key, tokens[doc], masks[doc], fields, decode)


def read_sample(folder: str | Path, sid: str, decode: bool = True) -> Sample:
    """The sample with id `sid` (`locate`), read directly."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    loc = locate(folder, Manifest.load(folder), sid)
    with tarfile.open(loc.tar) as tar:
        fields = {m.name.partition(".")[2]: tar.extractfile(m).read()
                  for m in tar.getmembers() if m.name.partition(".")[0] == loc.key}
    tokens = IndexedDataset(str(loc.prefix))
    masks = IndexedDataset(str(loc.prefix) + LOSS_MASK_SUFFIX)
    return _sample(loc.key, tokens[loc.doc_index], masks[loc.doc_index], fields, decode)


def _sample(key: str, tokens: np.ndarray, mask: np.ndarray, fields: dict[str, bytes],
            decode: bool) -> Sample:
    # `tokens` and `mask` view an IndexedDataset's memory map, which closes with the dataset:
    # the caller keeps the datasets alive until the copies below are made.
    meta = SampleMeta.from_json(json.loads(fields["json"]))
    if meta.id != key or len(tokens) != len(mask):
        raise ValueError(f"sample {key}: metadata id {meta.id!r}, {len(tokens)} tokens and "
                         f"{len(mask)} mask values (files out of step)")
    media = [fields[media_field(i, info)] for i, info in enumerate(meta.media)]
    if decode:
        media = [decode_media(info, data) for info, data in zip(meta.media, media)]
    return Sample(key, np.array(tokens), np.array(mask, dtype=bool), meta, media)
