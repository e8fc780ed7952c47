"""Checks a megatron-core indexed dataset (``<prefix>.idx`` + ``<prefix>.bin``) before anything
reads it, so that bad data fails at once with the file and the fault named, instead of a raw
traceback deep in megatron-core or, for negative sizes, a loop that never ends (its epoch count
grows until the token count, summed from the sizes, reaches the target).

The ``.idx`` layout (megatron/core/datasets/indexed_dataset.py): the 9-byte magic, version
(u64, 1), dtype code (u8), sequence count S (u64), document count D (u64); then the sequence
lengths (i32[S]), their byte offsets in the ``.bin`` (i64[S]), the document boundaries
(i64[D], 0 first, S last) and, for multimodal datasets only, one mode byte per sequence.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = len(MAGIC) + struct.calcsize("<QBQQ")
ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
"""Bytes per token of each dtype code (uint8, int8, int16, int32, int64, float64, float32, uint16)."""
_BLOCK = 1 << 24


class IndexFileError(ValueError):
    """An indexed dataset that cannot be read as it is; the message names the file."""


def _header(idx: Path) -> tuple[int, int, int]:
    """(item bytes, sequence count, document count), or IndexFileError."""
    size = idx.stat().st_size
    if size < HEADER_BYTES:
        raise IndexFileError(f"{idx}: {size} bytes, shorter than the {HEADER_BYTES}-byte header (truncated?)")
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:len(MAGIC)] != MAGIC:
        raise IndexFileError(f"{idx}: not a megatron indexed-dataset index (bad magic {head[:len(MAGIC)]!r})")
    version, code, sequences, documents = struct.unpack("<QBQQ", head[len(MAGIC):])
    if version != 1:
        raise IndexFileError(f"{idx}: unknown index version {version} (expected 1)")
    if code not in ITEM_BYTES:
        raise IndexFileError(f"{idx}: unknown dtype code {code} (known: {sorted(ITEM_BYTES)})")
    expected = HEADER_BYTES + 12 * sequences + 8 * documents
    if size not in (expected, expected + sequences):
        raise IndexFileError(f"{idx}: {size} bytes, expected {expected} for its {sequences} sequences "
                             f"and {documents} document boundaries (truncated or overwritten?)")
    return ITEM_BYTES[code], sequences, documents


def _arrays(idx: Path, sequences: int, documents: int):
    def array(dtype, count: int, offset: int):
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(idx, dtype=dtype, mode="r", offset=offset, shape=(count,))

    lengths = array(np.int32, sequences, HEADER_BYTES)
    pointers = array(np.int64, sequences, HEADER_BYTES + 4 * sequences)
    bounds = array(np.int64, documents, HEADER_BYTES + 12 * sequences)
    return lengths, pointers, bounds


def _check_sequences(idx: Path, bin_path: Path, item: int, lengths, pointers) -> int:
    """Sizes non-negative, every sequence inside the .bin; returns the token count."""
    bin_bytes = bin_path.stat().st_size
    tokens = 0
    for start in range(0, len(lengths), _BLOCK):
        n = lengths[start:start + _BLOCK].astype(np.int64)
        p = pointers[start:start + _BLOCK]
        if (bad := np.flatnonzero(n < 0)).size:
            i = start + int(bad[0])
            raise IndexFileError(f"{idx}: sequence {i} has a negative length ({int(lengths[i])})")
        ends = p + n * item
        if (bad := np.flatnonzero((p < 0) | (ends > bin_bytes))).size:
            i, k = start + int(bad[0]), int(bad[0])
            raise IndexFileError(
                f"{bin_path}: {bin_bytes} bytes, but {idx.name} places sequence {i} at bytes "
                f"[{int(p[k])}, {int(ends[k])}) (the .bin is truncated, or the two files do not "
                "belong together)")
        tokens += int(n.sum())
    return tokens


def _check_documents(idx: Path, sequences: int, bounds) -> None:
    if len(bounds) == 0 or bounds[0] != 0 or bounds[-1] != sequences:
        first, last = (int(bounds[0]), int(bounds[-1])) if len(bounds) else (None, None)
        raise IndexFileError(f"{idx}: document boundaries run from {first} to {last}, "
                             f"expected 0 to the sequence count {sequences}")
    for start in range(0, len(bounds) - 1, _BLOCK):
        step = np.diff(bounds[start:start + _BLOCK + 1])
        if (bad := np.flatnonzero(step < 0)).size:
            i = start + int(bad[0])
            raise IndexFileError(f"{idx}: document boundaries decrease at document {i} "
                                 f"({int(bounds[i])} then {int(bounds[i + 1])})")


def check_indexed_dataset(prefix: str | Path) -> None:
    """IndexFileError naming the file and the fault unless ``prefix``.idx describes
    ``prefix``.bin: known version and dtype, the size its counts imply, non-negative lengths,
    every sequence inside the .bin, document boundaries monotone from 0 to the sequence count,
    and at least one token."""
    idx, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for path in (idx, bin_path):
        if not path.is_file():
            raise IndexFileError(f"{path}: missing")
    try:
        item, sequences, documents = _header(idx)
        lengths, pointers, bounds = _arrays(idx, sequences, documents)
        tokens = _check_sequences(idx, bin_path, item, lengths, pointers)
        _check_documents(idx, sequences, bounds)
    except OSError as err:
        raise IndexFileError(f"{err.filename or idx}: cannot read ({err.strerror or err})") from None
    if tokens == 0:
        raise IndexFileError(f"{idx}: holds no tokens ({sequences} sequences, all empty)")
