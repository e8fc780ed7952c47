"""data_prep/indexed_writer.py writes exactly the bytes of megatron-core's IndexedDatasetBuilder,
and megatron-core's IndexedDataset reads them back."""
import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_omni.data.index_check import ITEM_BYTES, check_indexed_dataset
from omni_data_prep.indexed_writer import DTYPE_CODES, IndexedWriter, optimal_dtype


def _documents(dtype, count, seed):
    """`count` random documents (a few empty ones among them) spanning the dtype's range."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    docs = []
    for i in range(count):
        n = 0 if i % 17 == 5 else int(rng.integers(1, 300))
        if info is not None:
            docs.append(rng.integers(info.min, info.max, n, endpoint=True, dtype=dtype))
        else:
            docs.append(rng.standard_normal(n).astype(dtype))
    return docs


def _megatron(prefix, docs, dtype):
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_document(doc, [doc.size])
    builder.finalize(f"{prefix}.idx")


def _ours(prefix, docs, dtype, per_call):
    with IndexedWriter(f"{prefix}.bin", dtype) as writer:
        for start in range(0, len(docs), per_call):
            part = docs[start:start + per_call]
            writer.add_documents(np.concatenate(part) if part else np.zeros(0, dtype),
                                 [doc.size for doc in part])
        writer.finalize(f"{prefix}.idx")
    return writer


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint8, np.int64, np.float32])
@pytest.mark.parametrize("count,per_call", [(123, 10), (1, 1), (0, 1)])
def test_bytes_equal_megatron_builder(tmp_path, dtype, count, per_call):
    docs = _documents(dtype, count, seed=count)
    _megatron(tmp_path / "theirs", docs, dtype)
    writer = _ours(tmp_path / "ours", docs, dtype, per_call)
    for suffix in (".bin", ".idx"):
        assert ((tmp_path / f"ours{suffix}").read_bytes()
                == (tmp_path / f"theirs{suffix}").read_bytes()), suffix
    assert (writer.documents, writer.tokens) == (count, sum(doc.size for doc in docs))
    if count:  # megatron-core cannot open an empty dataset
        dataset = IndexedDataset(str(tmp_path / "ours"))
        assert len(dataset) == count and dataset.index.dtype == dtype
        for i, doc in enumerate(docs):
            np.testing.assert_array_equal(dataset[i], doc)
        check_indexed_dataset(tmp_path / "ours")


def test_dtype_codes_and_optimal_dtype_match_megatron():
    assert {d: c for d, c in DTYPE_CODES.items()} == {
        np.dtype(d.name): d.value for d in DType}
    assert {c: d.itemsize for d, c in DTYPE_CODES.items()} == ITEM_BYTES
    for vocab in (1, 400, 65499, 65500, 65536, 200_000, 2**31 - 1):
        assert optimal_dtype(vocab) == DType.optimal_dtype(vocab), vocab


def test_rejects_lengths_that_do_not_add_up_and_unknown_dtypes(tmp_path):
    with IndexedWriter(str(tmp_path / "x.bin"), np.uint16) as writer:
        with pytest.raises(ValueError, match="document lengths add up to 5, but 4 tokens"):
            writer.add_documents(np.arange(4), [2, 3])
    with pytest.raises(ValueError, match="dtype uint32 is not one of the indexed dataset's"):
        IndexedWriter(str(tmp_path / "y.bin"), np.uint32)
