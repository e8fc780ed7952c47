"""One training or evaluation step through megatron-core's pipeline schedules: text micro-batches
(dicts of tokens, labels, loss_mask, position_ids[, cu_seqlens]) for the LLM, omni micro-batches
(contract.batch.OmniBatch: also media, sample_index, sample_modality) for the omni model; both
described in docs/omni_batch.md."""
from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state as ps
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import unwrap_model

from megatron_omni.contract.batch import MODALITIES, OmniBatch
from megatron_omni.parallel.context_parallel import split_for_cp
from megatron_omni.parallel.modality_decoupled import encode_step, exchanges


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Token-summed loss and token count; megatron divides by the global token count, so any
    data-parallel or micro-batch split gives the gradient of the global per-token mean."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(output_tensor.float().reshape(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"loss": report}


def local_batch(batch: dict, device) -> tuple:
    """(tokens, position_ids, labels, loss_mask, packed_seq_params) of a micro-batch on this
    rank: [b, s] each, under context parallelism this rank's load-balanced chunks (positions
    global)."""
    tokens, position_ids, labels, loss_mask = (
        split_for_cp(batch[k].to(device, non_blocking=True), seq_dim=1)
        for k in ("tokens", "position_ids", "labels", "loss_mask"))
    cu_seqlens = batch["cu_seqlens"][0] if "cu_seqlens" in batch else None  # data.packed: b = 1
    return tokens, position_ids, labels, loss_mask, packed_seq_params(cu_seqlens, device)


def omni_loss_func(loss_mask: torch.Tensor, modality: torch.Tensor, output_tensor: torch.Tensor):
    """loss_func plus, per mix modality m (contract/batch.py MODALITIES, the names of
    data/mix/<m>), the loss sum and token count of its samples as "loss/<m>" (``modality``
    [b, s]: index into MODALITIES per token, -1 for padding)."""
    loss_sum, num_tokens, report = loss_func(loss_mask, output_tensor)
    losses = output_tensor.float().reshape(-1) * loss_mask.reshape(-1).float()
    mask = loss_mask.reshape(-1).float()
    modality = modality.reshape(-1)
    for i, name in enumerate(MODALITIES):
        selected = (modality == i).float()
        report[f"loss/{name}"] = torch.stack([(losses * selected).sum().detach(), (mask * selected).sum()])
    return loss_sum, num_tokens, report


def omni_local_batch(batch: OmniBatch, device) -> tuple:
    """(the micro-batch as the model reads it, tokens, position_ids, labels, loss_mask, the
    modality index of each position, packed_seq_params) of an omni micro-batch on this rank; a
    packed micro-batch (cu_seqlens over its b*s tokens) as one sequence of b*s tokens."""
    if batch.packed:
        batch = batch.as_one_row()
    tokens, position_ids, labels, loss_mask = (x.to(device, non_blocking=True) for x in (
        batch.tokens, batch.position_ids, batch.labels, batch.loss_mask))
    return (batch, tokens, position_ids, labels, loss_mask, batch.modality_index().to(device),
            packed_seq_params(batch.cu_seqlens, device))


def omni_forward_step(batch: OmniBatch, model):
    """An omni micro-batch through this rank's chunk: the media go along (read on stage 0),
    position ids to every stage (TMRoPE rotates on all of them)."""
    batch, tokens, position_ids, labels, loss_mask, modality, packed = omni_local_batch(
        batch, next(model.parameters()).device)
    output = model(tokens, position_ids, None, labels=labels, batch=batch, packed_seq_params=packed)
    return output, partial(omni_loss_func, loss_mask, modality)


def forward_step(data_iterator, model):
    """megatron's forward_step_func: one micro-batch through this rank's model chunk."""
    batch = next(data_iterator)
    if isinstance(batch, OmniBatch):
        return omni_forward_step(batch, model)
    tokens, position_ids, labels, loss_mask, packed = local_batch(batch, next(model.parameters()).device)
    output = model(tokens, position_ids, None, labels=labels, packed_seq_params=packed)
    return output, partial(loss_func, loss_mask)


def packed_seq_params(cu_seqlens: torch.Tensor | None, device) -> PackedSeqParams | None:
    """The document offsets ``cu_seqlens`` [k] of a packed micro-batch (text with data.packed,
    batch size 1; packed omni rows as one sequence) for the attention layers, or None. Layout:
    qkv_format "sbhd", cu_seqlens in positions of the whole (un-split) sample, RoPE over the pack; the layout our three attention types support with and
    without context parallelism (megatron's "thd" splits each document over the CP ranks)."""
    if cu_seqlens is None:
        return None
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    total = int(cu[-1])
    return PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=total, max_seqlen_kv=total)


def run_schedule(model, micro_batches: list, seq_length: int, micro_batch_size: int,
                 forward_only: bool, forward_step_func=forward_step) -> dict | None:
    """Run the schedule (1F1B, interleaved with vpp, or no pipelining) over one global batch's
    micro-batches for this rank. Returns {name: [sum, tokens]} of every reported loss ("loss"
    is the one optimised) summed over data- and context-parallel ranks on the last pipeline
    stage, None elsewhere."""
    if micro_batches and isinstance(micro_batches[0], OmniBatch) and micro_batches[0].packed:
        # packed omni micro-batches run as one sequence of all their tokens
        seq_length, micro_batch_size = seq_length * micro_batch_size, 1
    encode_step(model, micro_batches, forward_only)  # parallel.modality_decoupled: media first
    iterators = [iter(micro_batches) for _ in model]
    reports = get_forward_backward_func()(
        forward_step_func=forward_step_func,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    contrastive = contrastive_total(model)  # collective on every rank
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    names = list(reports[0])
    total = torch.stack([torch.stack([r[k] for r in reports]).sum(0) for k in names])
    dp_cp = ps.get_data_parallel_group(with_context_parallel=True)
    torch.distributed.all_reduce(total, group=dp_cp)
    out = dict(zip(names, total))
    if contrastive is not None:
        out["loss/contrastive"] = contrastive.to(total)
    return out


def contrastive_total(model) -> torch.Tensor | None:
    """[sum, micro-batches] of the omni model's vision-audio contrastive loss (computed on
    pipeline stage 0 while the reports live on the last stage) over this global batch, summed
    over the data-parallel ranks by an all-reduce over the world that every rank joins; None
    (and no collective) unless model.omni.contrastive_weight > 0. Its per-micro-batch mean is
    logged as loss/contrastive; the gradients are untouched."""
    chunks = unwrap_model(model)
    omni = getattr(chunks[0], "omni", None)
    if omni is None or omni.contrastive_weight <= 0:
        return None
    total = torch.zeros(2, dtype=torch.float64, device=next(chunks[0].parameters()).device)
    speaks = ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0
    for chunk in chunks:
        losses, chunk.contrastive_losses = chunk.contrastive_losses, []
        if losses and speaks:  # the TP (and CP) ranks compute the same loss
            total[0] += torch.stack(losses).sum().double()
            total[1] += len(losses)
    torch.distributed.all_reduce(total)
    return total


def train_step(model, optimizer, scheduler, micro_batches: list, seq_length: int,
               micro_batch_size: int, forward_step_func=forward_step) -> dict:
    """Forward/backward over the global batch, optimizer step, scheduler step. Returns lr,
    grad_norm, skipped and (last stage) loss, tokens and the per-token mean of any other
    reported loss (e.g. distillation's kl, mse, lm)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    total = run_schedule(model, micro_batches, seq_length, micro_batch_size, forward_only=False,
                         forward_step_func=forward_step_func)
    lr = optimizer.param_groups[0]["lr"]
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=1)
    out = {"grad_norm": grad_norm, "lr": lr, "skipped": not updated}
    for exchange in exchanges(model):  # this replica's encoder work per pipeline stage
        out["encoder_items"], out["encoder_cost"] = exchange.work()
    if total is not None:
        out.update({name: (t[0] / t[1]).item() for name, t in total.items() if t[1] > 0})
        out["tokens"] = int(total["loss"][1].item())
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
    total = torch.stack([t["loss"] for t in totals]).sum(0)
    return (total[0] / total[1]).item()
