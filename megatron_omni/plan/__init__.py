"""Memory and layout planner (docs/planner.md): the bytes each rank of a layout holds, whether
they fit the GPU, and the alternative layouts that fit, ranked by an estimated step time.

    python -m megatron_omni.plan --config FILE [--world-size N] [--gpu-memory-gib 80]

``check_fits`` is what ``launch/pretrain_omni.py --dry-run`` runs. The planner reads only the
config: it builds no model (tests/plan compares its counts with the built model).
"""
from __future__ import annotations

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.plan.report import misfit, rank_table
from megatron_omni.plan.search import Layout, estimate, ranked
from megatron_omni.plan.step_time import Hardware

__all__ = ["Hardware", "Layout", "check_fits", "estimate", "ranked"]


def check_fits(cfg: OmniConfig, dp: int, world: int, hw: Hardware = Hardware()) -> list[str]:
    """The per-rank table of cfg's layout (a validated config and its dp); a ConfigError naming
    the fix when a rank needs more than the GPU holds."""
    layout = estimate(cfg, dp, hw)
    if not layout.fits(hw):
        options = ranked(cfg, world, hw)
        raise ConfigError(misfit(layout, options[0] if options else None, hw))
    return rank_table(layout, hw)
