"""The indexed-dataset check names the file and the fault for each way an .idx/.bin pair can be
damaged (the faults that hung a run or ended in an anonymous traceback)."""
import struct

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_omni.data.index_check import HEADER_BYTES, IndexFileError, check_indexed_dataset


@pytest.fixture
def prefix(tmp_path):
    """Three documents of 1-3 sequences of uint16 tokens."""
    prefix = tmp_path / "data"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    rng = np.random.default_rng(0)
    for doc in range(3):
        for _ in range(doc + 1):
            builder.add_item(torch.from_numpy(rng.integers(0, 400, 7 + doc).astype(np.int64)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return prefix


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _fails(prefix, *words):
    with pytest.raises(IndexFileError) as err:
        check_indexed_dataset(prefix)
    for word in words:
        assert word in str(err.value), str(err.value)
    return str(err.value)


def test_intact_dataset_passes(prefix):
    check_indexed_dataset(prefix)


def test_negative_size_is_named(prefix):
    _overwrite(prefix.with_suffix(".idx"), HEADER_BYTES + 4, struct.pack("<i", -1000))
    _fails(prefix, f"{prefix}.idx", "sequence 1", "negative length (-1000)")


def test_bin_cut_in_half_is_named(prefix):
    _cut(prefix.with_suffix(".bin"), 0.5)
    _fails(prefix, f"{prefix}.bin", "truncated")


def test_empty_bin_is_named(prefix):
    prefix.with_suffix(".bin").write_bytes(b"")
    _fails(prefix, f"{prefix}.bin", "0 bytes")


def test_idx_cut_in_half_is_named(prefix):
    _cut(prefix.with_suffix(".idx"), 0.5)
    _fails(prefix, f"{prefix}.idx", "truncated")


@pytest.mark.parametrize("offset,data,words", [
    (0, b"XXXXXXX", ["bad magic"]),
    (9, struct.pack("<Q", 7), ["unknown index version 7"]),
    (17, struct.pack("<B", 42), ["unknown dtype code 42"]),
    (18, struct.pack("<Q", 2 ** 40), ["expected", "sequences"]),
])
def test_bad_header_is_named(prefix, offset, data, words):
    _overwrite(prefix.with_suffix(".idx"), offset, data)
    _fails(prefix, f"{prefix}.idx", *words)


def test_pointer_outside_bin_is_named(prefix):
    _overwrite(prefix.with_suffix(".idx"), HEADER_BYTES + 6 * 4 + 8 * 2, struct.pack("<q", 10 ** 9))
    _fails(prefix, f"{prefix}.bin", "sequence 2")


def test_document_index_must_rise(prefix):
    bounds = HEADER_BYTES + 6 * 12  # 6 sequences, then the 4 document boundaries 0 1 3 6
    _overwrite(prefix.with_suffix(".idx"), bounds + 8, struct.pack("<q", 5))
    _fails(prefix, f"{prefix}.idx", "decrease at document 1")


def test_missing_bin_is_named(prefix):
    prefix.with_suffix(".bin").unlink()
    _fails(prefix, f"{prefix}.bin", "missing")


def test_prepared_folder_with_a_damaged_index_is_named(corpus, tokenizer, tmp_path):
    """A multimodal shard whose .idx sizes were overwritten (the fault that hung the text path)
    fails as the loader plans with one ConfigError naming the folder and the file."""
    import shutil

    from megatron_omni.config import ConfigError
    from megatron_omni.data.multimodal.dataset import MultimodalDataset

    folder = tmp_path / "captions"
    shutil.copytree(corpus["root"] / "captions", folder)
    idx = sorted(folder.glob("*_loss_mask.idx"))[0]
    _overwrite(idx, HEADER_BYTES + 4, struct.pack("<i", -1000))
    with pytest.raises(ConfigError) as err:
        MultimodalDataset(folder, tokenizer).planned_lengths()
    assert f"prepared folder {folder}" in str(err.value) and str(idx) in str(err.value)
    assert "negative length (-1000)" in str(err.value)
