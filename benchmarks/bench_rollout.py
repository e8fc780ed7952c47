"""Rollout throughput (megatron_omni/rl/rollout.py generate): generated tokens per second of the
tiny text policy on CPU at TP=1 and TP=2 (one torchrun launch per TP size, gloo, fp32). Not a
timed test.

    python benchmarks/bench_rollout.py [--batch 8] [--prompt-len 16] [--new-tokens 64 256] [--repeats 3]
                                       [--out benchmarks/results/rollout_<device>.json]

Model: the parity tests' tiny model (tests/parallel/conftest.py TINY: 4 layers, hidden 64, ffn 192,
4 heads / 2 KV groups of 16), vocabulary 400, random weights; no end-of-turn id is ever sampled
(eos_ids=[-1]), so every response runs to --new-tokens. Sampling at temperature 1, top-p 0.9.
Per row: one warm-up call, then the median of --repeats calls' wall time (rank 0's; the call
ends in collectives, so it is the slowest rank's); tokens/s = batch · new tokens / that time.

The machine is shared: the JSON records `uptime` before and after, and the numbers are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import results_path, write_results  # noqa: E402

MODEL = ["model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=192", "model.num_attention_heads=4",
         "model.num_query_groups=2", "model.head_dim=16", "model.max_position_embeddings=4096",
         "model.backend=local", "training.precision=fp32"]
VOCAB = 400


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def worker(args) -> None:
    from megatron_omni import platform

    platform.prepare_process()
    platform.init_distributed()
    import torch
    from megatron.core import parallel_state as ps, tensor_parallel

    from megatron_omni.config import load_config
    from megatron_omni.models.llm.model import build_llm
    from megatron_omni.rl.rollout import generate

    tp = torch.distributed.get_world_size()
    ps.initialize_model_parallel(tp, 1)
    torch.manual_seed(0)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    model = build_llm(load_config(None, MODEL + [f"parallel.tp={tp}"]), VOCAB)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(8, VOCAB, (args.prompt_len,), generator=g).tolist() for _ in range(args.batch)]
    rows = []
    for new in args.new_tokens:
        times = []
        for i in range(args.repeats + 1):
            torch.distributed.barrier()
            start = time.perf_counter()
            out = generate(model, prompts, max_new_tokens=new, temperature=1.0, top_p=0.9, eos_ids=[-1], seed=i)
            times.append(time.perf_counter() - start)
            assert int(out.response_mask.sum()) == args.batch * new
        seconds = sorted(times[1:])[len(times[1:]) // 2]
        rows.append({"tp": tp, "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": new,
                     "seconds": round(seconds, 4), "tokens_per_s": round(args.batch * new / seconds, 1)})
    if torch.distributed.get_rank() == 0:
        Path(args.rows).write_text(json.dumps(rows))
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts per call")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256], help="max_new_tokens per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (after one warm-up)")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2], help="TP sizes (one launch each)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/rollout_<device>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    load, rows = {"uptime_before": uptime()}, []
    with tempfile.TemporaryDirectory() as tmp:
        for tp in args.tp:
            part = Path(tmp) / f"tp{tp}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}", __file__,
                   "--worker", "--rows", str(part), "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
                   "--repeats", str(args.repeats), "--new-tokens", *map(str, args.new_tokens)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
            for row in json.loads(part.read_text()):
                print(row, flush=True)
                rows.append(row)
    load["uptime_after"] = uptime()
    path = write_results(results_path("rollout", args.out), "rollout", rows, machine_load=load,
                         note="shared CPU machine: noisy; tiny model, sampling at temperature 1, top-p 0.9")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
