"""Reading text records from jsonl and parquet files, and sorting out the bad ones.

The reader (`read_chunks`) runs in the main process and only splits files into chunks of raw
records; parsing, validation and tokenization happen in `ChunkEncoder`, which the worker processes
of data_prep/preprocess_text.py run. Bad records are reported by reason, one of
megatron_omni/data/bad_samples.py `TEXT_SKIP_REASONS`.
"""
from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_omni.data.tokenizer import load_tokenizer

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class Chunk:
    """Consecutive records of one file: `records` holds (line number, raw record) pairs, where a
    raw record is a jsonl line (bytes) or a parquet cell value. Parquet line numbers are 1-based
    row numbers. `nbytes` is the share of the file's bytes the chunk covers (for progress)."""

    path: str
    is_jsonl: bool
    records: list[tuple[int, object]]
    nbytes: int = 0


@dataclass
class EncodedChunk:
    """Tokens of a chunk's good records, concatenated, with one length per record (int32), and
    the bad records as (line number, reason, detail); `nbytes` is the chunk's."""

    path: str
    tokens: np.ndarray
    lengths: np.ndarray
    bad: list[tuple[int, str, str]]
    nbytes: int = 0


def expand_inputs(patterns: Sequence[str],
                  suffixes: Sequence[str] = JSONL_SUFFIXES + PARQUET_SUFFIXES) -> list[Path]:
    """Files matching the glob `patterns`, in order (sorted within a pattern, no repeats).

    Raises ValueError for a pattern that matches nothing or a file whose suffix is not one of
    `suffixes` (by default jsonl `.jsonl`/`.json` and parquet `.parquet`).
    """
    paths: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches:
            raise ValueError(f"input {str(pattern)!r} matches no file")
        paths.update(dict.fromkeys(map(Path, matches)))
    for path in paths:
        if path.suffix not in suffixes:
            raise ValueError(f"input {path} is not one of the supported file types "
                             f"({', '.join(suffixes)})")
    return list(paths)


def read_chunks(paths: Iterable[Path], key: str, chunk_size: int) -> Iterator[Chunk]:
    """Split the files into chunks of up to `chunk_size` raw records, in file order.

    Blank jsonl lines are not records and are skipped silently. A parquet file without a `key`
    column raises ValueError.
    """
    for path in paths:
        if path.suffix in PARQUET_SUFFIXES:
            yield from _parquet_chunks(path, key, chunk_size)
        else:
            yield from _jsonl_chunks(path, chunk_size)


def chunked(path: Path, is_jsonl: bool, records: Iterable[tuple[int | str, object]],
            chunk_size: int) -> Iterator[Chunk]:
    """The (location, raw record) pairs of file `path` in chunks of up to `chunk_size`."""
    chunk = []
    for record in records:
        chunk.append(record)
        if len(chunk) == chunk_size:
            yield Chunk(str(path), is_jsonl, chunk)
            chunk = []
    if chunk:
        yield Chunk(str(path), is_jsonl, chunk)


def _jsonl_chunks(path: Path, chunk_size: int) -> Iterator[Chunk]:
    with open(path, "rb") as f:
        for chunk in chunked(path, True, ((line_no, line) for line_no, line in
                                          enumerate(f, start=1) if line.strip()), chunk_size):
            chunk.nbytes = sum(len(line) for _, line in chunk.records)
            yield chunk


def _parquet_chunks(path: Path, key: str, chunk_size: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if key not in parquet.schema_arrow.names:
        raise ValueError(f"{path} has no column {key!r} (columns: {parquet.schema_arrow.names}); "
                         f"choose one with --json-key")
    row, rows, size = 1, max(parquet.metadata.num_rows, 1), path.stat().st_size
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=[key]):
        values = batch.column(0).to_pylist()
        yield Chunk(str(path), False, list(enumerate(values, start=row)),
                    round(size * len(values) / rows))
        row += len(values)


def parse_record(raw: object, is_jsonl: bool, key: str) -> tuple[str | None, str, str]:
    """(text, "", "") for a good record, else (None, reason, detail), the reason one of
    bad_samples.TEXT_SKIP_REASONS.

    `raw` is a jsonl line (bytes) when `is_jsonl`, else the parquet cell value itself.
    """
    value = raw
    if is_jsonl:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return None, "invalid_utf8", str(err)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return None, "malformed_json", str(err)
        if not isinstance(record, dict):
            return None, "malformed_json", f"not a JSON object but {type(record).__name__}"
        if key not in record:
            return None, "missing_key", f"no key {key!r} (keys: {sorted(record)[:10]})"
        value = record[key]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return None, "non_string", f"value is {kind}, not a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate, e.g. from a "\ud800" JSON escape
        return None, "invalid_utf8", str(err)
    if not value.strip():
        return None, "empty_text", "text is empty or only whitespace"
    return value, "", ""


def iter_texts(paths: Iterable[Path], key: str) -> Iterator[str]:
    """Texts of the good records of jsonl/parquet files, in order; bad records are dropped."""
    for chunk in read_chunks(paths, key, chunk_size=1024):
        for _, raw in chunk.records:
            text, _, _ = parse_record(raw, chunk.is_jsonl, key)
            if text is not None:
                yield text


class ChunkEncoder:
    """Parse, validate and tokenize chunks; appends `<eod>` to each document when `append_eod`."""

    def __init__(self, tokenizer_path: str, key: str, append_eod: bool, dtype: type):
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.key = key
        self.append_eod = append_eod
        self.dtype = dtype

    def __call__(self, chunk: Chunk) -> EncodedChunk:
        return self.encode(chunk, *self.parse(chunk))

    def parse(self, chunk: Chunk) -> tuple[list[str], list[tuple[int, str, str]]]:
        """The texts of the chunk's good records and its bad records (line, reason, detail)."""
        texts, bad = [], []
        for line_no, raw in chunk.records:
            text, reason, detail = parse_record(raw, chunk.is_jsonl, self.key)
            if text is None:
                bad.append((line_no, reason, detail))
            else:
                texts.append(text)
        return texts, bad

    def encode(self, chunk: Chunk, texts: list[str], bad: list[tuple[int, str, str]]
               ) -> EncodedChunk:
        """Tokenize the parsed `texts` of `chunk` in one batched tokenizer call."""
        parts = [np.array(ids, dtype=self.dtype)
                 for ids in (self.tokenizer.encode_batch(texts) if texts else [])]
        lengths = np.array([len(part) + self.append_eod for part in parts], dtype=np.int32)
        if self.append_eod:
            eod = np.array([self.tokenizer.eod_id], dtype=self.dtype)
            parts = [a for part in parts for a in (part, eod)]
        tokens = np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)
        return EncodedChunk(chunk.path, tokens, lengths, bad, chunk.nbytes)


_WORKER_ENCODER: ChunkEncoder | None = None


def init_worker(tokenizer_path: str, key: str, append_eod: bool, dtype: type) -> None:
    """Pool initializer: build this worker process's ChunkEncoder."""
    global _WORKER_ENCODER
    _WORKER_ENCODER = ChunkEncoder(tokenizer_path, key, append_eod, dtype)


def encode_in_worker(chunk: Chunk) -> EncodedChunk:
    """Pool task: encode `chunk` with the encoder `init_worker` built."""
    return _WORKER_ENCODER(chunk)
