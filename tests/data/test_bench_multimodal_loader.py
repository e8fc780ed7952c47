"""Smoke test of benchmarks/bench_multimodal_loader.py on a tiny generated corpus: every row of
the results JSON is there (dataset and loader levels, images and audio), not the numbers."""
import json

from benchmarks import bench_multimodal_loader


def test_bench_multimodal_loader_smoke(tmp_path):
    out = bench_multimodal_loader.main(["--images", "4", "--audio", "2", "--width", "64",
                                        "--height", "48", "--audio-seconds", "1",
                                        "--image-size", "32", "--passes", "1", "--workers", "0",
                                        "--output", str(tmp_path / "r.json")])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "multimodal_loader" and data["dali_available"] in (True, False)
    assert "dali" in data
    got = {(r["what"], r["level"], r["workers"]) for r in data["rows"]}
    assert got >= {("images", "dataset", 0), ("audio_clips", "dataset", 0),
                   ("images", "loader", 0), ("audio_clips", "loader", 0)}
    assert all(r["items_per_s"] > 0 for r in data["rows"])
