"""Modality-decoupled data parallelism (parallel.modality_decoupled) vs encoders on stage 0: step
time of text-only and of multimodal micro-batches at the same LLM token count, on 4 CPU ranks at
PP=4 with encoders made heavy relative to the LLM. Not a timed test.

    python benchmarks/bench_mdp.py [--steps 4] [--out benchmarks/results/mdp_cpu.json]

Model: the tiny LLM (4 layers, hidden 64, one per stage); the towers widened (vision: 8 layers,
hidden 192, 32 px images of 64 patches; audio: 8 layers, hidden 192) so that one micro-batch's
media costs more than its LLM work. Micro-batches: 8 per step of 2 rows of 128 tokens; text-only
steps hold only text rows, multimodal steps cycle image, video (8 frames), audio (60 mel
frames), audio+video and text rows — the same tokens through the LLM. Phase 3 (everything
trains). One torchrun launch holds both modes' models and runs their steps in turn (text-only
coupled, decoupled, multimodal coupled, decoupled, ...); per mode and step kind one warm-up step, then the median of --steps timed
steps (rank 0's wall time of train_step, which ends in collectives: the slowest rank's).

The machine is shared: the JSON records `uptime` before and after, and the numbers are noisy;
compare the ratios of one run, not absolute times across runs.
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

OVERRIDES = [
    "model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=192", "model.num_attention_heads=4",
    "model.num_query_groups=2", "model.head_dim=16", "model.omni.preset=tiny",
    "model.omni.vision_overrides={num_layers: 8, hidden_size: 192, num_attention_heads: 4, ffn_hidden_size: 768, image_size: 32}",
    "model.omni.audio_overrides={num_layers: 8, hidden_size: 192, num_attention_heads: 4, ffn_hidden_size: 768}",
    "data.seq_length=128", "training.micro_batch_size=2", "training.global_batch_size=16",
    "training.eval_interval=0", "checkpoint.save_interval=0", "parallel.pp=4", "phase=3",
]
MULTIMODAL = ("image", "video", "audio", "cross", "text")
MODES = {"coupled": [], "decoupled": ["parallel.modality_decoupled=true"]}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def worker(args) -> None:
    """Both modes in this torchrun launch (the same parallel state, one model and optimizer per
    mode), their steps interleaved so that the machine's load hits both alike; rank 0 writes
    the rows."""
    from megatron_omni import platform

    platform.prepare_process()
    import torch

    from megatron_omni.config import load_config
    from megatron_omni.contract.media import PLACEHOLDERS
    from megatron_omni.training.step import train_step
    from megatron_omni.training.trainer import Trainer, build_model, build_optimizer
    from tests.omni_batches import micro_batch

    def config(mode: str):
        return load_config(None, OVERRIDES + MODES[mode] + [
            f"data.tokenizer={args.tokenizer}", f"data.train_blend=[{args.prefix}]",
            f"data.cache_dir={args.cache}", f"checkpoint.dir={args.cache}/{mode}"])

    cfg = config("coupled")
    trainer = Trainer(cfg)
    special = trainer.tokenizer.special_ids
    ids = {kind: special[text] for kind, text in PLACEHOLDERS.items()}
    runs = {"coupled": (trainer.model, trainer.optimizer, trainer.scheduler)}
    model = build_model(config("decoupled"), trainer.vocab_size, ids)
    runs["decoupled"] = (model, *build_optimizer(config("decoupled"), model))
    t = cfg.training

    def step(rows: tuple[str, ...], seed: int) -> list:
        return [micro_batch(cfg.model.omni, [rows[(2 * i + j) % len(rows)] for j in range(t.micro_batch_size)],
                            cfg.data.seq_length, trainer.tokenizer.vocab_size, seed=seed + i, video_frames=8,
                            audio_frames=60, placeholder_ids=ids, text_ids_from=max(special.values()) + 1)
                for i in range(trainer.num_micro)]

    kinds = {"text_only": ("text",), "multimodal": MULTIMODAL}
    times = {(mode, kind): [] for mode in runs for kind in kinds}
    for i in range(args.steps + 1):
        for kind, rows in kinds.items():
            batches = step(rows, 100 * i)
            for mode, (model, optimizer, scheduler) in runs.items():
                torch.distributed.barrier()
                start = time.perf_counter()
                train_step(model, optimizer, scheduler, batches, cfg.data.seq_length, t.micro_batch_size)
                times[mode, kind].append(time.perf_counter() - start)
    rows = []
    for mode in runs:
        row = {"mode": mode}
        for kind in kinds:
            measured = sorted(times[mode, kind][1:])  # the first is a warm-up
            row[f"{kind}_s"] = measured[len(measured) // 2]
        row["ratio_multimodal_over_text"] = row["multimodal_s"] / row["text_only_s"]
        rows.append(row)
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps(rows))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per step kind (after one warm-up)")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/mdp_<device>.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("tokenizer", "prefix", "cache"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from omni_data_prep.demo_data import prepare_demo_data

    load = {"uptime_before": uptime()}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, prefix = prepare_demo_data(Path(tmp) / "text", num_docs=200, vocab_size=400)
        part = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
               __file__, "--worker", "--out", str(part), "--steps", str(args.steps),
               "--tokenizer", str(tokenizer), "--prefix", str(prefix), "--cache", str(Path(tmp) / "cache")]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
        rows = json.loads(part.read_text())
        for row in rows:
            print(row, flush=True)
    load["uptime_after"] = uptime()
    path = write_results(results_path("mdp", args.out), "mdp", rows, machine_load=load,
                         note="shared CPU machine: noisy; compare the two ratios of one run")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
