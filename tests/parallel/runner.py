"""Run by the multi-rank tests under torchrun: train (or only save the initial weights, or only
validate) with config overrides, then write what the last pipeline stage saw as JSON.

    torchrun --nproc_per_node N tests/parallel/runner.py --out result.json [--save-init | --validate] --set a.b=c ...
"""
import argparse
import json
import os
import sys
from pathlib import Path

from megatron_omni import platform


def _die_inside_save(step: int) -> None:
    """Make the checkpoint save of `step` write all its files, then kill the process."""
    from megatron_omni.training import checkpoint

    real_save = checkpoint.dist_checkpointing.save

    def save(state, path, **kwargs):
        real_save(state, path, **kwargs)
        if path.endswith(f"iter_{step:07d}.tmp"):
            os._exit(9)

    checkpoint.dist_checkpointing.save = save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--save-init", action="store_true", help="save step-0 weights and exit")
    mode.add_argument("--validate", action="store_true", help="only compute the validation loss")
    mode.add_argument("--die-after", type=int, metavar="N",
                      help="train N steps, then exit abruptly (no cleanup, no further save)")
    mode.add_argument("--max-steps", type=int, metavar="N", help="train at most N steps in this run")
    mode.add_argument("--die-in-save", type=int, metavar="STEP",
                      help="train, and exit abruptly inside the save of STEP, after its files are written")
    parser.add_argument("--grads", action="store_true",
                        help="save the first step's gradients under <checkpoint.dir>/grads (tests/parallel/grads.py)")
    parser.add_argument("--synthetic-omni", action="store_true",
                        help="omni micro-batches from tests/omni_batches.py instead of the data loader")
    args = parser.parse_args()
    platform.prepare_process()
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import load_config
    from megatron_omni.training.trainer import Trainer

    if args.synthetic_omni:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from megatron_omni.training import trainer as trainer_module
        from tests.omni_batches import synthetic_stream

        trainer_module.omni_micro_batches = synthetic_stream
    trainer = Trainer(load_config(None, args.overrides))
    if args.grads:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from tests.parallel.grads import save_first_step_grads

        save_first_step_grads(trainer, Path(trainer.cfg.checkpoint.dir) / "grads")
    result = {}
    if args.die_in_save is not None:
        _die_inside_save(args.die_in_save)
    if args.die_after is not None:
        trainer.train(max_steps=args.die_after)
        os._exit(9)
    elif args.save_init:
        trainer.save(weights_only=True)
    elif args.validate:
        result = {"valid": trainer.validate()}
    else:
        result = trainer.train(max_steps=args.max_steps)
    writer = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
              and ps.get_data_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0)
    if writer:
        with open(args.out, "w") as f:
            json.dump(result, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
