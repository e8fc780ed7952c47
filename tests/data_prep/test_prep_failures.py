"""Every failure of preprocess_text and the multimodal CLI is clean: one `error:` line, exit 1,
nothing half-written left behind, also after a SIGKILL (a rerun cleans up and completes)."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_omni.data.sample_format import MANIFEST_NAME, Manifest
from omni_data_prep import cli_io
from omni_data_prep.multimodal import cli
from omni_data_prep.preprocess_text import main as text_main

from ..synthetic_media import make_image, write_jsonl

EMPTY_HINT = "; pass --allow-empty to write an empty output\n"


def _fails(capsys, run):
    """The `error:` output of `run()`, which must exit with status 1."""
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def _text_args(tmp_path, spm_path, pattern):
    return ["--input", str(pattern), "--tokenizer", str(spm_path),
            "--output-prefix", str(tmp_path / "out" / "text")]


def test_text_input_errors(tmp_path, spm_path, capsys):
    missing = str(tmp_path / "none-*.jsonl")
    assert _fails(capsys, lambda: text_main(_text_args(tmp_path, spm_path, missing))) == (
        f"error: input {missing!r} matches no file\n")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    args = _text_args(tmp_path, spm_path, tmp_path / "empty.jsonl")
    assert _fails(capsys, lambda: text_main(args)) == (
        "error: no documents to write: the input holds no record" + EMPTY_HINT)
    write_jsonl(tmp_path / "bad.jsonl", ['{"text": 1}', "{oops", '{"text": " "}', "[]"])
    args = _text_args(tmp_path, spm_path, tmp_path / "bad.jsonl")
    assert _fails(capsys, lambda: text_main(args)) == (
        "error: no documents to write: every one of its 4 records was skipped (skipped: "
        "malformed_json 2, empty_text 1, non_string 1)" + EMPTY_HINT)
    assert os.listdir(tmp_path / "out") == []
    assert text_main(args + ["--allow-empty"])["docs"] == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["text.bin", "text.idx", "text.summary.json"]


def test_stale_temps_of_dead_runs_only_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f"text.bin{cli_io.TMP_TAG}{dead.pid}-ab12.bin.part", f"text{cli_io.TMP_TAG}x.idx",
             f"text{cli_io.TMP_TAG}{dead.pid}-cd34.idx.part",
             f"text{cli_io.TMP_TAG}{os.getpid()}-ef56.bin.part", f"other{cli_io.TMP_TAG}1-x"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    removed = cli_io.remove_stale_temps(tmp_path, "text")
    assert sorted(p.name for p in removed) == sorted(names[1:3])
    assert sorted(os.listdir(tmp_path)) == sorted(names[:1] + names[3:])


def _start_on_fifo(fifo, argv):
    """Start `python -m <argv>` reading from the named pipe `fifo`; returns the process and
    the pipe's writing end (opened once the process reads)."""
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return proc, open(fifo, "wb", buffering=0)


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _kill(proc, writer):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    writer.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_text_sigkill_then_rerun(tmp_path, documents, spm_path, tokenizer, workers):
    """Killed while reading its input, preprocess_text leaves only its temporary files and no
    worker process; a rerun of the same prefix removes them and writes the dataset."""
    out = tmp_path / "out"
    proc, writer = _start_on_fifo(tmp_path / "in.jsonl", [
        "omni_data_prep.preprocess_text", *_text_args(tmp_path, spm_path, tmp_path / "in.jsonl"),
        "--chunk-size", "4", "--workers", workers])
    writer.write("".join(json.dumps({"text": d}) + "\n" for d in documents[:30]).encode())
    _wait_for(lambda: out.is_dir() and any(p.suffix == ".part" for p in out.iterdir()), proc)
    time.sleep(0.2)  # let it tokenize and write some chunks, then block on the pipe
    children = psutil.Process(proc.pid).children()
    assert len(children) == (0 if workers == "1" else 2)
    _kill(proc, writer)
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    left = os.listdir(out)
    assert left and all(cli_io.TMP_TAG in name for name in left), left

    os.unlink(tmp_path / "in.jsonl")
    write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in documents])
    text_main(_text_args(tmp_path, spm_path, tmp_path / "in.jsonl"))
    assert sorted(os.listdir(out)) == ["text.bin", "text.idx", "text.summary.json"]
    dataset = IndexedDataset(str(out / "text"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [
        tokenizer.encode(d) + [tokenizer.eod_id] for d in documents]


def _caption_records(folder, n):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_image(folder / "img" / f"{i}.png", 12, 16, 20 * i)
    return [{"image_path": str(folder / "img" / f"{i}.png"), "caption": f"caption number {i}"}
            for i in range(n)]


def _mm_args(tmp_path, spm_path, jsonl):
    return ["image_caption", "--input", str(jsonl), "--tokenizer", str(spm_path),
            "--output-dir", str(tmp_path / "out"), "--samples-per-shard", "2"]


def test_multimodal_empty_inputs(tmp_path, spm_path, capsys):
    missing = str(tmp_path / "none-*.jsonl")
    assert _fails(capsys, lambda: cli.dispatch(_mm_args(tmp_path, spm_path, missing))) == (
        f"error: input {missing!r} matches no file\n")
    jsonl = write_jsonl(tmp_path / "c.jsonl", [])
    args = _mm_args(tmp_path, spm_path, jsonl)
    assert _fails(capsys, lambda: cli.dispatch(args)) == (
        "error: no samples to write: the input holds no record" + EMPTY_HINT)
    write_jsonl(tmp_path / "c.jsonl", [{"caption": "no image"}, {"image_path": "gone.png"},
                                       "{broken"])
    assert _fails(capsys, lambda: cli.dispatch(args)) == (
        "error: no samples to write: every one of its 3 records was skipped (skipped: "
        "missing_key 2, malformed_json 1)" + EMPTY_HINT)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError):
        Manifest.load(tmp_path / "out")
    assert cli.dispatch(args + ["--allow-empty"]).totals()["counts"]["samples"] == 0


def test_multimodal_sigkill_then_rerun(tmp_path, spm_path):
    """Killed after its first shard, the CLI leaves no manifest (the loader refuses the folder)
    nor temporary files after a rerun, which completes it like a clean run."""
    records = _caption_records(tmp_path, 5)
    whole = write_jsonl(tmp_path / "whole.jsonl", records)
    out = tmp_path / "out"
    proc, writer = _start_on_fifo(tmp_path / "in.jsonl", [
        "omni_data_prep.multimodal", *_mm_args(tmp_path, spm_path, tmp_path / "in.jsonl")])
    writer.write("".join(json.dumps(r) + "\n" for r in records[:3]).encode())
    _wait_for(lambda: (out / "shard-00000.done.json").exists(), proc)
    _kill(proc, writer)
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError):
        Manifest.load(out)

    os.unlink(tmp_path / "in.jsonl")
    write_jsonl(tmp_path / "in.jsonl", records)
    manifest = cli.dispatch(_mm_args(tmp_path, spm_path, tmp_path / "in.jsonl"))
    assert manifest.totals()["counts"]["samples"] == 5
    assert not [p for p in out.iterdir() if cli_io.TMP_TAG in p.name]
    clean = cli.dispatch(_mm_args(tmp_path / "w", spm_path, whole))
    assert [s.samples for s in clean.shards] == [s.samples for s in manifest.shards]
