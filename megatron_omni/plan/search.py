"""Alternative layouts of the same run (world size and global batch fixed): every valid
combination of tp, pp, vpp, cp, recompute and micro-batch size, the ones that fit ranked by
estimated step time."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate import validate
from megatron_omni.plan.memory import GIB, RankMemory, rank_memory
from megatron_omni.plan.step_time import Hardware, model_flops_per_step, step_seconds

RECOMPUTE = (None, "selective", "full")
VPP = (None, 2, 4)
MAX_PP = 16


@dataclass
class Layout:
    """One layout and its estimates."""

    cfg: OmniConfig
    dp: int
    memory: list[RankMemory]
    step_s: float

    @property
    def peak(self) -> int:
        """Bytes of the fullest rank."""
        return max(row.total for row in self.memory)

    def fits(self, hw: Hardware) -> bool:
        return self.peak <= hw.gpu_memory_gib * GIB

    def mfu(self, hw: Hardware, world: int) -> float:
        """Model FLOPs utilisation of the estimate (useful FLOPs, no recompute, over peak)."""
        return model_flops_per_step(self.cfg) / (self.step_s * world * hw.peak_tflops * 1e12)

    def name(self) -> str:
        p, t = self.cfg.parallel, self.cfg.training
        return (f"tp={p.tp} pp={p.pp} vpp={p.vpp or 1} cp={p.cp} "
                f"recompute={t.recompute or 'none'} micro_batch={t.micro_batch_size}")

    def settings(self, base: OmniConfig) -> str:
        """The field=value settings that turn `base`'s layout into this one."""
        changed = [f"{section}.{name}={yaml_value(getattr(getattr(self.cfg, section), name))}"
                   for section, name in LAYOUT_FIELDS
                   if getattr(getattr(self.cfg, section), name) != getattr(getattr(base, section), name)]
        return ", ".join(changed) or "none"


LAYOUT_FIELDS = (("parallel", "tp"), ("parallel", "pp"), ("parallel", "vpp"), ("parallel", "cp"),
                 ("parallel", "sequence_parallel"), ("training", "recompute"),
                 ("training", "micro_batch_size"))
"""The fields the search changes."""


def yaml_value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def estimate(cfg: OmniConfig, dp: int, hw: Hardware) -> Layout:
    return Layout(cfg, dp, rank_memory(cfg, dp), step_seconds(cfg, dp, hw))


def divisors(n: int, at_most: int) -> list[int]:
    return [d for d in range(1, min(n, at_most) + 1) if n % d == 0]


def candidates(cfg: OmniConfig, world: int, hw: Hardware):
    """Every valid (config, dp) with the layout fields changed, the rest of cfg kept."""
    t = cfg.training
    for tp in divisors(world, hw.gpus_per_node):
        for pp in divisors(world // tp, MAX_PP):
            for cp in divisors(world // (tp * pp), hw.gpus_per_node):
                for vpp in VPP if pp > 1 else (None,):
                    for micro in divisors(t.global_batch_size, 8):
                        parallel = dataclasses.replace(cfg.parallel, tp=tp, pp=pp, cp=cp, vpp=vpp,
                                                       sequence_parallel=tp > 1)
                        for recompute in RECOMPUTE:
                            training = dataclasses.replace(t, micro_batch_size=micro, recompute=recompute)
                            option = dataclasses.replace(cfg, parallel=parallel, training=training)
                            try:
                                yield option, validate(option, world)
                            except ConfigError:
                                continue


def ranked(cfg: OmniConfig, world: int, hw: Hardware) -> list[Layout]:
    """The alternative layouts that fit, fastest first (ties: less memory first)."""
    fitting = []
    for option, dp in candidates(cfg, world, hw):
        memory = rank_memory(option, dp)
        if max(row.total for row in memory) <= hw.gpu_memory_gib * GIB:
            fitting.append(Layout(option, dp, memory, step_seconds(option, dp, hw)))
    return sorted(fitting, key=lambda layout: (layout.step_s, layout.peak))
