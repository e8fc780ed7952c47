"""Training throughput on one device: a ~1B-parameter Qwen3-shaped model, N steps, bf16 on a GPU.

    python benchmarks/train_throughput.py            # GPU: the "1b" model, 20 steps, bf16
    python benchmarks/train_throughput.py --tiny     # CPU: the tiny preset, 3 steps, fp32

The "1b" model is the qwen3-1.7b preset cut from 28 to 14 layers: hidden 2048, SwiGLU 6144,
16 query / 8 KV heads of 128, QK-norm, tied 151,936-token embedding; 1.02B parameters (311M
embedding + 14 × 50.3M per layer). Sequences of 4096 tokens, micro-batch 2, global batch 8
(32K tokens per step).

It trains the way launch/pretrain_omni.py does (load_config → Trainer → Trainer.train) on the
demo corpus, prepared on the fly in a temporary folder (data_prep/demo_data.py: a 400-piece
sentencepiece tokenizer and its indexed binaries). model.vocab_size stays the preset's 151,936,
so the embedding and output layer have Qwen3's full size (the demo ids are a subset of them).
Validation and checkpoints are off: training.train_steps is one more than the steps run, so the
run never reaches its final save; the learning rate warms up over half the steps.

Timing: the first --warmup steps (allocator growth, first kernels) are left out; tokens/s =
timed steps × global batch × seq_length / their CUDA-synchronised wall time. MFU = tokens/s ×
FLOPs per token (the trainer's training/flops.py StepFlops: 6 × matmul parameters + causal
attention) / the GPU's dense bf16 peak (flops.peak_flops; null on CPU or an unknown GPU). Peak memory is
torch.cuda.max_memory_allocated on a GPU, the process's maximum resident set on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import results_path, write_results  # noqa: E402
from megatron_omni import platform  # noqa: E402

SIZES = {
    "1b": dict(overrides=["model.preset=qwen3-1.7b", "model.num_layers=14", "training.lr=3e-4",
                          "training.min_lr=3e-5"], seq_length=4096,
               micro_batch_size=2, global_batch_size=8, steps=20, warmup=5, num_docs=2000),
    "tiny": dict(overrides=["model.preset=tiny"], seq_length=128, micro_batch_size=2,
                 global_batch_size=4, steps=3, warmup=1, num_docs=300),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny preset for 3 steps (fp32 on CPU); default: the 1b model")
    for name in ("steps", "warmup", "seq_length", "micro_batch_size", "global_batch_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help=f"override the size's {name}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="extra config override, as in launch/pretrain_omni.py (repeatable)")
    parser.add_argument("--out", default=None, help="JSON file, or a folder for the default name "
                        "train_throughput_<device>.json (default folder benchmarks/results)")
    args = parser.parse_args(argv)
    if not args.tiny and not platform.has_cuda():
        parser.error("the 1b model needs a GPU; use --tiny on CPU")
    size = SIZES["tiny" if args.tiny else "1b"]
    for name in ("steps", "warmup", "seq_length", "micro_batch_size", "global_batch_size"):
        if getattr(args, name) is None:
            setattr(args, name, size[name])
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup ({args.warmup}) must be in [0, --steps ({args.steps}))")
    args.overrides = size["overrides"] + args.overrides
    args.num_docs = size["num_docs"]
    return args


def make_config(args: argparse.Namespace, tokenizer, data_prefix, run_dir):
    """The run's OmniConfig: the size's overrides, then data, batch and schedule settings."""
    from megatron_omni.config import load_config

    return load_config(None, [
        *args.overrides, f"data.tokenizer={tokenizer}", f"data.train_blend=[{data_prefix}]",
        f"data.seq_length={args.seq_length}", f"training.micro_batch_size={args.micro_batch_size}",
        f"training.global_batch_size={args.global_batch_size}",
        f"training.train_steps={args.steps + 1}", f"training.warmup_steps={args.steps // 2}",
        "training.eval_interval=0", "checkpoint.save_interval=0", "checkpoint.resume=false",
        f"checkpoint.dir={run_dir}"])


def main(argv=None) -> Path:
    """Train, time and write the JSON results; returns their path."""
    args = parse_args(argv)
    platform.prepare_process()
    from megatron_omni.training.flops import peak_flops
    from megatron_omni.training.trainer import Trainer
    from omni_data_prep.demo_data import prepare_demo_data

    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        tokenizer, prefix = prepare_demo_data(Path(tmp) / "data", num_docs=args.num_docs)
        cfg = make_config(args, tokenizer, prefix, Path(tmp) / "run")
        trainer = Trainer(cfg)
        params = sum(p.numel() for chunk in trainer.model for p in chunk.parameters())
        sync = platform.synchronize
        losses = dict(trainer.train(max_steps=args.warmup)["train"])
        sync()
        start = time.perf_counter()
        losses.update(trainer.train(max_steps=args.steps - args.warmup)["train"])
        sync()
        seconds = time.perf_counter() - start
        torch.distributed.destroy_process_group()

    timed = args.steps - args.warmup
    tokens_per_s = timed * args.global_batch_size * args.seq_length / seconds
    flops_per_token = trainer.flops.per_token
    peak = peak_flops()
    memory, memory_kind = platform.peak_memory_gib()
    row = {"params": params, "seq_length": args.seq_length,
           "micro_batch_size": args.micro_batch_size, "global_batch_size": args.global_batch_size,
           "steps": args.steps, "timed_steps": timed, "seconds_per_step": seconds / timed,
           "tokens_per_s": tokens_per_s,
           "model_tflops_per_s": tokens_per_s * flops_per_token / 1e12,
           "mfu": tokens_per_s * flops_per_token / peak if peak else None,
           "peak_memory_gib": memory, "peak_memory_kind": memory_kind,
           "losses": [losses[s] for s in sorted(losses)]}
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "losses"})
    path = write_results(results_path("train_throughput", args.out), "train_throughput", [row],
                         dtype=str(trainer.model[0].config.params_dtype),
                         overrides=args.overrides, model=dataclasses.asdict(cfg.model),
                         parallel=dataclasses.asdict(cfg.parallel),
                         flops_per_token=flops_per_token, peak_bf16_flops=peak)
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
