"""The GRPO loss (phase 6, docs/grpo.md) over micro-batches of rollouts.

A rollout batch holds G responses to each of its prompts (rl.group_size). Each response's
scalar reward (rl/rewards.py) becomes its advantage normalised within its group:
A = (r − mean_group) / (std_group + rl.advantage_eps) (population std), given to every one of
its tokens. Per response token t with the policy's log-prob l = log π(y_t | x, y_<t) at the
the rollout policy's o (the sampler's) and the frozen reference's q:

    ratio = exp(l − o)
    pg    = −min(ratio · A, clip(ratio, 1 − rl.clip_low, 1 + rl.clip_high) · A)
    kl    = exp(q − l) − (q − l) − 1          (k3, an unbiased estimate of KL(π ‖ π_ref) ≥ 0)
    loss  = pg + rl.kl_coef · kl

summed over the response tokens (the loss mask) and divided by their count over the global
batch: the loss_func returns the micro-batch's token count, megatron divides by the total
(calculate_per_token_loss), so every DP / micro-batch split gives the same gradient.

Log-probs and entropy come from the vocab-parallel logits (models/llm/logprobs.py) on the last
pipeline stage; the full vocabulary is never gathered. All three log-probs are of the models
themselves (temperature 1, no top-p cut), as the rollouts report theirs (rl/rollout.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from megatron_omni.config.schema import RlConfig
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.models.llm.logprobs import token_entropy, token_logprobs


@dataclass
class RolloutBatch(OmniBatch):
    """An OmniBatch of rollouts, one per row: prompt + response, then padding. loss_mask is 1 at
    the positions whose label is a response token; the per-position values below are at those
    positions (0 elsewhere)."""

    old_logps: torch.Tensor | None = None
    """float32 [b, s]: the rollout policy's log-prob of each label."""
    ref_logps: torch.Tensor | None = None
    """float32 [b, s]: the frozen reference's log-prob of each label (filled on the last pipeline
    stage before the step; None with rl.kl_coef = 0)."""
    advantages: torch.Tensor | None = None
    """float32 [b]: each row's group-normalised advantage."""


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(r − group mean) / (group std + eps) of rewards [n] laid out group by group (n = groups ·
    group_size); population std, so G equal rewards give 0."""
    r = rewards.reshape(-1, group_size)
    mean, std = r.mean(1, keepdim=True), r.std(1, unbiased=False, keepdim=True)
    return ((r - mean) / (std + eps)).reshape(-1)


def token_losses(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None,
                 advantages: torch.Tensor, s: RlConfig) -> dict[str, torch.Tensor]:
    """Per position (module doc): "loss" (pg + kl_coef · kl), "kl" and "clipped" (1 where the
    clipped term is the one taken, i.e. the ratio's gradient is cut), all of logp's shape;
    ``advantages`` broadcasts against it."""
    ratio = torch.exp(logp - old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - s.clip_low, 1 + s.clip_high) * advantages
    pg = -torch.minimum(unclipped, clipped)
    out = {"clipped": (clipped < unclipped).float()}
    if ref is None:
        out["kl"] = torch.zeros_like(logp)
        out["loss"] = pg
    else:
        d = ref - logp
        out["kl"] = torch.exp(d) - d - 1
        out["loss"] = pg + s.kl_coef * out["kl"]
    return out


def grpo_loss_func(s: RlConfig, batch: RolloutBatch, output_tensor: torch.Tensor):
    """megatron's loss_func of a RolloutBatch's logits [b, s, V/TP]: (loss summed over the
    response tokens, their count, report of [sum, tokens] of "loss", "rl/kl", "rl/clip_fraction"
    and "rl/entropy")."""
    device = output_tensor.device
    logits = output_tensor
    mask = batch.loss_mask.to(device)
    logp = token_logprobs(logits, batch.labels.to(device))
    ref = None if batch.ref_logps is None else batch.ref_logps.to(device)
    parts = token_losses(logp, batch.old_logps.to(device), ref, batch.advantages.to(device)[:, None], s)
    loss = (parts["loss"] * mask).sum()
    count = mask.sum()
    values = {"loss": loss.detach(), "rl/kl": (parts["kl"].detach() * mask).sum(),
              "rl/clip_fraction": (parts["clipped"] * mask).sum(),
              "rl/entropy": (token_entropy(logits) * mask).sum()}
    report = {k: torch.stack([v.float(), count.float()]) for k, v in values.items()}
    return loss, count.to(torch.int), report


def logprobs_loss_func(target: str, batch: RolloutBatch, output_tensor: torch.Tensor):
    """A forward-only pass's loss_func: stores the log-prob of each label (0 off the loss mask)
    on the batch as `target` ("ref_logps" for the frozen reference), reports nothing that
    trains."""
    device = output_tensor.device
    mask = batch.loss_mask.to(device)
    logp = token_logprobs(output_tensor, batch.labels.to(device)) * mask
    setattr(batch, target, logp.detach().float())
    count = mask.sum()
    return logp.new_zeros(()), count.to(torch.int), {
        f"{target}": torch.stack([logp.detach().sum().float(), count.float()])}


def forward_logits(batch: RolloutBatch, model, loss_func):
    """A RolloutBatch through this rank's chunk with no labels: logits on the last stage."""
    device = next(model.parameters()).device
    tokens, position_ids = (x.to(device, non_blocking=True) for x in (batch.tokens, batch.position_ids))
    return model(tokens, position_ids, None, batch=batch), partial(loss_func, batch)


@dataclass
class Rollout:
    """One generated response as the loss needs it."""

    prompt: list[int]
    """The prompt's token ids."""
    response: list[int]
    """The generated ids (the stop marker included when generated)."""
    mask: list[float]
    """Per response token: 1 where it trains."""
    logps: list[float]
    """Per response token: the rollout policy's log-prob of it."""


def rollout_batch(rollouts: list[Rollout], advantages: torch.Tensor, seq_length: int, pad_id: int,
                  tmrope: bool, image_size: int, n_mels: int) -> RolloutBatch:
    """A RolloutBatch of one rollout per row (prompt + response, padded with pad_id to
    seq_length; text only): position p holds the response's loss and old log-prob when its
    label p + 1 is a response token. Position ids count 0.. over the row (three equal TMRoPE
    rows for text when ``tmrope``)."""
    b = len(rollouts)
    tokens = torch.full((b, seq_length), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(b, seq_length)
    old = torch.zeros(b, seq_length)
    sample_index = torch.full((b, seq_length), -1, dtype=torch.long)
    for row, r in enumerate(rollouts):
        ids = r.prompt + r.response
        n, start = len(ids), len(r.prompt) - 1
        if n > seq_length:
            raise ValueError(f"a rollout of {n} tokens exceeds data.seq_length={seq_length}")
        tokens[row, :n] = torch.tensor(ids)
        labels[row, :n - 1] = tokens[row, 1:n]
        loss_mask[row, start:n - 1] = torch.tensor(r.mask, dtype=torch.float32)
        old[row, start:n - 1] = torch.tensor(r.logps, dtype=torch.float32)
        sample_index[row, :n] = row
    positions = torch.arange(seq_length).repeat(b, 1)
    if tmrope:
        positions = positions[:, None].expand(b, 3, seq_length).contiguous()
    return RolloutBatch(
        tokens=tokens, labels=labels, loss_mask=loss_mask, position_ids=positions,
        sample_index=sample_index, sample_ids=[f"rollout{i}" for i in range(b)],
        sample_modality=["text"] * b, sample_kinds=["rollout"] * b,
        images=torch.zeros(0, 3, image_size, image_size), videos=[], video_timestamps=[],
        audio_mel=torch.zeros(0, n_mels, 1), audio_frames=torch.zeros(0, dtype=torch.long),
        old_logps=old * loss_mask, advantages=advantages.float())
