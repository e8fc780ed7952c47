"""Hybrid (InfLLM-V2 sparse + Lightning linear) vs all-dense decoder: time and peak memory of one
forward+backward step as the sequence grows.

    python benchmarks/bench_hybrid.py            # GPU: the "1b" model, bf16, 32K and 128K tokens
    python benchmarks/bench_hybrid.py --tiny     # CPU: the tiny preset, fp32, 1K..8K tokens

Models (the layer pattern is the only difference between the two rows of a length):
- "1b": qwen3-1.7b widths cut to 14 layers (hidden 2048, 16 query / 8 KV heads of 128, SwiGLU
  6144), vocabulary 32,768 (not 151,936: at 128K tokens the logits alone would take 40 GB and
  say nothing about attention); full activation recomputation (one layer's activations live at a
  time), as phase 4 trains at these lengths. Sparse layers: the MiniCPM-SALA defaults (dense
  below 8K, 64-token blocks, top-64 + 1 init + 32 local blocks); linear layers: one K/V head per
  query head, chunk 64. Hybrid pattern: model.layer_pattern=hybrid (S at layers 0, 4, 8, 12, 13;
  L elsewhere).
- "tiny": the tiny preset (4 layers, hidden 64), pattern "SLLS", no recomputation; sparse layers
  run sparse above 1K tokens (64-token blocks, top-4 + 1 init + 2 local blocks), so the growth
  of each attention type is visible at 1K..8K. On CPU the S/L layers run the PyTorch ops
  (model.kernels=auto; `--set model.kernels=triton` times the Triton interpreter instead).

Each (pattern, length) runs in a fresh process (clean peak memory; an out-of-memory case is
recorded and the others still run): build the model, `--warmup` steps, then the median of
`--iters` timed steps (CUDA-synchronised). Peak memory: torch.cuda.max_memory_allocated on GPU;
on CPU the process's peak resident set (ru_maxrss) minus the resident set before the first
step, i.e. what the steps added. tokens/s = length / median step time (batch 1); the median
process CPU time per step is recorded beside it (on a shared CPU it is what the step itself
cost, while wall time also counts waiting for the cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import results_path, write_results  # noqa: E402
from megatron_omni import platform  # noqa: E402

SIZES = {
    "1b": dict(overrides=["model.preset=qwen3-1.7b", "model.num_layers=14", "model.vocab_size=32768",
                          "model.max_position_embeddings=131072", "training.recompute=full"],
               hybrid="hybrid", seqlens=[32768, 131072], warmup=1, iters=2),
    "tiny": dict(overrides=["model.preset=tiny", "model.vocab_size=512",
                            "model.max_position_embeddings=8192", "model.sparse.dense_len=1024",
                            "model.sparse.topk=4", "model.sparse.local_blocks=2",
                            "model.linear.chunk_size=64"],
                 hybrid="SLLS", seqlens=[1024, 2048, 4096, 8192], warmup=1, iters=2),
}
PATTERNS = ("dense", "hybrid")


def measure(size: str, pattern: str, seq_length: int, warmup: int, iters: int,
            extra: list[str]) -> dict:
    """One configuration, in this process: build, step, time; returns its row."""
    platform.prepare_process()
    from megatron.core import parallel_state as ps, tensor_parallel

    from megatron_omni.config import load_config
    from megatron_omni.models.llm.model import build_llm

    spec = SIZES[size]
    layers = [] if pattern == "dense" else [f"model.layer_pattern={spec['hybrid']}"]
    cfg = load_config(None, spec["overrides"] + extra + layers + [f"data.seq_length={seq_length}"])
    platform.init_distributed()
    ps.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = build_llm(cfg, cfg.model.vocab_size)
    device = platform.device()
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, seq_length + 1), generator=generator).to(device)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(seq_length, device=device)[None]

    def step() -> float:
        loss = model(inputs, positions, None, labels=labels).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    before = platform.reset_peak_memory()
    losses = [step() for _ in range(warmup)]
    times, cpu_times = [], []
    for _ in range(iters):
        platform.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        platform.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    seconds = sorted(times)[len(times) // 2]
    cpu_seconds = sorted(cpu_times)[len(cpu_times) // 2]
    peak, kind = platform.peak_memory_gib()
    return {"pattern": pattern, "layer_types": cfg.model.layer_types(), "seq_length": seq_length,
            "params": params, "seconds_per_step": seconds, "tokens_per_s": seq_length / seconds,
            "cpu_seconds_per_step": cpu_seconds, "tokens_per_cpu_s": seq_length / cpu_seconds,
            "peak_memory_gib": peak, "memory_before_steps_gib": before,
            "step_memory_gib": peak - before, "memory_kind": kind, "losses": losses}


def run_child(size: str, pattern: str, seq_length: int, args) -> dict:
    """measure() in a fresh process; a failure (e.g. out of memory) becomes an error row."""
    cmd = [sys.executable, __file__, "--child", size, pattern, str(seq_length),
           "--warmup", str(args.warmup), "--iters", str(args.iters),
           *(a for o in args.overrides for a in ("--set", o))]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and rows:
        row = json.loads(rows[-1])
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row = {"pattern": pattern, "seq_length": seq_length, "error": " | ".join(tail)}
    row["wall_s"] = time.perf_counter() - start
    return row


def main(argv=None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset on CPU (1K..8K)")
    parser.add_argument("--seqlens", type=int, nargs="+", default=None, help="override the lengths")
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS),
                        help="which models to run (default both)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="extra config override for both patterns (repeatable), e.g. "
                        "--set training.recompute=null")
    parser.add_argument("--out", default=None, help="JSON file, or a folder for the default name "
                        "hybrid_vs_dense_<device>.json (default folder benchmarks/results)")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "PATTERN", "LENGTH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "1b"
    if args.child:
        size, pattern, length = args.child
        print(json.dumps(measure(size, pattern, int(length), args.warmup, args.iters, args.overrides)), flush=True)
        return None
    if size == "1b" and not platform.has_cuda():
        parser.error("the 1b model needs a GPU; use --tiny on CPU")
    spec = SIZES[size]
    args.warmup = spec["warmup"] if args.warmup is None else args.warmup
    args.iters = spec["iters"] if args.iters is None else args.iters
    rows = []
    path = results_path("hybrid_vs_dense", args.out)
    for seq_length in args.seqlens or spec["seqlens"]:
        for pattern in args.patterns:
            rows.append(run_child(size, pattern, seq_length, args))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()
                   if k != "losses"}, flush=True)
            # written after every row: a time limit still leaves what was measured
            write_results(path, "hybrid_vs_dense", rows, size=size,
                          overrides=spec["overrides"] + args.overrides,
                          hybrid_pattern=spec["hybrid"], warmup=args.warmup, iters=args.iters)
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
