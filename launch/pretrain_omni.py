"""Training entry point: ``torchrun --nproc_per_node N launch/pretrain_omni.py --phase 3 --config FILE``.

Runs on GPUs (NCCL) and, with the same command, on CPU (gloo). ``--set section.field=value``
overrides any config field; ``--dry-run`` validates the configuration for the launch's world size
and prints it without building anything.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=int, required=True, help="plan phase 1-6")
    parser.add_argument("--config", help="YAML config (defaults: the tiny CPU model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the config, then exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.config import ConfigError, config_to_dict, load_config, validate

    try:
        cfg = load_config(args.config, [f"phase={args.phase}", *args.overrides])
        if args.dry_run:
            from megatron_omni.training.phases import check_phase_runnable

            check_phase_runnable(cfg.phase, cfg.model.omni is not None)
            dp = validate(cfg, int(os.environ.get("WORLD_SIZE", 1)))
            print(yaml.safe_dump({**config_to_dict(cfg), "derived": {"dp": dp}}, sort_keys=False))
            return 0
        from megatron_omni.training.trainer import Trainer

        trainer = Trainer(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
