"""Per-token statistics of the LLM's vocab-parallel logits [b, s, V/TP] on the last pipeline
stage, without gathering the full vocabulary: the log-probability of each label (megatron's
vocab_parallel_cross_entropy: max, normaliser and the label's logit all-reduced over the
tensor-parallel group) and the entropy of each position's distribution. Every TP rank holds the
whole values. Used by preference training (training/dpo.py) and GRPO (rl/grpo.py)."""
from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position [b, s] of vocab-parallel logits [b, s, V/TP] (float32 or
    wider), the same on every rank of the tensor-parallel group."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    # megatron's cross entropy works in place on the logits it is given: a copy
    return -vocab_parallel_cross_entropy(logits.to(dtype).clone(), labels)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ p log p per position [b, s] of vocab-parallel logits [b, s, V/TP] (no
    gradient; float32 or wider), the same on every rank of the tensor-parallel group."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    group = ps.get_tensor_model_parallel_group()
    peak = z.max(dim=-1).values
    torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX, group=group)
    e = torch.exp(z - peak[..., None])
    sums = torch.stack([e.sum(-1), (e * z).sum(-1)])
    torch.distributed.all_reduce(sums, group=group)
    normaliser, weighted = sums
    return peak + torch.log(normaliser) - weighted / normaliser
