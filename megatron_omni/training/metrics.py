"""The training log: one console line per logged step and TensorBoard scalars, from one rank.

`step_report` turns known values into the line and the scalars (no clocks, no collectives);
`StepLogger` keeps the clocks and writes. A logged line reads

    step 10/100 | loss 2.3456 | lr 1.000e-04 | lr/projectors 1.000e-03 | grad_norm 0.812
    | 0.41 s/step | elapsed 0:00:04 | ETA 0:00:37 | samples 80 | tokens 19,874
    | tok/s/GPU 12,345 | MFU 31.2% | peak_mem 1.2 GiB | skipped_steps 0 | loss/image_text 2.1
    | mix image_text 0.62 audio 0.38 | skipped corrupt_image 1 too_long 0

(one line; MFU only where the GPU's peak is known, mix/skipped only for the omni loader), and
at training.eval_interval

    step 10/100 | validation loss 2.4012 | validation loss/text 2.2001 | validation loss/audio 2.7

(omni: one loss per modality of data.multimodal.valid and their token-weighted total).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from megatron_omni.training.flops import mfu, peak_flops

LOSS_PARTS = ("kl", "mse", "lm")
"""Parts of a composite training loss logged beside it (distillation: training/distill.py)."""
PREFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")
"""What preference training logs beside its loss (training/dpo.py): means over the step's pairs."""


def setup_logging(rank: int, megatron_level: str = "WARNING") -> None:
    """INFO on rank 0, warnings and errors from every rank, each line tagged with its rank.
    megatron-core's own INFO output (parameter lists, dataset index builds) shows only at
    megatron_level=INFO (its known warnings are filtered by platform.prepare_process)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)
    logging.getLogger("megatron").setLevel(megatron_level)


def duration(seconds: float) -> str:
    """H:MM:SS."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def eta_seconds(elapsed: float, steps_done: int, steps_left: int) -> float:
    """Time to the last step at the mean step time so far."""
    return elapsed / steps_done * steps_left if steps_done else 0.0


@dataclass
class Progress:
    """Where the run stands at a logged step. Times count from when this process started
    training, tokens and skipped steps from when it started (a resumed run starts them again);
    samples from the run's start (checkpointed)."""

    elapsed_s: float
    steps_done: int
    steps_left: int
    interval_s: float        # since the previous logged step
    consumed_samples: int
    consumed_tokens: float   # non-padding tokens
    skipped_steps: int       # optimizer steps skipped for non-finite gradients


def _progress(p: Progress, interval: dict, world: int, peak: float | None) -> tuple[list, dict]:
    """(line parts, scalars) of the progress and the interval's throughput, MFU and memory."""
    eta = eta_seconds(p.elapsed_s, p.steps_done, p.steps_left)
    tps = interval["tokens"] / p.interval_s / world if p.interval_s > 0 else 0.0
    parts = [f"elapsed {duration(p.elapsed_s)}", f"ETA {duration(eta)}", f"samples {p.consumed_samples}",
             f"tokens {p.consumed_tokens:,.0f}", f"tok/s/GPU {tps:,.0f}"]
    scalars = {"train/elapsed_s": p.elapsed_s, "train/eta_s": eta,
               "train/consumed_samples": p.consumed_samples, "train/consumed_tokens": p.consumed_tokens,
               "train/tokens_per_s_per_gpu": tps}
    util = mfu(interval["flops"], p.interval_s, world, peak)
    if util is not None:
        parts.append(f"MFU {100 * util:.1f}%")
        scalars["train/mfu"] = util
    parts += [f"peak_mem {interval['peak_mem_gib']:.1f} GiB", f"skipped_steps {p.skipped_steps}"]
    scalars.update({"train/peak_mem_gib": interval["peak_mem_gib"], "train/skipped_steps": p.skipped_steps})
    return parts, scalars


def step_report(step: int, total: int, m: dict, lrs: dict[str, float], seconds: float,
                progress: Progress | None = None, interval: dict | None = None, world: int = 1,
                peak: float | None = None) -> tuple[str, dict[str, float]]:
    """(console line, TensorBoard scalars) of a step: ``m`` train_step's metrics, ``lrs`` the
    learning rate of each parameter group ("lr", "lr/<group>"); at logged steps ``progress`` and
    ``interval`` (training/data_stats.py DataStats.collect) add the rest."""
    parts = [f"step {step:>6}/{total}", f"loss {m['loss']:.4f}"]
    scalars = {"train/loss": m["loss"], "train/grad_norm": m["grad_norm"], "train/step_time_s": seconds}
    for name in LOSS_PARTS + PREFERENCE_METRICS:
        if name in m:
            scalars[f"train/{name}"] = m[name]
            parts.append(f"{name} {m[name]:.4f}")
    for name, lr in lrs.items():
        scalars[f"train/{name}"] = lr
        parts.append(f"{name} {lr:.3e}")
    parts += [f"grad_norm {m['grad_norm']:.3f}", f"{seconds:.2f} s/step"]
    if progress is not None:
        more, values = _progress(progress, interval, world, peak)
        parts += more
        scalars.update(values)
    for name in sorted(k for k in m if k.startswith("loss/")):  # omni: loss/<mix modality>
        scalars[f"train/{name}"] = m[name]
        parts.append(f"{name} {m[name]:.4f}")
    for name in sorted(k for k in m if k.startswith("rl/")):  # GRPO: training/grpo.py
        scalars[name] = m[name]
        parts.append(f"{name.removeprefix('rl/')} {m[name]:.4g}")
    if "encoder_items" in m:  # parallel.modality_decoupled: this replica's encoder work per stage
        parts.append(f"encoder items {'/'.join(map(str, m['encoder_items']))} "
                     f"cost {'/'.join(f'{c:.3g}' for c in m['encoder_cost'])}")
        for stage, (items, cost) in enumerate(zip(m["encoder_items"], m["encoder_cost"])):
            scalars[f"encoder/items/stage{stage}"] = items
            scalars[f"encoder/cost/stage{stage}"] = cost
    if m["skipped"]:
        parts.append("step skipped (non-finite grads)")
    data = {k: v for k, v in (interval or {}).items() if k.startswith("data/")}
    scalars.update(data)
    groups = {"mix": [], "skipped": []}
    for key, value in data.items():  # data/mix/<m>: share, data/skipped/<reason>: count
        _, kind, name = key.split("/")
        groups[kind].append(f"{name} {value:.2f}" if kind == "mix" else f"{name} {value:.0f}")
    parts += [f"{kind} {' '.join(p)}" for kind, p in groups.items() if p]
    return " | ".join(parts), scalars


class StepLogger:
    """Writes step_report's line and scalars from the logging rank; keeps the clocks."""

    def __init__(self, enabled: bool, tensorboard_dir: str | None, total_steps: int, world_size: int):
        self.enabled, self.total, self.world = enabled, total_steps, world_size
        self.peak = peak_flops()
        self.tb = None
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(tensorboard_dir)
        self.tokens, self.skipped = 0.0, 0  # since this process started
        self.start(0)

    def start(self, step: int) -> None:
        """Training (re)starts at ``step``: elapsed time and the ETA count from here."""
        self.t0 = self.last = time.perf_counter()
        self.first_step = step

    def parameters(self, step: int, trainable: int, total: int) -> None:
        if not self.enabled:
            return
        print(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.1f}%)",
              flush=True)
        self._write(step, {"params/trainable": trainable, "params/total": total})

    def train(self, step: int, m: dict, lrs: dict[str, float], seconds: float, consumed_samples: int,
              interval: dict | None = None) -> None:
        """A step's metrics; with ``interval`` (a logged step) the console line too."""
        self.skipped += int(m["skipped"])
        if not self.enabled:
            return
        progress = None
        if interval is not None:
            now = time.perf_counter()
            self.tokens += interval["tokens"]
            progress = Progress(now - self.t0, step - self.first_step, self.total - step, now - self.last,
                                consumed_samples, self.tokens, self.skipped)
            self.last = now
        line, scalars = step_report(step, self.total, m, lrs, seconds, progress, interval, self.world,
                                    self.peak)
        self._write(step, scalars)
        if interval is not None:
            print(line, flush=True)

    def valid(self, step: int, losses: dict[str, float]) -> None:
        """Trainer.validate's losses ("loss", omni: "loss/<m>" per held-out modality) as one line
        (validation loss 2.3456 | validation loss/text 2.1 | ...) and valid/<name> scalars."""
        if not self.enabled:
            return
        parts = [f"step {step:>6}/{self.total}"] + [f"validation {name} {v:.4f}" for name, v in losses.items()]
        print(" | ".join(parts), flush=True)
        self._write(step, {f"valid/{name}": v for name, v in losses.items()})

    def _write(self, step: int, scalars: dict) -> None:
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
