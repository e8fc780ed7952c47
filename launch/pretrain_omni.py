"""Training entry point: ``torchrun --nproc_per_node N launch/pretrain_omni.py --phase 3 --config FILE``.

Runs on GPUs (NCCL) and, with the same command, on CPU (gloo). ``--set section.field=value``
overrides any config field; ``--dry-run`` validates the configuration for the launch's world size
and prints it without building anything: the same checks the launch runs before it builds the
model (config/validate.py), including the files the run reads (tokenizer, data, checkpoint.load);
``--layout-only`` leaves out those files, e.g. to check a cluster config on a machine without its
data; ``--world-size N`` validates for N ranks (default: $WORLD_SIZE, which torchrun sets, else 1),
e.g. a 32-GPU config on a machine without GPUs (launch/common.sh passes the config's own size).
The dry run also plans the memory of each rank (megatron_omni/plan, docs/planner.md): a layout
that cannot fit the GPU (``--gpu-memory-gib``) is a config error naming the fix, one that fits
prints its per-rank table after the config, as YAML comments.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import yaml


def first_rank() -> bool:
    """True on rank 0 of a torchrun launch (and without torchrun): the rank that reports a
    mistake every rank finds alike (the same arguments and config), so it shows once."""
    return os.environ.get("RANK", "0") == "0"


def leave_the_report_to_rank0(code: int) -> int:
    """On the other ranks: wait before exiting with `code`, so rank 0 reports the mistake and
    exits first (torchrun then stops this rank); exiting at once can make torchrun kill rank 0
    before its line is out."""
    if not first_rank():
        time.sleep(30)
    return code


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        if first_rank():
            super().error(message)  # usage and "error: ...", exit 2
        sys.exit(leave_the_report_to_rank0(2))


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
    parser.add_argument("--world-size", type=_positive, default=None, metavar="N",
                        help="with --dry-run: validate for N ranks (default: $WORLD_SIZE, else 1)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0,
                        help="with --dry-run: memory per GPU the layout must fit (default: %(default)s, A100 80GB)")
    args = parser.parse_args(argv)
    if args.world_size is not None and not args.dry_run:
        parser.error("--world-size needs --dry-run (a run takes its world size from torchrun)")
    return args


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of ranks")
    return int(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_omni import platform

    platform.prepare_process()
    from megatron_omni.config import ConfigError, config_to_dict, load_config, validate

    try:
        cfg = load_config(args.config, [f"phase={args.phase}", *args.overrides])
        if args.dry_run:
            from megatron_omni.plan import Hardware, check_fits

            world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
            dp = validate(cfg, world, check_inputs=not args.layout_only)
            table = check_fits(cfg, dp, world, Hardware(gpu_memory_gib=args.gpu_memory_gib))
            print(yaml.safe_dump({**config_to_dict(cfg), "derived": {"dp": dp}}, sort_keys=False))
            print("\n".join(f"# {line}" for line in table))
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
        return leave_the_report_to_rank0(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
