"""Run by tests/parallel/test_grpo.py under torchrun: several layouts in one launch, each from the
same step-0 weights (also the frozen reference) on the same fixed rollouts. Per layout: the
reference pass, the policy's own log-probs (forward-only) as the rollout policy's, both moved by
fixed offsets per (row, position) so ratios clip and the KL has a gradient, then one GRPO
forward/backward; every parameter's main_grad is written into a weights-only checkpoint under
<dir>/<name>/grads (read by the test in global layout) and the step's reported sums. A layout
named loop* instead trains through Trainer.train (real rollouts) and returns its losses.

    torchrun --nproc_per_node N tests/parallel/grpo_runner.py --out DIR/result.json [--save-init]
        --set a.b=c ... --layout NAME=o1,o2 ...
"""
import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path

from megatron_omni import platform

PROMPTS, GROUP = 2, 4
"""The fixed rollout batch: 2 prompts x 4 responses."""


def fixed_rollouts(vocab: int, text_from: int, dp_rank: int, dp: int, micro: int, seq_length: int):
    """This DP rank's micro-batches of the fixed rollouts: prompt j's G responses, lengths and
    rewards varying, one masked response token per prompt."""
    import torch

    from megatron_omni.rl.grpo import Rollout, group_advantages, rollout_batch

    g = torch.Generator().manual_seed(7)
    rows, rewards = [], torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 1.0, 1.0, 0.0])
    for j in range(PROMPTS):
        prompt = torch.randint(text_from, vocab, (5 + 3 * j,), generator=g).tolist()
        for k in range(GROUP):
            n = 6 + 5 * k
            response = torch.randint(text_from, vocab, (n,), generator=g).tolist()
            mask = [1.0] * n
            mask[2] = 0.0 if k == 1 else 1.0
            rows.append(Rollout(prompt, response, mask, [0.0] * n))
    advantages = group_advantages(rewards, GROUP, 1e-6)
    per_rank = len(rows) // dp
    mine = range(dp_rank * per_rank, (dp_rank + 1) * per_rank)
    return [rollout_batch([rows[i] for i in mine[s:s + micro]], advantages[list(mine[s:s + micro])], seq_length,
                          0, True, 32, 80) for s in range(0, per_rank, micro)], list(mine)


def offset(rows: list[int], seq_length: int, scale: float, phase: float):
    """A fixed [b, s] offset of the given global rows."""
    import torch

    return torch.tensor([[scale * math.sin(1.3 * r + 0.7 * p + phase) for p in range(seq_length)] for r in rows])


def run_layout(name: str, overrides: list[str], out: Path) -> dict:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_omni.config import config_to_dict, load_config
    from megatron_omni.rl.grpo import forward_logits, logprobs_loss_func
    from megatron_omni.training import checkpoint
    from megatron_omni.training.step import run_schedule
    from megatron_omni.training.trainer import Trainer

    cfg = load_config(None, overrides + [f"checkpoint.dir={out / name}"])
    trainer = Trainer(cfg)
    if name.startswith("loop"):
        history = trainer.train()
        writer = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
        ps.destroy_model_parallel()
        return {"train": history["train"]} if writer else {}
    model, t = trainer.model, cfg.training
    text_from = max(trainer.tokenizer.special_ids.values()) + 1
    batches, rows = fixed_rollouts(trainer.vocab_size, text_from, trainer.dp_rank, trainer.dp, t.micro_batch_size,
                                   cfg.data.seq_length)
    trainer.grpo.prepare(batches)

    def policy_step(data_iterator, chunk):
        return forward_logits(next(data_iterator), chunk, partial(logprobs_loss_func, "old_logps"))

    with torch.no_grad():
        run_schedule(model, batches, cfg.data.seq_length, t.micro_batch_size, forward_only=True,
                     forward_step_func=policy_step)
    b = t.micro_batch_size
    for i, batch in enumerate(batches):
        mine = rows[i * b:(i + 1) * b]
        if ps.is_pipeline_last_stage(ignore_virtual=True):  # where the loss and log-probs are
            batch.old_logps = batch.old_logps + offset(mine, cfg.data.seq_length, 0.5, 0.0) * batch.loss_mask
            batch.ref_logps = batch.ref_logps + offset(mine, cfg.data.seq_length, 0.4, 1.0) * batch.loss_mask
    for chunk in model:
        chunk.zero_grad_buffer()
    total = run_schedule(model, batches, cfg.data.seq_length, b, forward_only=False,
                         forward_step_func=trainer.forward_step)
    params = [p for chunk in model for p in chunk.module.parameters()]
    weights = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(p.main_grad if p.requires_grad else torch.zeros_like(p))
    checkpoint.save_checkpoint(out / name / "grads", 0, model, 0, config_to_dict(cfg), trainer.vocab_size)
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
    writer = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
              and ps.get_data_parallel_rank() == 0)
    result = {k: v.tolist() for k, v in total.items()} if writer else {}
    ps.destroy_model_parallel()
    return result


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
    from megatron_omni.training.trainer import Trainer

    out = Path(args.out).parent
    init = out / "init" / "iter_0000000"
    if args.save_init:
        from megatron.core import parallel_state as ps

        Trainer(load_config(None, args.overrides + ["phase=3", "rl.grpo=false", f"checkpoint.dir={out / 'init'}"])).save(weights_only=True)
        ps.destroy_model_parallel()
    base = args.overrides + [f"checkpoint.load={init}", f"rl.reference={init}"]
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
