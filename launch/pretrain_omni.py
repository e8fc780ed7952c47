"""Training entry point: ``torchrun --nproc_per_node N launch/pretrain_omni.py --phase 3 --config FILE``.

Runs on GPUs (NCCL) and, with the same command, on CPU (gloo). ``--set section.field=value``
overrides any config field; ``--dry-run`` validates the configuration for the launch's world size
and prints it without building anything: the same checks the launch runs before it builds the
model (config/validate.py), including the files the run reads (tokenizer, data, checkpoint.load);
``--layout-only`` leaves out those files, e.g. to check a cluster config on a machine without its
data.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def first_rank() -> bool:
    """True on rank 0 of a torchrun launch (and without torchrun): the rank that reports a
    mistake every rank finds alike (the same arguments and config), so it shows once."""
    return os.environ.get("RANK", "0") == "0"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        if first_rank():
            super().error(message)  # usage and "error: ...", exit 2
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    from megatron_omni.config.phases import PHASES

    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=int, required=True, choices=sorted(PHASES), help="plan phase")
    parser.add_argument("--config", help="YAML config (defaults: the tiny CPU model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C",
                        help="override a config field, e.g. --set training.lr=1e-4 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the config, then exit")
    parser.add_argument("--layout-only", action="store_true",
                        help="with --dry-run: skip the checks of the files the run reads")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.config import ConfigError, config_to_dict, load_config, validate

    try:
        cfg = load_config(args.config, [f"phase={args.phase}", *args.overrides])
        if args.dry_run:
            dp = validate(cfg, int(os.environ.get("WORLD_SIZE", 1)), check_inputs=not args.layout_only)
            print(yaml.safe_dump({**config_to_dict(cfg), "derived": {"dp": dp}}, sort_keys=False))
            return 0
        from megatron_omni.training.ckpt_errors import CheckpointError
        from megatron_omni.training.trainer import Trainer

        try:
            Trainer(cfg).train()
        except CheckpointError as err:  # disk full, permission denied, no checkpoint verifies
            print(f"error: {err}", file=sys.stderr)
            return 1
    except ConfigError as err:
        if first_rank():
            print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
