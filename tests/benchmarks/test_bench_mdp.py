"""Smoke test of benchmarks/bench_mdp.py: one timed step per mode and step kind on 4 CPU ranks;
checks the results JSON is complete, not the numbers."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_mdp_writes_both_modes(tmp_path):
    out = tmp_path / "mdp.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_mdp.py"), "--steps", "1", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=600, capture_output=True)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "mdp" and data["commit"] and data["date"]
    assert set(data["machine_load"]) == {"uptime_before", "uptime_after"}
    assert [row["mode"] for row in data["rows"]] == ["coupled", "decoupled"]
    for row in data["rows"]:
        assert row["text_only_s"] > 0 and row["multimodal_s"] > 0
        assert row["ratio_multimodal_over_text"] == row["multimodal_s"] / row["text_only_s"]
