"""Writing megatron-core's indexed dataset (`<prefix>.bin` + `<prefix>.idx`) with numpy alone.

megatron-core's `IndexedDatasetBuilder` needs torch and megatron.core, whose imports cost a
preprocessing run more than tokenizing a few million tokens does; this writer makes the same
bytes without them (tests/data_prep/test_indexed_writer.py compares the two). The `.bin` holds
the token ids back to back; the `.idx` layout is the one megatron_omni/data/index_check.py
describes and checks: magic, version 1, dtype code, sequence and document counts, then the
sequence lengths (int32), their byte offsets into the `.bin` (int64) and the document boundaries
(int64, 0 first). Every document here is one sequence, as data_prep writes them.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from megatron_omni.data.index_check import MAGIC

DTYPE_CODES = {np.dtype(name): code for name, code in (
    ("uint8", 1), ("int8", 2), ("int16", 3), ("int32", 4), ("int64", 5), ("float64", 6),
    ("float32", 7), ("uint16", 8))}
"""megatron-core's `DType` code of each token dtype, as the `.idx` header stores it (its item
size is index_check.ITEM_BYTES[code])."""


def optimal_dtype(vocab_size: int) -> np.dtype:
    """The token dtype megatron-core picks for a vocabulary (`DType.optimal_dtype`): uint16
    below 65,500 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


class IndexedWriter:
    """Streams documents into `bin_path`; `finalize` writes the index. Used as a context
    manager, it closes the `.bin` on the way out.

    Args:
        bin_path: the `.bin` file to create (truncated when it exists).
        dtype: token dtype, one of `DTYPE_CODES`.
    """

    def __init__(self, bin_path: str, dtype: np.dtype | type):
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {self.dtype} is not one of the indexed dataset's "
                             f"{sorted(d.name for d in DTYPE_CODES)}")
        self._bin = open(bin_path, "wb")
        self._lengths: list[np.ndarray] = []
        self.documents = self.tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: Sequence[int] | np.ndarray) -> None:
        """Append documents: `tokens` holds their ids back to back, `lengths` one count each.

        Raises ValueError when the lengths do not add up to the tokens' size."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int32)
        if int(lengths.sum(dtype=np.int64)) != tokens.size:
            raise ValueError(f"document lengths add up to {int(lengths.sum(dtype=np.int64))}, "
                             f"but {tokens.size} tokens were given")
        self._bin.write(tokens.data)
        self._lengths.append(lengths)
        self.documents += lengths.size
        self.tokens += tokens.size

    def finalize(self, idx_path: str) -> None:
        """Close the `.bin` and write `idx_path`."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        with open(idx_path, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<QBQQ", 1, DTYPE_CODES[self.dtype], lengths.size,
                                lengths.size + 1))
            f.write(lengths.data)
            f.write(pointers.data)
            f.write(np.arange(lengths.size + 1, dtype=np.int64).data)

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._bin.close()
