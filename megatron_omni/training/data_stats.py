"""The omni loader's counts for the training log, over all data-parallel ranks (issue 5): the
realised modality mix of the last log interval and the bad samples per reason since this
process started (the run's start, or its resume: the counts are not checkpointed).

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
from megatron_omni.data.multimodal.loader import OmniLoader, loader_stats


class DataStats:
    """``collect(loader)`` at each log step: {"data/mix/<m>": share over the interval,
    "data/skipped/<reason>": count since the start} (reasons with a count only)."""

    def __init__(self, cfg: OmniConfig):
        from megatron_omni.config.validate_omni import schedule_config
        from megatron_omni.config.mixes import Schedule

        self.modalities = list(Schedule.from_config(schedule_config(cfg)).modalities)
        self.skipped: collections.Counter = collections.Counter()
        self.speaks_for_dp_rank = (ps.is_pipeline_first_stage(ignore_virtual=True)
                                   and ps.get_tensor_model_parallel_rank() == 0
                                   and ps.get_context_parallel_rank() == 0)

    def collect(self, loader: OmniLoader | None) -> dict[str, float]:
        """Collective: every rank calls it at the same step (``loader`` None where a rank reads
        no data). Takes the loader's counts since the last call."""
        counts = torch.zeros(len(self.modalities) + len(LOADER_SKIP_REASONS), dtype=torch.float64,
                             device=platform.device())
        if loader is not None:
            mix, skips = loader.counts()
            if self.speaks_for_dp_rank:
                counts += torch.tensor([mix[m] for m in self.modalities]
                                       + [skips[r] for r in LOADER_SKIP_REASONS],
                                       dtype=torch.float64, device=counts.device)
        torch.distributed.all_reduce(counts)
        values = [int(n) for n in counts.tolist()]
        n = len(self.modalities)
        self.skipped.update(dict(zip(LOADER_SKIP_REASONS, values[n:])))
        return loader_stats(self.modalities, collections.Counter(dict(zip(self.modalities, values[:n]))),
                            self.skipped)
