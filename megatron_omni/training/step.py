"""One training or evaluation step of the decoder through megatron-core's pipeline schedules."""
from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_omni.parallel.context_parallel import split_for_cp


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Token-summed loss and token count; megatron divides by the global token count, so any
    data-parallel or micro-batch split gives the gradient of the global per-token mean."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(output_tensor.float().reshape(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator, model):
    """megatron's forward_step_func: one micro-batch through this rank's model chunk."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    # [b, s] each; under context parallelism this rank's load-balanced chunks (positions global)
    tokens, position_ids, labels, loss_mask = (
        split_for_cp(batch[k].to(device, non_blocking=True), seq_dim=1)
        for k in ("tokens", "position_ids", "labels", "loss_mask"))
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(loss_func, loss_mask)


def run_schedule(model, micro_batches: list, seq_length: int, micro_batch_size: int,
                 forward_only: bool) -> torch.Tensor | None:
    """Run the schedule (1F1B, interleaved with vpp, or no pipelining) over one global batch's
    micro-batches for this rank. Returns [loss_sum, tokens] summed over data- and context-parallel
    ranks on the last pipeline stage, None elsewhere."""
    iterators = [iter(micro_batches) for _ in model]
    reports = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.stack([r["lm loss"] for r in reports]).sum(0)
    dp_cp = ps.get_data_parallel_group(with_context_parallel=True)
    torch.distributed.all_reduce(total, group=dp_cp)
    return total


def train_step(model, optimizer, scheduler, micro_batches: list, seq_length: int,
               micro_batch_size: int) -> dict:
    """Forward/backward over the global batch, optimizer step, scheduler step."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    total = run_schedule(model, micro_batches, seq_length, micro_batch_size, forward_only=False)
    lr = optimizer.param_groups[0]["lr"]
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=1)
    out = {"grad_norm": grad_norm, "lr": lr, "skipped": not updated}
    if total is not None:
        out.update(loss=(total[0] / total[1]).item(), tokens=int(total[1].item()))
    return out


@torch.no_grad()
def evaluate(model, batches: list[list], seq_length: int, micro_batch_size: int) -> float | None:
    """Mean per-token validation loss over global batches (last pipeline stage; None elsewhere)."""
    for chunk in model:
        chunk.eval()
    totals = [run_schedule(model, mb, seq_length, micro_batch_size, forward_only=True) for mb in batches]
    for chunk in model:
        chunk.train()
    if totals[0] is None:
        return None
    total = torch.stack(totals).sum(0)
    return (total[0] / total[1]).item()
