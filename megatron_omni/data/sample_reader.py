"""Reading samples of a prepared folder (the format of sample_format.py) back.

`SampleReader` is the one reader: sample i (global order: shard order, then document order) as
its stored parts (`RawSample`: tokens, format loss mask, metadata, media bytes), read lazily
(each process opens a shard's indexed datasets and indexes its tar headers on first use) and
checked enough to be usable; a damaged sample raises `SkipSample` (missing_member,
bad_metadata). The training dataset decodes from it; `iter_samples` and `read_sample` give
whole `Sample`s with decoded media, for tools and tests.
"""
from __future__ import annotations

import bisect
import collections
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from megatron_omni.config.load import ConfigError
from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.index_check import IndexFileError, check_indexed_dataset
from megatron_omni.data.media_items import decode_media, media_field
from megatron_omni.data.sample_format import (LOSS_MASK_SUFFIX, PLACEHOLDERS, Manifest,
                                              SampleMeta, locate, sample_id)

log = logging.getLogger(__name__)


@dataclass
class ShardFiles:
    """A shard with samples, and its files once opened (per process)."""

    name: str
    index: int
    samples: int
    tokens: object = None        # IndexedDataset, opened on first use
    masks: object = None
    members: dict | None = None  # key -> {field: (offset, size)}


class RawSample(NamedTuple):
    """A sample as stored: tokens (int64), format loss mask (bool), metadata and the bytes of
    each media item in placeholder order."""

    shard: str
    key: str
    tokens: np.ndarray
    mask: np.ndarray
    meta: SampleMeta
    media: list[bytes]


class SampleReader:
    """The samples of one prepared folder by global index (module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.shards = [ShardFiles(s.name, s.index, s.samples) for s in self.manifest.shards
                       if s.samples > 0]
        self._starts = np.cumsum([0] + [s.samples for s in self.shards]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[ShardFiles, int]:
        """(shard, document index in it) of sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        position = bisect.bisect_right(self._starts, index) - 1
        return self.shards[position], index - self._starts[position]

    def where(self, index: int) -> str:
        """Sample `index` named by its tar and key, for messages."""
        shard, doc = self.locate(index)
        return f"{self.folder}/{shard.name}.tar key {sample_id(shard.index, doc)}"

    def open(self, shard: ShardFiles, tar: bool = True) -> None:
        """Open the shard's indexed datasets and, with `tar`, index its tar (headers only)."""
        if shard.tokens is None:
            from megatron.core.datasets.indexed_dataset import IndexedDataset
            prefix = str(self.folder / shard.name)
            for files in (prefix, prefix + LOSS_MASK_SUFFIX):
                try:  # every rank opens the same shards: each fails alike, none waits for another
                    check_indexed_dataset(files)
                except IndexFileError as err:
                    raise ConfigError(f"prepared folder {self.folder}: {err}") from None
            shard.tokens = IndexedDataset(prefix)
            shard.masks = IndexedDataset(prefix + LOSS_MASK_SUFFIX)
        if tar and shard.members is None:
            shard.members = index_tar(self.folder / f"{shard.name}.tar")

    def raw(self, index: int) -> RawSample:
        """Sample `index` as stored; raises SkipSample for a damaged one."""
        shard, doc = self.locate(index)
        self.open(shard)
        key = sample_id(shard.index, doc)
        tokens = np.array(shard.tokens[doc], dtype=np.int64)
        mask = np.array(shard.masks[doc], dtype=bool)
        data = self._member(shard, key, "json")
        try:
            meta = SampleMeta.from_json(json.loads(data))
        except Exception as err:  # noqa: BLE001 - any damage to the JSON means unusable metadata
            raise SkipSample("bad_metadata", f"{type(err).__name__}: {err}") from None
        if meta.id != key or len(tokens) != len(mask):
            raise SkipSample("bad_metadata", f"metadata id {meta.id!r}, {len(tokens)} tokens, "
                                             f"{len(mask)} mask values")
        media = [self._member(shard, key, media_field(i, info))
                 for i, info in enumerate(meta.media)]
        return RawSample(shard.name, key, tokens, mask, meta, media)

    def _member(self, shard: ShardFiles, key: str, field: str) -> bytes:
        where = shard.members.get(key, {}).get(field)
        if where is None:
            raise SkipSample("missing_member", f"no member {key}.{field}")
        offset, size = where
        with open(self.folder / f"{shard.name}.tar", "rb") as f:
            f.seek(offset)
            return f.read(size)  # may be short for a truncated tar: the decoder then fails


def index_tar(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {field: (data offset, size)}} of a webdataset tar, from its headers. A tar cut
    short keeps the members whose headers were read (their data may be short)."""
    members: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
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
    return dict(members)


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


def iter_samples(folder: str | Path, decode: bool = True) -> Iterator[Sample]:
    """All samples of a prepared folder, in order (SkipSample at a damaged one)."""
    reader = SampleReader(folder)
    for index in range(len(reader)):
        yield _sample(reader.raw(index), decode)


def read_sample(folder: str | Path, sid: str, decode: bool = True) -> Sample:
    """The sample with id `sid` (`sample_format.locate`; ValueError for an unknown id)."""
    reader = SampleReader(folder)
    return _sample(reader.raw(locate(folder, reader.manifest, sid).global_index), decode)


def _sample(raw: RawSample, decode: bool) -> Sample:
    media = raw.media
    if decode:
        media = [decode_media(info, data) for info, data in zip(raw.meta.media, media)]
    return Sample(raw.key, raw.tokens, raw.mask, raw.meta, media)
