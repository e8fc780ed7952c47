"""Shared pieces of the benchmark scripts: timing, error metric, device/commit metadata, JSON
results."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from megatron_omni import platform as omni_platform


def device_name() -> str:
    gpu = omni_platform.gpu_name()
    if gpu is not None:
        return gpu
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    """HEAD of the repository, or $GIT_COMMIT when set (a copy of the tree without .git, as on
    the GPU machine), or "unknown"."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of fn() in milliseconds (CUDA-synchronised on GPU)."""
    sync = omni_platform.synchronize
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's causal SDPA on [B, H, T, D] (the baseline): the flash-attention kernel on GPU."""
    if q.device.type != "cuda":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def low_precision(device: str) -> torch.dtype:
    """The 16-bit dtype a kernel's low-precision check runs in: bf16 on GPU, fp16 elsewhere."""
    return torch.bfloat16 if device == "cuda" else torch.float16


def add_rates(row: dict, flops: dict[tuple[str, str], float], op: str) -> dict:
    """Add {name}_{mode}_tflops for each (name, mode) FLOP count from the row's
    {name}_{mode}_ms, and speedup_{mode} of `op` over the sdpa baseline; returns the row."""
    for (name, mode), count in flops.items():
        row[f"{name}_{mode}_tflops"] = count / (row[f"{name}_{mode}_ms"] * 1e9)
    for mode in ("fwd", "fwdbwd"):
        row[f"speedup_{mode}"] = row[f"sdpa_{mode}_ms"] / row[f"{op}_{mode}_ms"]
    return row


def rel_rmse(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Relative root-mean-square error of `out` against `ref` (0 when both are zero)."""
    ref, out = ref.double(), out.double()
    num = (ref - out).pow(2).mean().sqrt()
    den = ref.pow(2).mean().sqrt()
    return float(num / den) if den > 0 else float(num)


def results_path(name: str, out: str | os.PathLike | None = None) -> Path:
    """Where a benchmark writes its JSON: `out` itself when it names a .json file, else
    <name>_<device slug>.json in the folder `out` (default benchmarks/results)."""
    if out is not None and str(out).endswith(".json"):
        return Path(out)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name().lower()).strip("_")
    folder = Path(__file__).resolve().parent / "results" if out is None else Path(out)
    return folder / f"{name}_{slug}.json"


def write_results(path: str | os.PathLike, benchmark: str, rows: list[dict], **extra) -> Path:
    """Write rows plus device, date and commit as one JSON file; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": benchmark,
        "device": device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "torch": torch.__version__,
        **extra,
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def kernel_benchmark_main(name: str, doc: str, sizes: dict[str, dict],
                          correctness: Callable[[dict, str, int], dict],
                          bench_one: Callable[[int, dict, torch.dtype, str], dict]) -> None:
    """The command line of a kernel benchmark. sizes maps full / tiny / smoke to a shape table
    (seqlens, check_len, warmup, iters and the op's own fields); full runs in bf16 on a GPU, the
    others in fp32 (tiny is forced without CUDA). correctness(cfg, device, check_len) must return
    a dict with "passed"; only then is bench_one(T, cfg, dtype, device) timed for each sequence
    length. Writes the JSON (--out, default benchmarks/results/<name>_<device>.json) and exits
    with status 1 when the check failed."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    size_arg = parser.add_mutually_exclusive_group()
    size_arg.add_argument("--tiny", action="store_true", help="tiny fp32 shapes (CPU interpreter)")
    size_arg.add_argument("--smoke", action="store_true",
                          help="the smallest shapes, one timing each (the CPU smoke test)")
    parser.add_argument("--out", default=None, help="JSON file, or a folder for the default "
                        f"name {name}_<device>.json (default folder benchmarks/results)")
    args = parser.parse_args()
    device = omni_platform.device().type
    size = "smoke" if args.smoke else "tiny" if args.tiny or device == "cpu" else "full"
    cfg = sizes[size]
    dtype = torch.bfloat16 if device == "cuda" and size == "full" else torch.float32
    check = correctness(cfg, device, cfg["check_len"])
    print("correctness:", check, flush=True)
    rows, path = [], results_path(name, args.out)

    def write() -> None:  # after every row too: a time limit still leaves what was measured
        write_results(path, name, rows, dtype=str(dtype), size=size, config=cfg, correctness=check)

    if check["passed"]:
        for T in cfg["seqlens"]:
            rows.append(bench_one(T, cfg, dtype, device))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()},
                  flush=True)
            write()
    else:
        print("correctness check failed: no timings reported")
    write()
    print("wrote", path)
    sys.exit(0 if check["passed"] else 1)
