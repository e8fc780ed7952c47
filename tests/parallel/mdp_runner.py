"""Run by tests/parallel/test_mdp.py under torchrun: several layouts in one launch, each from the
same step-0 weights on the same mixed micro-batches. Per layout: the first step's gradients
(every parameter's main_grad written into a weights-only checkpoint under <dir>/<name>/grads,
so the test reads them in global layout), the encoder work per stage of that step, then a
3-step training run's losses. A layout ``NAME=from:SRC,o1,...`` instead resumes the step-2
checkpoint of the earlier layout SRC (model, optimizer, scheduler) and trains step 3.

    torchrun --nproc_per_node N tests/parallel/mdp_runner.py --out DIR/result.json [--save-init]
        --set a.b=c ... --layout NAME=o1,o2 ...

Run folders (init, one per layout) go under DIR; result.json maps each layout to what its last
pipeline stage saw: {"train": {step: loss}, "work": [items, cost] per stage or null}.
"""
import argparse
import json
import sys
from pathlib import Path

from megatron_omni import platform

STEP_MIX = [("text", "text"), ("image", "audio"), ("cross", "cross"), ("video", "text")]
"""The 4 micro-batches of every step (b = 2): one without media, every kind, two audio+video
samples in one micro-batch (the vision-audio contrastive loss needs two)."""


def mixed_stream(cfg, tokenizer, consumed_samples, dp_rank, dp):
    """omni_micro_batches stand-in: step k's micro-batches are STEP_MIX (seeded by k and
    position); DP rank r takes the r-th share."""
    from megatron_omni.contract.media import PLACEHOLDERS
    from tests.omni_batches import micro_batch

    t = cfg.training
    per_step = t.global_batch_size // t.micro_batch_size
    per_rank = per_step // dp
    special = tokenizer.special_ids
    ids = {kind: special[text] for kind, text in PLACEHOLDERS.items()}
    step = consumed_samples // t.global_batch_size
    while True:
        for i in range(dp_rank * per_rank, (dp_rank + 1) * per_rank):
            yield micro_batch(cfg.model.omni, list(STEP_MIX[i % len(STEP_MIX)]), cfg.data.seq_length,
                              tokenizer.vocab_size, seed=100 * step + i, placeholder_ids=ids,
                              text_ids_from=max(special.values()) + 1)
        step += 1


def resume_copy(source: Path, target: Path) -> None:
    """target: a run folder holding only source's step-2 checkpoint (rank 0; all wait)."""
    import shutil

    import torch

    from megatron_omni.training import checkpoint

    if torch.distributed.get_rank() == 0:
        target.mkdir(parents=True)
        shutil.copytree(checkpoint.iteration_dir(source, 2), checkpoint.iteration_dir(target, 2))
        (target / checkpoint.POINTER).write_text("2\n")
    torch.distributed.barrier()


def run_layout(name: str, overrides: list[str], out: Path) -> dict:
    from megatron_omni.config import load_config
    from megatron_omni.parallel.modality_decoupled import exchanges
    from megatron_omni.training.step import run_schedule
    from megatron_omni.training.trainer import Trainer
    from tests.parallel.grads import save_main_grads

    source = next((o.removeprefix("from:") for o in overrides if o.startswith("from:")), None)
    overrides = [o for o in overrides if not o.startswith("from:")] + [f"checkpoint.dir={out / name}"]
    if source is not None:
        resume_copy(out / source, out / name)
        trainer = Trainer(load_config(None, overrides))
        return finish({"train": trainer.train()["train"]})
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg)
    model, t = trainer.model, cfg.training
    stream = mixed_stream(cfg, trainer.tokenizer, 0, trainer.dp_rank, trainer.dp)
    batches = [next(stream) for _ in range(trainer.num_micro)]
    for chunk in model:
        chunk.zero_grad_buffer()
    run_schedule(model, batches, cfg.data.seq_length, t.micro_batch_size, forward_only=False)
    work = [x.work() for x in exchanges(model)]
    save_main_grads(model, cfg, trainer.vocab_size, out / name / "grads")
    history = trainer.train()
    return finish({"train": history["train"], "work": work[0] if work else None})


def finish(result: dict) -> dict:
    """result on the rank that writes it ({} elsewhere); the layout's parallel state torn down."""
    from megatron.core import parallel_state as ps

    writer = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
              and ps.get_data_parallel_rank() == 0)
    ps.destroy_model_parallel()
    return result if writer else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--layout", action="append", default=[], help="NAME=override,override")
    parser.add_argument("--save-init", action="store_true", help="first save step-0 weights to <out>/init")
    args = parser.parse_args()
    platform.prepare_process()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch

    from megatron_omni.config import load_config
    from megatron_omni.training import trainer as trainer_module
    from megatron_omni.training.trainer import Trainer

    trainer_module.omni_micro_batches = mixed_stream
    out = Path(args.out).parent
    if args.save_init:
        from megatron.core import parallel_state as ps

        Trainer(load_config(None, args.overrides + [f"checkpoint.dir={out / 'init'}"])).save(weights_only=True)
        ps.destroy_model_parallel()
    base = args.overrides + [f"checkpoint.load={out / 'init' / 'iter_0000000'}"]
    results = {}
    for spec in args.layout:
        name, _, rest = spec.partition("=")
        mine = run_layout(name, base + [o for o in rest.split(",") if o], out)
        if mine:
            results[name] = mine
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, results)
    if torch.distributed.get_rank() == 0:
        Path(args.out).write_text(json.dumps({k: v for r in gathered for k, v in r.items()}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
