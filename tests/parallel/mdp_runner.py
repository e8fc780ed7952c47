"""Run by tests/parallel/test_mdp.py under torchrun: several layouts in one launch, each from the
same step-0 weights on the same mixed micro-batches. Per layout: the first step's gradients
(every parameter's main_grad written into a weights-only checkpoint under <out>/<name>/grads,
so the test reads them in global layout), the encoder work per stage of that step, then a
3-step training run's losses (and a checkpoint at each step).

    torchrun --nproc_per_node N tests/parallel/mdp_runner.py --out DIR [--save-init]
        --set a.b=c ... --layout NAME=o1,o2 ...
"""
import argparse
import json
import sys
from pathlib import Path

from megatron_omni import platform

STEP_MIX = [("text", "text"), ("image", "audio"), ("cross", "video"), ("video", "text")]
"""The 4 micro-batches of every step (b = 2): one without media, every kind, audio+video."""


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


def run_layout(name: str, overrides: list[str], out: Path) -> dict:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import config_to_dict, load_config
    from megatron_omni.parallel.modality_decoupled import exchanges
    from megatron_omni.training import checkpoint
    from megatron_omni.training.step import run_schedule
    from megatron_omni.training.trainer import Trainer

    cfg = load_config(None, overrides + [f"checkpoint.dir={out / name}"])
    trainer = Trainer(cfg)
    model, t = trainer.model, cfg.training
    stream = mixed_stream(cfg, trainer.tokenizer, 0, trainer.dp_rank, trainer.dp)
    batches = [next(stream) for _ in range(trainer.num_micro)]
    for chunk in model:
        chunk.zero_grad_buffer()
    run_schedule(model, batches, cfg.data.seq_length, t.micro_batch_size, forward_only=False)
    work = [x.work() for x in exchanges(model)]
    params = [p for chunk in model for p in chunk.module.parameters()]
    weights = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(p.main_grad if p.requires_grad else torch.zeros_like(p))
    checkpoint.save_checkpoint(out / name / "grads", 0, model, 0, config_to_dict(cfg), trainer.vocab_size)
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
    history = trainer.train()
    result = {"train": history["train"], "work": work[0] if work else None}
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
    out = Path(args.out)
    if args.save_init:
        from megatron.core import parallel_state as ps

        Trainer(load_config(None, args.overrides + [f"checkpoint.dir={out / 'init'}"])).save(weights_only=True)
        ps.destroy_model_parallel()
    base = args.overrides + [f"checkpoint.load={out / 'init' / 'iter_0000000'}"]
    results = {}
    for spec in args.layout:
        name, _, rest = spec.partition("=")
        results[name] = run_layout(name, base + [o for o in rest.split(",") if o], out)
        if results[name]:
            (out / f"{name}.json").write_text(json.dumps(results[name]))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
