"""preprocess_text: exact round trip through megatron-core's IndexedDataset, bad-record
accounting, --strict, and atomic output."""
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_omni.data.bad_samples import BadSampleError
from omni_data_prep import preprocess_text
from omni_data_prep.preprocess_text import main, preprocess
from omni_data_prep.progress import Progress


def _write_parts(folder, docs, fmt, parts=3):
    """Split docs over `parts` files named part-<i>.<fmt>; returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(docs)), parts)):
        texts = [docs[j] for j in part]
        if fmt == "parquet":
            pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}),
                           folder / f"part-{i}.parquet", row_group_size=17)
        else:
            (folder / f"part-{i}.jsonl").write_text(
                "".join(json.dumps({"text": t, "id": k}) + "\n" for k, t in enumerate(texts)))
    return str(folder / f"part-*.{fmt}")


def _read_docs(prefix):
    dataset = IndexedDataset(str(prefix))
    assert len(dataset.document_indices) == len(dataset) + 1, "one sequence per document"
    return [dataset[i].tolist() for i in range(len(dataset))], dataset


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("workers", [1, 2])
def test_roundtrip_exact(tmp_path, documents, spm_path, tokenizer, fmt, workers):
    pattern = _write_parts(tmp_path / "in", documents, fmt)
    summary = preprocess([pattern], str(spm_path), str(tmp_path / "out" / "text"),
                         workers=workers, chunk_size=7, progress=False)
    expected = [tokenizer.encode(text) + [tokenizer.eod_id] for text in documents]
    got, dataset = _read_docs(tmp_path / "out" / "text")
    assert got == expected
    assert dataset[0].dtype == np.uint16 and summary["dtype"] == "uint16"
    assert summary["docs"] == len(documents)
    assert summary["tokens"] == sum(map(len, expected))
    assert set(summary["skipped"].values()) == {0}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_hf_json_tokenizer_no_eod(tmp_path, documents, hf_dir, tokenizer, workers):
    pattern = _write_parts(tmp_path / "in", documents, "jsonl", parts=1)
    main(["--input", pattern, "--tokenizer", str(hf_dir / "tokenizer.json"),
          "--output-prefix", str(tmp_path / "text"), "--workers", workers, "--chunk-size", "5",
          "--no-append-eod"])
    got, _ = _read_docs(tmp_path / "text")
    assert got == [tokenizer.encode(text) for text in documents]


BAD_LINES = {  # raw jsonl line -> skip reason
    b'{"text": "unterminated': "malformed_json",
    b'[1, 2, 3]': "malformed_json",
    b'{"content": "wrong key"}': "missing_key",
    b'{"text": ""}': "empty_text",
    b'{"text": "  \\n\\t "}': "empty_text",
    b'{"text": "caf\xc3\x28 latin-1 \xe9"}': "invalid_utf8",
    b'{"text": "lone surrogate \\ud800"}': "invalid_utf8",
    b'{"text": 42}': "non_string",
    b'{"text": null}': "non_string",
    b'{"text": ["a", "list"]}': "non_string",
}


def _corpus_with_bad_lines(path, good_docs):
    """Good docs with BAD_LINES and blank lines planted between them."""
    bad = list(BAD_LINES)
    lines = []
    for i, doc in enumerate(good_docs):
        lines.append(json.dumps({"text": doc}).encode())
        if i % 3 == 1 and bad:
            lines += [bad.pop(), b""]
    assert not bad, "need more good docs to plant every bad line"
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_records_counted(tmp_path, documents, spm_path, tokenizer, workers):
    good = documents[:40]
    _corpus_with_bad_lines(tmp_path / "bad.jsonl", good)
    summary = preprocess([str(tmp_path / "bad.jsonl")], str(spm_path), str(tmp_path / "text"),
                         workers=workers, chunk_size=4, progress=False)
    expected_counts = {reason: list(BAD_LINES.values()).count(reason)
                       for reason in summary["skipped"]}
    assert summary["skipped"] == expected_counts
    assert summary["docs"] == len(good)
    got, _ = _read_docs(tmp_path / "text")
    assert got == [tokenizer.encode(text) + [tokenizer.eod_id] for text in good]


def test_parquet_bad_values(tmp_path, spm_path):
    pq.write_table(pa.table({"text": ["good one", None, "", " ", "good two"]}),
                   tmp_path / "t.parquet")
    summary = preprocess([str(tmp_path / "t.parquet")], str(spm_path), str(tmp_path / "text"),
                         progress=False)
    assert (summary["docs"], summary["skipped"]["non_string"],
            summary["skipped"]["empty_text"]) == (2, 1, 2)
    with pytest.raises(ValueError, match="no column 'body'"):
        preprocess([str(tmp_path / "t.parquet")], str(spm_path), str(tmp_path / "x"),
                   json_key="body", progress=False)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_strict_names_file_and_line(tmp_path, documents, spm_path, capsys, workers):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": doc}) for doc in documents[:30]]
    lines[22] = '{"text": 7}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(path), "--tokenizer", str(spm_path), "--strict",
              "--output-prefix", str(tmp_path / "text"), "--workers", workers,
              "--chunk-size", "4"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{path}:23: non_string" in err
    assert sorted(os.listdir(tmp_path)) == ["data.jsonl"]


class _CountingWriter(preprocess_text.IndexedWriter):
    documents_added = 0

    def add_documents(self, tokens, lengths):
        _CountingWriter.documents_added += len(lengths)
        super().add_documents(tokens, lengths)


def test_failure_midway_leaves_no_output(tmp_path, documents, spm_path, monkeypatch):
    """A run that fails after writing part of the .bin leaves no new file behind, and an
    existing dataset at the same prefix untouched."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents[:20]))
    bad = tmp_path / "late_bad.jsonl"
    bad.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents)
                   + '{"text": "broken\n')
    old = tmp_path / "old" / "text"
    preprocess([str(good)], str(spm_path), str(old), progress=False)
    old_bytes = {p: p.read_bytes() for p in old.parent.iterdir()}

    monkeypatch.setattr(preprocess_text, "IndexedWriter", _CountingWriter)
    for prefix in (tmp_path / "new" / "text", old):
        _CountingWriter.documents_added = 0
        with pytest.raises(BadSampleError, match=f"{bad}:{len(documents) + 1}: malformed_json"):
            preprocess([str(bad)], str(spm_path), str(prefix), workers=2, chunk_size=8,
                       strict=True, progress=False)
        assert _CountingWriter.documents_added > len(documents) - 8, "failed late in the run"
    assert os.listdir(tmp_path / "new") == []
    assert {p: p.read_bytes() for p in old.parent.iterdir()} == old_bytes


def test_interrupted_index_write_leaves_no_index(tmp_path, documents, spm_path, monkeypatch):
    def finalize_then_die(self, idx_path):
        with open(idx_path, "wb") as f:
            f.write(b"MMIDIDX\x00\x00 half")
        raise KeyboardInterrupt

    path = tmp_path / "in" / "data.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents[:10]))
    monkeypatch.setattr(preprocess_text.IndexedWriter, "finalize", finalize_then_die)
    with pytest.raises(KeyboardInterrupt):
        preprocess([str(path)], str(spm_path), str(tmp_path / "out" / "text"), progress=False)
    assert os.listdir(tmp_path / "out") == []


def test_progress_lines_and_summary_json(tmp_path, documents, spm_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents)
                    + '{"text": 3}\n')
    stream = io.StringIO()
    bar = Progress(path.stat().st_size, enabled=True, interval=0.0, stream=stream)
    bar.update(path.stat().st_size // 4, 10, 500, {"non_string": 1, "empty_text": 0})
    assert re.fullmatch(r"progress: [\d.]+ KB of [\d.]+ KB \(25%\), [\d,]+ docs/s, "
                        r"[\d,]+ tokens/s, ETA 0:00:\d\d, skipped: non_string 1\n",
                        stream.getvalue())
    summary = preprocess([str(path)], str(spm_path), str(tmp_path / "text"), progress=False)
    assert json.loads((tmp_path / "text.summary.json").read_text()) == summary
    assert summary["input_bytes"] == path.stat().st_size and summary["docs_per_s"] > 0
    assert summary["skipped"]["non_string"] == 1


def test_imports_neither_torch_nor_megatron():
    """A run's start-up: preprocess_text and the multimodal CLIs write the indexed dataset
    themselves (data_prep/indexed_writer.py), without torch or megatron.core."""
    code = ("import sys, omni_data_prep.preprocess_text; from omni_data_prep.multimodal import "
            "cli, image_caption, interleaved, audio_transcript, video_caption, conversations; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
