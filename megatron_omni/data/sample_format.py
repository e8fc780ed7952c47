"""The multimodal sample format: what offline preprocessing (data_prep/multimodal/) writes and the
training loaders read. This module is its one definition: the folder, manifest, ids and token
streams here; each media item's metadata, sizes and stored encoding in media_items.py; reading
samples back (`SampleReader`, `iter_samples`, `read_sample`) in sample_reader.py.

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
order; `sample_reader.Sample.check` verifies this. Every sample ends with `<eod>`.

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

Media in the tar (media_items.py), field `<index>.<ext>` for media item `index` (`media_field`),
next to `<key>.json` (`SampleMeta`):
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
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_omni.data.media_items import MediaInfo, media_from_json, media_to_json

FORMAT_NAME = "megatron-omni-multimodal"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
LOSS_MASK_SUFFIX = "_loss_mask"
MEDIA_SIZES_SUFFIX = ".media.json"

from megatron_omni.contract.media import PLACEHOLDERS  # noqa: E402 - defined in the contract
_PLACEHOLDER_RE = re.compile("(" + "|".join(map(re.escape, PLACEHOLDERS.values())) + ")")
_KIND_OF_PLACEHOLDER = {text: kind for kind, text in PLACEHOLDERS.items()}

TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>\n"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


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


def build_token_stream(pieces: Sequence[Piece], tokenizer, eod_loss: bool,
                       starts: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(tokens, loss mask) of `pieces` followed by `<eod>`.

    Each Text is encoded on its own (`tokenizer.encode`), so a caption's tokens are exactly
    `tokenizer.encode(caption)`; each Placeholder is its special id with mask 0. `starts`, when
    given, receives the token offset at which each piece begins.
    """
    tokens: list[int] = []
    mask: list[int] = []
    for piece in pieces:
        if starts is not None:
            starts.append(len(tokens))
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
