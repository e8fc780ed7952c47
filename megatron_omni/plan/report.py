"""What the planner prints: the per-rank table, the ranked alternatives, and the one-line
verdict for a layout that does not fit."""
from __future__ import annotations

from megatron_omni.plan.memory import GIB
from megatron_omni.plan.search import Layout
from megatron_omni.plan.step_time import Hardware

COLUMNS = ("weights", "grads", "optimizer", "activations", "encoders", "logits", "margin")


def gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def rank_table(layout: Layout, hw: Hardware) -> list[str]:
    """One line per pipeline stage: parameters and GiB per category and in total."""
    header = f"{'stage':>5} {'params':>9} " + " ".join(f"{c:>11}" for c in COLUMNS) + f" {'total':>7}"
    lines = [f"per rank (GiB; dp={layout.dp}, GPU {hw.gpu_memory_gib:g} GiB): {layout.name()}", header]
    for row in layout.memory:
        cells = " ".join(f"{gib(getattr(row, c)):>11}" for c in COLUMNS)
        lines.append(f"{row.stage:>5} {row.params / 1e6:>8.1f}M {cells} {gib(row.total):>7}")
    return lines


def alternatives_table(layouts: list[Layout], hw: Hardware, world: int, top: int) -> list[str]:
    """The `top` fastest layouts that fit: peak GiB, step seconds, tokens/s per GPU, MFU."""
    if not layouts:
        return [f"no layout fits {world} GPUs of {hw.gpu_memory_gib:g} GiB"]
    lines = [f"layouts that fit, fastest first ({len(layouts)} in all):",
             f"{'#':>2} {'layout':<58} {'peak GiB':>8} {'step s':>7} {'tok/s/GPU':>9} {'MFU':>5}"]
    for i, layout in enumerate(layouts[:top], 1):
        tokens = layout.cfg.training.global_batch_size * layout.cfg.data.seq_length
        lines.append(f"{i:>2} {layout.name():<58} {gib(layout.peak):>8} {layout.step_s:>7.2f} "
                     f"{tokens / layout.step_s / world:>9.0f} {layout.mfu(hw, world):>5.0%}")
    return lines


def misfit(layout: Layout, best: Layout | None, hw: Hardware) -> str:
    """One sentence: what does not fit, by how much, and the fix (the fastest layout that fits)."""
    row = max(layout.memory, key=lambda r: r.total)
    parts = ", ".join(f"{c} {gib(getattr(row, c))}" for c in COLUMNS if getattr(row, c))
    text = (f"layout {layout.name()} needs {gib(row.total)} GiB on a rank of pipeline stage "
            f"{row.stage} ({parts}), more than the GPU's {hw.gpu_memory_gib:g} GiB; ")
    if best is None:
        return text + "no tp/pp/vpp/cp/recompute/micro-batch layout fits: use more or larger GPUs"
    return text + (f"raise tp/pp or turn on recompute, e.g. set {best.settings(layout.cfg)} "
                   f"({gib(best.peak)} GiB, ~{best.step_s:.1f} s/step; python -m megatron_omni.plan "
                   "ranks the other layouts that fit)")
