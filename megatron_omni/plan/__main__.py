"""``python -m megatron_omni.plan --config FILE [--world-size N] [--gpu-memory-gib 80]``: the
per-rank memory of the config's layout and the layouts that fit, fastest first."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from megatron_omni.config.load import ConfigError, load_config
from megatron_omni.config.validate import validate
from megatron_omni.plan.report import alternatives_table, misfit, rank_table
from megatron_omni.plan.search import estimate, ranked
from megatron_omni.plan.step_time import Hardware


def header_world_size(path: str | None) -> int:
    """The `# world_size: N` comment of an examples/ config, else 1."""
    if path is None or not Path(path).is_file():
        return 1
    found = re.search(r"^#\s*world_size:\s*(\d+)\s*$", Path(path).read_text(), re.MULTILINE)
    return int(found.group(1)) if found else 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megatron_omni.plan", description=__doc__)
    parser.add_argument("--config", help="YAML config (default: the tiny CPU model)")
    parser.add_argument("--world-size", type=int, help="GPUs (default: the config's '# world_size: N' comment, else 1)")
    parser.add_argument("--gpu-memory-gib", type=float, default=Hardware.gpu_memory_gib,
                        help="memory per GPU (default: %(default)s, the plan's A100 80GB)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="override a config field (repeatable)")
    parser.add_argument("--top", type=int, default=10, help="alternative layouts to list")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    world = args.world_size or header_world_size(args.config)
    hw = dataclasses.replace(Hardware(), gpu_memory_gib=args.gpu_memory_gib)
    try:
        cfg = load_config(args.config, args.overrides)
        layout = estimate(cfg, validate(cfg, world), hw)
        options = ranked(cfg, world, hw)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print("\n".join(rank_table(layout, hw)))
    print(f"estimated step {layout.step_s:.2f} s, MFU {layout.mfu(hw, world):.0%}")
    if not layout.fits(hw):
        print(f"does not fit: {misfit(layout, options[0] if options else None, hw)}")
    print()
    print("\n".join(alternatives_table(options, hw, world, args.top)))
    return 0 if layout.fits(hw) else 1


if __name__ == "__main__":
    sys.exit(main())
