"""The tiny hybrid LLM on CPU: tokens/s and peak memory of one training step (forward + backward,
batch 1) with the S/L attention in PyTorch (model.kernels=torch, what auto runs without CUDA)
against the same model in the Triton interpreter (model.kernels=triton).

    python benchmarks/bench_cpu_hybrid.py                        # torch at 2K, 4K, 8K; triton at 2K
    python benchmarks/bench_cpu_hybrid.py --triton-seqlens 2048 4096

The model and the measurement are bench_hybrid.py's "tiny" size (the tiny preset, fp32, pattern
SLLS, sparse layers block-sparse above 1K tokens with 64-token blocks and 7 slots, Lightning
chunks of 64), each (kernels, length) in a fresh process: `--warmup` untimed steps, then the
median of `--iters` timed steps, wall time and process CPU time (the CPU time is what the step
cost on a shared machine; tokens_per_cpu_s beside tokens_per_s). Memory: the process's peak resident set (ru_maxrss, GiB) and
what the steps added to the resident set before the first step. The all-dense model (torch SDPA)
at the same lengths is the baseline row. Writes benchmarks/results/cpu_hybrid_<device>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_hybrid import SIZES, run_child  # noqa: E402
from benchmarks.common import results_path, write_results  # noqa: E402

MODES = {  # row name -> (bench_hybrid pattern, extra overrides)
    "dense": ("dense", []),
    "hybrid-torch": ("hybrid", ["model.kernels=torch"]),
    "hybrid-triton-interpreter": ("hybrid", ["model.kernels=triton"]),
}


def loss_check(rows: list[dict]) -> dict[int, float]:
    """Per length with both hybrid rows: the first step's loss under torch minus under triton
    (same weights and tokens; the two implementations should agree to float32 rounding)."""
    first = {(r["mode"], r["seq_length"]): r["losses"][0] for r in rows if r.get("losses")}
    return {T: first[("hybrid-torch", T)] - first[(mode, T)] for mode, T in first
            if mode == "hybrid-triton-interpreter" and ("hybrid-torch", T) in first}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqlens", type=int, nargs="*", default=[2048, 4096, 8192],
                        help="lengths of the dense and torch rows")
    parser.add_argument("--triton-seqlens", type=int, nargs="*", default=[2048],
                        help="lengths of the interpreter rows (minutes per step)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (interpreter: 0)")
    parser.add_argument("--iters", type=int, default=3, help="timed steps (interpreter: 1)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    parser.add_argument("--note", default="", help="free text stored in the JSON (machine load)")
    parser.add_argument("--out", default=None, help="JSON file, or a folder for the default name "
                        "cpu_hybrid_<device>.json (default folder benchmarks/results)")
    args = parser.parse_args(argv)
    path = results_path("cpu_hybrid", args.out)
    plan = [(mode, T) for T in args.seqlens for mode in ("dense", "hybrid-torch")]
    plan += [("hybrid-triton-interpreter", T) for T in args.triton_seqlens]
    rows = []
    for mode, seq_length in plan:
        pattern, overrides = MODES[mode]
        interpreted = mode == "hybrid-triton-interpreter"
        child = argparse.Namespace(warmup=0 if interpreted else args.warmup,
                                   iters=1 if interpreted else args.iters,
                                   overrides=overrides, timeout=args.timeout)
        row = {"mode": mode, **run_child("tiny", pattern, seq_length, child),
               "warmup": child.warmup, "iters": child.iters}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
               if k != "losses"}, flush=True)
        # written after every row: a time limit still leaves what was measured
        write_results(path, "cpu_hybrid", rows, size="tiny", overrides=SIZES["tiny"]["overrides"],
                      hybrid_pattern=SIZES["tiny"]["hybrid"], note=args.note,
                      first_loss_torch_minus_triton=loss_check(rows))
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
