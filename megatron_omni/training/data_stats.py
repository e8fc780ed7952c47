"""The counts of the training log that live on other ranks, summed over all data-parallel ranks
(issue 5): the realised modality mix of the last log interval, the bad samples per reason since
this process started (the run's start, or its resume: the counts are not checkpointed), the
non-padding tokens and model FLOPs of the interval, and the peak memory of any rank.

Every rank builds the loader (all pipeline stages read the micro-batches: stage 0 embeds them,
every stage takes the TMRoPE ids, the last the labels), and the TP and CP ranks of one
data-parallel rank read the same rows. So the first pipeline stage's TP/CP rank 0 speaks for its
data-parallel rank, and one all-reduce over the world that every rank joins brings the sums to
the logging rank (last stage), whichever ranks read data.
"""
from __future__ import annotations

import collections

import torch
from megatron.core import parallel_state as ps

from megatron_omni import platform
from megatron_omni.config.schema import OmniConfig
from megatron_omni.data.bad_samples import LOADER_SKIP_REASONS
from megatron_omni.data.multimodal.loader import OmniLoader


class DataStats:
    """``count(tokens, flops)`` after each step, ``collect(loader)`` at each log step."""

    def __init__(self, cfg: OmniConfig):
        from megatron_omni.config.validate_omni import schedule_config
        from megatron_omni.config.mixes import Schedule

        self.loader_counts = cfg.model.omni is not None and cfg.data.multimodal is not None
        self.modalities = (list(Schedule.from_config(schedule_config(cfg)).modalities)
                           if self.loader_counts else [])
        self.reasons = list(LOADER_SKIP_REASONS) if self.loader_counts else []
        self.skipped: collections.Counter = collections.Counter()
        self.tokens = self.flops = 0.0
        self.speaks_for_dp_rank = (ps.is_pipeline_first_stage(ignore_virtual=True)
                                   and ps.get_tensor_model_parallel_rank() == 0
                                   and ps.get_context_parallel_rank() == 0)

    def count(self, tokens: int, flops: float) -> None:
        """Add this rank's non-padding tokens and model FLOPs of a step (training/flops.py)."""
        if self.speaks_for_dp_rank:
            self.tokens += tokens
            self.flops += flops

    def collect(self, loader: OmniLoader | None) -> dict[str, float]:
        """Collective: every rank calls it at the same step (``loader`` None where a rank reads
        no omni data). Takes the counts since the last call: {"data/mix/<m>": share over the
        interval, "data/skipped/<reason>": count since the start (every reason, 0 included),
        "tokens", "flops": sums over the interval, "peak_mem_gib": the largest of any rank}."""
        counts = torch.zeros(len(self.modalities) + len(self.reasons) + 2, dtype=torch.float64,
                             device=platform.device())
        mix, skips = loader.counts() if self.loader_counts and loader is not None else ({}, {})
        if self.speaks_for_dp_rank:
            counts += torch.tensor([mix.get(m, 0) for m in self.modalities]
                                   + [skips.get(r, 0) for r in self.reasons] + [self.tokens, self.flops],
                                   dtype=torch.float64, device=counts.device)
        self.tokens = self.flops = 0.0
        memory = torch.tensor([platform.peak_memory_gib()[0]], dtype=torch.float64, device=counts.device)
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MAX)
        values = counts.tolist()
        n, k = len(self.modalities), len(self.reasons)
        self.skipped.update({r: int(v) for r, v in zip(self.reasons, values[n:n + k])})
        total = sum(values[:n])
        out = {f"data/mix/{m}": (v / total if total else 0.0) for m, v in zip(self.modalities, values[:n])}
        out.update({f"data/skipped/{r}": float(self.skipped[r]) for r in self.reasons})
        out.update(tokens=values[-2], flops=values[-1], peak_mem_gib=memory.item())
        return out
