"""Console and TensorBoard logging of training steps; model FLOPs for MFU."""
from __future__ import annotations

import logging
import sys

from megatron_omni import platform
from megatron_omni.config.schema import OmniConfig

# Dense bf16 tensor-core peak per GPU (datasheets).
_PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "A800": 312e12}


def setup_logging(rank: int, megatron_level: str = "WARNING") -> None:
    """INFO on rank 0, warnings and errors from every rank, each line tagged with its rank.
    megatron-core's own INFO output (parameter lists, dataset index builds) shows only at
    megatron_level=INFO (its known warnings are filtered by platform.prepare_process)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)
    logging.getLogger("megatron").setLevel(megatron_level)


def peak_flops() -> float | None:
    """The GPU's dense bf16 peak, or None (CPU or an unknown GPU: MFU is not reported)."""
    name = platform.gpu_name()
    if name is None:
        return None
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def train_flops_per_token(cfg: OmniConfig, vocab_size: int) -> float:
    """Forward+backward FLOPs per token: 6 × matmul parameters + causal attention scores."""
    m, s = cfg.model, cfg.data.seq_length
    attn_dim = m.num_attention_heads * m.head_dim
    per_layer = (m.hidden_size * (attn_dim + 2 * m.num_query_groups * m.head_dim)
                 + attn_dim * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size)
    matmul_params = m.num_layers * per_layer + m.hidden_size * vocab_size
    return 6 * matmul_params + 6 * m.num_layers * s * attn_dim


LOSS_PARTS = ("kl", "mse", "lm")
"""Parts of a composite training loss logged beside it (distillation: training/distill.py)."""


class StepLogger:
    """One readable console line per logged step and TensorBoard scalars, from one rank."""

    def __init__(self, enabled: bool, tensorboard_dir: str | None, total_steps: int,
                 flops_per_token: float, world_size: int):
        self.enabled, self.total = enabled, total_steps
        self.flops_per_token, self.world = flops_per_token, world_size
        self.peak = peak_flops()
        self.tb = None
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(tensorboard_dir)

    def train(self, step: int, m: dict, seconds: float, tokens: int, log_line: bool,
              data: dict | None = None) -> None:
        """``data``: the omni loader's stats (training/data_stats.py), on the line and as scalars."""
        if not self.enabled:
            return
        tps = tokens / seconds
        scalars = {"train/loss": m["loss"], "train/lr": m["lr"], "train/grad_norm": m["grad_norm"],
                   "train/tokens_per_s": tps, "train/step_time_s": seconds}
        line = f"step {step:>6}/{self.total} | loss {m['loss']:.4f} | "
        for name in LOSS_PARTS:
            if name in m:
                scalars[f"train/{name}"] = m[name]
                line += f"{name} {m[name]:.4f} | "
        line += (f"lr {m['lr']:.3e} | grad_norm {m['grad_norm']:.3f} | {tps:,.0f} tok/s | "
                 f"{seconds:.2f} s/step")
        if self.peak:
            mfu = tps * self.flops_per_token / (self.world * self.peak)
            scalars["train/mfu"] = mfu
            line += f" | MFU {100 * mfu:.1f}%"
        if platform.has_cuda():
            line += f" | mem {platform.peak_memory_gib()[0]:.1f} GiB"
        for name in sorted(k for k in m if k.startswith("loss/")):  # omni batches: loss/<modality>
            scalars[f"train/{name}"] = m[name]
            line += f" | {name} {m[name]:.4f}"
        if m["skipped"]:
            line += " | step skipped (non-finite grads)"
        if data:
            scalars.update(data)
            parts = {"mix": [], "skipped": []}
            for key, value in data.items():  # data/mix/<m>: share, data/skipped/<reason>: count
                _, kind, name = key.split("/")
                parts[kind].append(f"{name} {value:.2f}" if kind == "mix" else f"{name} {value:.0f}")
            line += "".join(f" | {kind} {' '.join(p)}" for kind, p in parts.items() if p)
        self._write(step, scalars)
        if log_line:
            print(line, flush=True)

    def valid(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        print(f"step {step:>6}/{self.total} | validation loss {loss:.4f}", flush=True)
        self._write(step, {"valid/loss": loss})

    def _write(self, step: int, scalars: dict) -> None:
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
