"""Smoke tests of the benchmark scripts: each kernel benchmark runs end to end at its smallest
shapes (--smoke; the Triton interpreter without CUDA, as set by tests/conftest.py and by the
scripts themselves) in a subprocess, and the preprocessing benchmark runs on a tiny generated
corpus. They check that the results JSON is complete and the correctness check passed, not the
numbers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_media_prep, bench_preprocess

ROOT = Path(__file__).resolve().parents[2]
KERNEL_BENCHMARKS = ("lightning", "infllmv2")


def load_results(path: Path, benchmark: str) -> dict:
    """The JSON at path, after checking the fields every benchmark writes."""
    data = json.loads(path.read_text())
    assert data["benchmark"] == benchmark
    for key in ("device", "date", "commit", "torch"):
        assert isinstance(data[key], str) and data[key], key
    assert data["rows"], "no rows"
    return data


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory):
    """Both kernel benchmarks started at once (each is one mostly single-threaded interpreter
    process): {name: (process, results path, log path)}."""
    out_dir = tmp_path_factory.mktemp("kernel_benchmarks")
    runs = {}
    for name in KERNEL_BENCHMARKS:
        log = out_dir / f"{name}.log"
        with log.open("w") as stream:
            proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"),
                                     "--smoke", "--out", str(out_dir / f"{name}.json")],
                                    cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
        runs[name] = (proc, out_dir / f"{name}.json", log)
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", KERNEL_BENCHMARKS)
def test_kernel_benchmark_smoke(kernel_runs, name):
    proc, out, log = kernel_runs[name]
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    data = load_results(out, name)
    assert data["size"] == "smoke" and data["correctness"]["passed"] is True
    for row in data["rows"]:
        ms = [k for k in row if k.endswith("_ms")]
        tflops = [k for k in row if k.endswith("_tflops")]
        assert {"sdpa_fwd_ms", "sdpa_fwdbwd_ms"} <= set(ms) and len(tflops) == 4
        assert all(row[k] > 0 for k in ms + ["speedup_fwd", "speedup_fwdbwd"])
        assert all(row[k] >= 0 for k in tflops)


def test_preprocess_benchmark_smoke(tmp_path):
    path = bench_preprocess.main(["--workers", "1", "--num-docs", "200", "--repeats", "1",
                                  "--output", str(tmp_path / "preprocess.json")])
    short, long = load_results(path, "preprocess_text")["rows"]
    assert (short["shape"], short["workers"], short["docs"]) == ("short", 1, 200)
    assert (long["shape"], long["docs"]) == ("long", 5)
    for row in (short, long):
        assert row["tokens"] > row["docs"] and row["ours"]["tokens_per_s"] > 0


def test_hybrid_benchmark_smoke(tmp_path):
    """bench_hybrid.py end to end at one short length (each pattern in its own process)."""
    out = tmp_path / "hybrid.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_hybrid.py"), "--tiny",
                           "--seqlens", "128", "--warmup", "0", "--iters", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = load_results(out, "hybrid_vs_dense")
    assert [(r["pattern"], r["layer_types"], r["seq_length"]) for r in data["rows"]] == [
        ("dense", "DDDD", 128), ("hybrid", "SLLS", 128)]
    for row in data["rows"]:
        assert row["seconds_per_step"] > 0 and row["peak_memory_gib"] > 0, row
        assert len(row["losses"]) == 1 and 5.0 < row["losses"][0] < 7.5, row  # ~ln(512) at init


def test_media_prep_benchmark_smoke(tmp_path):
    path = bench_media_prep.main(["--workers", "1", "--images", "3", "--audios", "1",
                                  "--audio-seconds", "2", "--videos", "1", "--video-seconds", "2",
                                  "--repeats", "1", "--output", str(tmp_path / "media.json")])
    rows = load_results(path, "media_prep")["rows"]
    assert [(r["kind"], r["unit"], r["files"]) for r in rows] == [
        ("image_caption", "images", 3), ("audio_transcript", "audio_hours", 1),
        ("video_caption", "video_minutes", 1)]
    assert rows[1]["amount"] == 2 / 3600 and rows[2]["amount"] == 2 / 60
    for row in rows:
        assert row["ceiling_per_s"] > 0 and row["ours"]["1"]["per_worker_per_s"] > 0, row
