"""The machinery every multimodal preprocessing CLI shares: shards, workers, resume, manifest.

Input records (jsonl lines, or samples of webdataset tars) are cut into shards of up to
`samples_per_shard` consecutive records of one file. A worker turns each record into a sample
with its `SampleSource` (the kind-specific part: image captions, conversations, ...), tokenizes
it (`build_token_stream`) and writes the shard's files as megatron_omni/data/sample_format.py
defines them. Bad records are skipped and counted per reason (megatron_omni/data/bad_samples.py
`PREPARE_SKIP_REASONS`); under `strict` the first one stops the run with a `BadSampleError`
naming file and line (or tar key). The command line is in `cli`.

Atomic and resumable: a shard's files are written under temporary names and renamed into place
when complete, then a marker `<shard>.done.json` records its `ShardInfo` and a fingerprint of
the options, tokenizer and raw records that made it. A rerun reuses every shard whose marker
matches and writes the rest. `manifest.json` is removed when a run starts and written last, so
a folder holding a manifest is complete and consistent. (A changed media file behind an
unchanged record is not noticed: delete the shard's marker to redo it.) A run also deletes the
temporary files that killed runs left in the folder. No sample at all is an error (no manifest is
written) unless `allow_empty`.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from megatron_omni.data.bad_samples import PREPARE_SKIP_REASONS, SkipCounter, SkipSample
from megatron_omni.data.media_items import MediaInfo, media_field, write_media_sizes
from megatron_omni.data.sample_format import (FORMAT_VERSION, LOSS_MASK_SUFFIX, MANIFEST_NAME,
                                              MEDIA_SIZES_SUFFIX, Manifest, Piece, SampleMeta,
                                              ShardInfo, build_token_stream, placeholder_kinds,
                                              sample_id, shard_name)
from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.cli_io import (atomic_file, atomic_output, check_not_empty,
                                   remove_stale_temps)
from omni_data_prep.indexed_writer import IndexedWriter, optimal_dtype
from omni_data_prep.progress import Progress
from omni_data_prep.text_records import Chunk, expand_inputs, read_chunks

MARKER_SUFFIX = ".done.json"


def option(default, doc: str):
    """A SampleSource field that is also the command-line option `--<name>` (see cli), with
    `doc` as its help."""
    return field(default=default, metadata={"help": doc})


@dataclass
class Prepared:
    """What a SampleSource makes of one record: the token pieces, the media in placeholder
    order as (info, stored bytes), whether `<eod>` is a target, and kind-specific metadata."""

    pieces: list[Piece]
    media: list[tuple[MediaInfo, bytes]]
    eod_loss: bool = True
    extra: dict = field(default_factory=dict)
    marks: tuple[int, ...] = ()
    """Piece indices whose token offsets the runner records as extra["token_offsets"] (e.g. where
    each response of a preference pair starts)."""


@dataclass(frozen=True)
class RecordContext:
    """Resolves media paths of a record: absolute paths as they are, relative ones against
    `media_root` or, when that is None, the folder of the input file."""

    input_dir: Path
    media_root: Path | None

    def resolve(self, value: object, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise SkipSample("bad_field", f"{key} is {value!r}, not a path")
        path = Path(value)
        return path if path.is_absolute() else (self.media_root or self.input_dir) / path


def field_of(record: dict, key: str, kind: type | tuple[type, ...], required: bool = True):
    """`record[key]` checked to be of `kind`: `missing_key` when absent (or None) and
    required, `bad_field` when of another type; None when absent and not required."""
    value = record.get(key)
    if value is None:
        if required:
            raise SkipSample("missing_key", f"no {key!r} (keys: {sorted(record)[:10]})")
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SkipSample("bad_field", f"{key} is {type(value).__name__}")
    return value


def text_of(record: dict, key: str) -> str:
    """The non-blank string `record[key]`, else `missing_key`, `bad_field` or `empty_text`."""
    text = field_of(record, key, str)
    if not text.strip():
        raise SkipSample("empty_text", f"{key} is empty or only whitespace")
    return text


class SampleSource(ABC):
    """The kind-specific part of a CLI: turns one record into a `Prepared` sample.

    Subclasses are dataclasses of their options (they travel to worker processes and into the
    manifest and shard fingerprints), each declared with `option` so that the command line
    offers it; `description` is the command's one-line help.
    """

    kind: ClassVar[str]
    description: ClassVar[str]
    input_suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".json")

    def parse(self, raw: object, chunk: Chunk) -> dict:
        """The record as a dict; `raw` is a jsonl line (bytes) of `chunk`."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SkipSample("invalid_utf8", str(err)) from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SkipSample("malformed_json", str(err)) from None
        if not isinstance(record, dict):
            raise SkipSample("malformed_json", f"not a JSON object but {type(record).__name__}")
        return record

    def chunks(self, paths: Sequence[Path], samples_per_shard: int) -> Iterator[Chunk]:
        """The input cut into shards' worth of raw records."""
        return read_chunks(paths, "", samples_per_shard)

    @abstractmethod
    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        """The sample of `record`; raise SkipSample for a record that cannot be used."""

    def options(self) -> dict:
        return dataclasses.asdict(self)

    def report(self, output_dir: Path, manifest: Manifest) -> str | None:
        """A kind-specific line the command prints after its summary, or None."""
        return None


@dataclass
class _ShardTask:
    index: int
    chunk: Chunk
    fingerprint: str


@dataclass
class _WorkerState:
    source: SampleSource
    tokenizer_path: str
    output_dir: Path
    dtype: type
    strict: bool
    media_root: Path | None

    def __post_init__(self):
        self.tokenizer = load_tokenizer(self.tokenizer_path)


def run(source: SampleSource, inputs: Sequence[str], tokenizer: str | Path,
        output_dir: str | Path, workers: int = 1, samples_per_shard: int = 1000,
        strict: bool = False, media_root: str | Path | None = None,
        progress: bool = True, allow_empty: bool = False) -> Manifest:
    """Preprocess the records of `inputs` (glob patterns) into `output_dir` with `source`.

    Args:
        source: the kind of record and its options.
        inputs: glob patterns of input files, read in order.
        tokenizer: a SentencePiece `.model` or Hugging Face `tokenizer.json` holding the omni
            special tokens.
        output_dir: receives the shards and `manifest.json`; created when missing. Shards left
            by an earlier run with the same options, tokenizer and records are reused.
        workers: processes writing shards; 1 writes them in this process.
        samples_per_shard: input records per shard (a shard never spans two input files).
        strict: raise BadSampleError at the first bad record (in input order) instead of
            skipping it; the manifest is not written then.
        media_root: folder that relative media paths are relative to (default: the folder of
            the input file holding the record).
        progress: print progress lines on stderr (data_prep/progress.py).
        allow_empty: write the manifest even when no record made a sample, instead of raising
            ValueError.

    Returns the Manifest, also written to `output_dir/manifest.json`.
    """
    if workers < 1 or samples_per_shard < 1:
        raise ValueError(f"workers and samples_per_shard must be >= 1, got {workers} and "
                         f"{samples_per_shard}")
    paths = expand_inputs(inputs, source.input_suffixes)
    tok = load_tokenizer(tokenizer)
    tok_info = {"path": str(tokenizer), "sha256": _file_sha256(Path(tokenizer)),
                "vocab_size": tok.vocab_size}
    dtype = optimal_dtype(tok.vocab_size)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    remove_stale_temps(out, "*")

    config = json.dumps({"kind": source.kind, "options": source.options(),
                         "tokenizer": tok_info["sha256"], "format": FORMAT_VERSION},
                        sort_keys=True)
    task_bytes = collections.deque()  # input bytes of the tasks made and not yet done
    tasks = _tasks(source.chunks(paths, samples_per_shard), config, task_bytes)
    state = (source, str(tokenizer), out, dtype, strict,
             Path(media_root) if media_root is not None else None)
    bar = Progress(sum(path.stat().st_size for path in paths), "records", progress)
    with _shard_results(tasks, state, workers) as results:
        shards = _collect(results, task_bytes, bar)
    manifest = Manifest(source.kind, [str(p) for p in paths], tok_info,
                        dtype.name, source.options(), shards)
    totals = manifest.totals()
    check_not_empty(totals["counts"]["samples"], totals["counts"]["records"], totals["skipped"],
                    "samples", allow_empty)
    with atomic_file(out / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=1) + "\n")
    return manifest


def _tasks(chunks: Iterable[Chunk], config: str, task_bytes: collections.deque
           ) -> Iterator[_ShardTask]:
    for index, chunk in enumerate(chunks):
        task_bytes.append(chunk.nbytes)
        yield _ShardTask(index, chunk, _fingerprint(config, chunk))


def _collect(results: Iterable[ShardInfo], task_bytes: collections.deque, bar: Progress
             ) -> list[ShardInfo]:
    """The shards of `results`, reporting progress (`task_bytes`: their input bytes, in order)."""
    shards, skipped = [], collections.Counter()
    for shard in results:
        shards.append(shard)
        skipped.update(shard.skipped)
        bar.update(task_bytes.popleft(), shard.records, shard.tokens, skipped)
    bar.close()
    return shards


@contextlib.contextmanager
def _shard_results(tasks: Iterable[_ShardTask], state: tuple, workers: int
                   ) -> Iterator[Iterator[ShardInfo]]:
    """ShardInfo of every task in order: a matching marker's, or that of a fresh write here or
    in a pool of `workers` (at most 2·workers shards in flight)."""
    out = state[2]
    if workers == 1:
        local = _WorkerState(*state)
        yield _ordered(tasks, out, lambda task: _Ready(write_shard(local, task)), window=1)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=state) as pool:
        yield _ordered(tasks, out, lambda task: pool.apply_async(_write_in_worker, (task,)),
                       window=2 * workers)


class _Ready:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def _ordered(tasks: Iterable[_ShardTask], out: Path, submit: Callable, window: int
             ) -> Iterator[ShardInfo]:
    pending = collections.deque()
    for task in tasks:
        done = _finished_shard(out, task)
        pending.append(_Ready(done) if done is not None else submit(task))
        while len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _finished_shard(out: Path, task: _ShardTask) -> ShardInfo | None:
    name = shard_name(task.index)
    marker = out / f"{name}{MARKER_SUFFIX}"
    if not marker.is_file():
        return None
    info = ShardInfo(**json.loads(marker.read_text()))
    files = [f"{name}.bin", f"{name}.idx", f"{name}{LOSS_MASK_SUFFIX}.bin",
             f"{name}{LOSS_MASK_SUFFIX}.idx", f"{name}.tar", f"{name}{MEDIA_SIZES_SUFFIX}"]
    if info.fingerprint != task.fingerprint or not all((out / f).is_file() for f in files):
        return None
    return info


_WORKER: _WorkerState | None = None


def _init_worker(*state) -> None:
    global _WORKER
    _WORKER = _WorkerState(*state)


def _write_in_worker(task: _ShardTask) -> ShardInfo:
    return write_shard(_WORKER, task)


def write_shard(state: _WorkerState, task: _ShardTask) -> ShardInfo:
    """Turn the task's records into samples and write the shard's files atomically, then its
    marker. Raises BadSampleError at the first bad record under strict."""
    chunk, name = task.chunk, shard_name(task.index)
    prefix = state.output_dir / name
    ctx = RecordContext(Path(chunk.path).parent, state.media_root)
    skips = SkipCounter(state.strict, log_first=0)  # the manifest has the counts
    media_counts = {"image": 0, "video": 0, "audio": 0}
    samples = tokens = loss_tokens = 0
    sample_media: list[list[MediaInfo]] = []
    with (atomic_output(prefix) as (bin_tmp, idx_tmp),
          atomic_output(Path(f"{prefix}{LOSS_MASK_SUFFIX}")) as (mask_bin_tmp, mask_idx_tmp),
          atomic_file(Path(f"{prefix}.tar")) as tar_tmp,
          atomic_file(Path(f"{prefix}{MEDIA_SIZES_SUFFIX}")) as sizes_tmp,
          tarfile.open(tar_tmp, "w", format=tarfile.PAX_FORMAT) as tar,
          IndexedWriter(bin_tmp, state.dtype) as token_writer,
          IndexedWriter(mask_bin_tmp, np.uint8) as mask_writer):
        for location, raw in chunk.records:
            try:
                record = state.source.parse(raw, chunk)
                prepared = state.source.prepare(record, ctx)
                _check_placeholders(prepared)
                starts: list[int] = []
                ids, mask = build_token_stream(prepared.pieces, state.tokenizer,
                                               prepared.eod_loss, starts)
                if prepared.marks:
                    prepared.extra["token_offsets"] = [starts[i] for i in prepared.marks]
            except SkipSample as err:
                skips.skip(err, f"{chunk.path}:{location}")
                continue
            key = sample_id(task.index, samples)
            meta = SampleMeta(key, state.source.kind, [info for info, _ in prepared.media],
                              {"file": chunk.path, "loc": location, "id": _record_id(record)},
                              prepared.extra)
            _add_member(tar, f"{key}.json", json.dumps(meta.to_json()).encode())
            for i, (info, data) in enumerate(prepared.media):
                _add_member(tar, f"{key}.{media_field(i, info)}", data)
                media_counts[info.kind] += 1
            token_writer.add_documents(ids, [len(ids)])
            mask_writer.add_documents(mask, [len(mask)])
            sample_media.append(meta.media)
            samples += 1
            tokens += len(ids)
            loss_tokens += sum(mask)
        tar.close()
        token_writer.finalize(idx_tmp)
        mask_writer.finalize(mask_idx_tmp)
        write_media_sizes(sizes_tmp, sample_media)
        sizes = {"tokens": os.path.getsize(bin_tmp), "loss_mask": os.path.getsize(mask_bin_tmp),
                 "tar": os.path.getsize(tar_tmp)}
    info = ShardInfo(name, chunk.path, chunk.records[0][0], chunk.records[-1][0],
                     len(chunk.records), samples, tokens, loss_tokens, media_counts, sizes,
                     {r: n for r, n in skips.table(PREPARE_SKIP_REASONS).items() if n},
                     task.fingerprint)
    with atomic_file(state.output_dir / f"{name}{MARKER_SUFFIX}") as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(info), indent=1) + "\n")
    return info


def _check_placeholders(prepared: Prepared) -> None:
    found = placeholder_kinds(prepared.pieces)
    stored = [info.kind for info, _ in prepared.media]
    if found != stored:
        raise SkipSample("placeholder_mismatch", f"placeholders {found} but media {stored}")


def _record_id(record: dict) -> str | int | None:
    value = record.get("id")
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed owner, mode and time: a shard's bytes depend only on its samples.
    member = tarfile.TarInfo(name)
    member.size, member.mode, member.mtime = len(data), 0o444, 0
    tar.addfile(member, io.BytesIO(data))


def _fingerprint(config: str, chunk: Chunk) -> str:
    digest = hashlib.sha256(config.encode())
    digest.update(chunk.path.encode())
    for location, raw in chunk.records:
        digest.update(str(location).encode())
        if isinstance(raw, dict):
            for key in sorted(raw):
                digest.update(key.encode())
                digest.update(raw[key])
        else:
            digest.update(raw)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
