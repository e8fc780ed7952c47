"""Phase data mixes and the progressive modality schedule, sampled as a pure function of
(seed, global sample index), so a restart at any step resumes exactly and every data-parallel
rank computes the same assignment without communicating.

A schedule is a list of stages, each with a start step and modality weights. Global sample g
belongs to step g // samples_per_step, hence to the last stage starting at or before that step.

Within a stage, samples are dealt in blocks of B (the smallest B <= 1000 making every weight x B
an integer, else 1000 with largest-remainder rounding): block b holds exactly round(w_m x B)
samples of modality m, in an order shuffled by (seed, stage, b). So the realised mix over any
whole blocks equals the configured one (within 1/B after rounding), not only in expectation.
The k-th sample of modality m overall (counted over all stages up to g, computable in O(B))
takes item perm_e[k mod N] of that modality's dataset (N items), where perm_e is the
permutation of epoch e = k // N drawn from (seed, m, e): every item once per epoch.

A bad item (the dataset returns None) is replaced by the next one of the same permutation,
deterministically; the reasons of everything passed over travel in the item's "skips".
"""
from __future__ import annotations

import collections
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MODALITIES = ("text", "image_text", "video", "audio", "cross_modal")

PHASE_MIXES: dict[int, dict[str, float]] = {
    3: {"text": 0.40, "image_text": 0.25, "video": 0.15, "audio": 0.10, "cross_modal": 0.10},
}
"""Per training phase, the data mix (plan 3.1.4); phase 3 is the omni pretraining mix."""

PROGRESSIVE_SCHEDULE: list[dict] = [
    {"name": "image_text", "start_step": 0, "mix": {"text": 0.40, "image_text": 0.60}},
    {"name": "video", "start_step": 1000,
     "mix": {"text": 0.40, "image_text": 0.35, "video": 0.25}},
    {"name": "audio_cross_modal", "start_step": 2000,
     "mix": {"text": 0.40, "image_text": 0.20, "video": 0.15, "audio": 0.15,
             "cross_modal": 0.10}},
    {"name": "balanced", "start_step": 3000, "mix": PHASE_MIXES[3]},
]
"""The default progressive modality schedule (plan 3.1.4 / 7.2.2): image-text first, then
+ video, then + audio and cross-modal, then the balanced phase-3 mix. Start steps are
placeholders: set them per run."""

_MAX_BLOCK = 1000


@dataclass(frozen=True)
class Stage:
    name: str
    start_step: int
    weights: dict[str, float]   # normalised, positive entries only
    block: tuple[str, ...]      # the multiset of one block, in a fixed (sorted) order

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.block))


def _block(weights: dict[str, float]) -> tuple[str, ...]:
    names = sorted(weights)
    for size in range(1, _MAX_BLOCK + 1):
        scaled = [weights[m] * size for m in names]
        if all(abs(x - round(x)) < 1e-6 for x in scaled):
            counts = [round(x) for x in scaled]
            break
    else:
        size = _MAX_BLOCK
        scaled = [weights[m] * size for m in names]
        counts = [math.floor(x) for x in scaled]
        by_remainder = sorted(range(len(names)), key=lambda i: (counts[i] - scaled[i], names[i]))
        for i in by_remainder[:size - sum(counts)]:
            counts[i] += 1
    return tuple(m for m, c in zip(names, counts) for _ in range(c))


def make_stage(mix: Mapping[str, float], start_step: int = 0, name: str | None = None) -> Stage:
    weights = {m: float(w) for m, w in mix.items()}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"mix {dict(mix)}: weights must be non-negative with a positive sum")
    total = sum(weights.values())
    weights = {m: w / total for m, w in weights.items() if w > 0}
    return Stage(name or f"step{start_step}", int(start_step), weights, _block(weights))


class Schedule:
    """Stages sorted by start step (the first must start at 0)."""

    def __init__(self, stages: Sequence[Stage]):
        stages = sorted(stages, key=lambda s: s.start_step)
        if not stages or stages[0].start_step != 0:
            raise ValueError("a schedule needs a stage starting at step 0")
        if len({s.start_step for s in stages}) != len(stages):
            raise ValueError("two stages start at the same step")
        self.stages = list(stages)
        self.modalities = sorted({m for s in stages for m in s.weights})

    @classmethod
    def from_config(cls, config: Mapping | Sequence) -> Schedule:
        """From a config (a YAML section as loaded):
            {"phase": 3}                                 the phase's fixed mix
            {"mix": {"text": 0.4, ...}}                  one fixed mix
            {"stages": [{"start_step": 0, "mix": {...}, "name": ...}, ...]}
            {"progressive": true} / [stage, ...]         PROGRESSIVE_SCHEDULE / a stage list
        """
        if isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
            return cls([make_stage(s["mix"], s.get("start_step", 0), s.get("name"))
                        for s in config])
        if "stages" in config:
            return cls.from_config(config["stages"])
        if config.get("progressive"):
            return cls.from_config(PROGRESSIVE_SCHEDULE)
        if "phase" in config:
            if config["phase"] not in PHASE_MIXES:
                raise ValueError(f"no data mix for phase {config['phase']} "
                                 f"(known: {sorted(PHASE_MIXES)})")
            return cls([make_stage(PHASE_MIXES[config["phase"]], 0, f"phase{config['phase']}")])
        if "mix" in config:
            return cls([make_stage(config["mix"], 0, "mix")])
        raise ValueError(f"data mix config {dict(config)}: expected stages, mix, phase or "
                         f"progressive")

    def stage_index(self, step: int) -> int:
        starts = [s.start_step for s in self.stages]
        return max(i for i, s in enumerate(starts) if s <= step)

    def stage_at(self, step: int) -> Stage:
        return self.stages[self.stage_index(step)]


def _rng(*words: int | str) -> np.random.Generator:
    seq = [w if isinstance(w, int) else zlib.crc32(w.encode()) for w in words]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seq)))


class MixtureSampler:
    """The pure function global sample index -> (modality, ordinal of that modality).

    Args:
        schedule: the stages.
        samples_per_step: samples per optimizer step (the global batch size in samples).
        seed: shuffles the blocks.
    """

    def __init__(self, schedule: Schedule, samples_per_step: int, seed: int = 0):
        if samples_per_step < 1:
            raise ValueError("samples_per_step must be >= 1")
        self.schedule, self.samples_per_step, self.seed = schedule, samples_per_step, seed
        self._cache: dict[tuple[int, int], tuple[str, ...]] = {}
        starts = [s.start_step * samples_per_step for s in schedule.stages]
        self._first = starts                       # first global index of each stage
        self._before: list[dict[str, int]] = [{}]  # per-modality counts before each stage
        for i in range(1, len(starts)):
            prev = dict(self._before[-1])
            for m, c in self._count(i - 1, starts[i] - starts[i - 1]).items():
                prev[m] = prev.get(m, 0) + c
            self._before.append(prev)

    def _block_order(self, stage: int, block: int) -> tuple[str, ...]:
        key = (stage, block)
        order = self._cache.get(key)
        if order is None:
            base = self.schedule.stages[stage].block
            order = tuple(base[i] for i in _rng(self.seed, "block", stage, block)
                          .permutation(len(base)))
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = order
        return order

    def _count(self, stage: int, n: int) -> dict[str, int]:
        """Per-modality counts among the first n samples of `stage`."""
        st = self.schedule.stages[stage]
        full, rest = divmod(n, len(st.block))
        counts = {m: c * full for m, c in st.counts.items()}
        for m in self._block_order(stage, full)[:rest]:
            counts[m] += 1
        return counts

    def stage_of(self, index: int) -> int:
        return self.schedule.stage_index(index // self.samples_per_step)

    def modality(self, index: int) -> str:
        stage = self.stage_of(index)
        offset = index - self._first[stage]
        block = self.schedule.stages[stage].block
        return self._block_order(stage, offset // len(block))[offset % len(block)]

    def assign(self, index: int) -> tuple[str, int]:
        """(modality, how many samples of that modality came before `index`)."""
        stage = self.stage_of(index)
        offset = index - self._first[stage]
        m = self.modality(index)
        return m, self._before[stage].get(m, 0) + self._count(stage, offset)[m]


class MixtureDataset(torch.utils.data.Dataset):
    """Item g of the mixed stream: a dataset item (dict) of the modality `sampler` assigns,
    with "modality", "global_index", "dataset_index" and "skips" ({reason: n} of bad items
    passed over, for the log) added.

    Args:
        datasets: modality -> map-style dataset (returns dicts, or None for a bad sample and
            counts it in `skip_counts`); combine several sources of one modality with
            torch.utils.data.ConcatDataset.
        sampler: a MixtureSampler over the same modalities.
        length: how many global samples the stream offers (len of this dataset).
        max_probes: consecutive bad items tolerated before giving up with an error.
    """

    def __init__(self, datasets: Mapping[str, torch.utils.data.Dataset], sampler: MixtureSampler,
                 length: int, max_probes: int = 1000):
        missing = [m for m in sampler.schedule.modalities if m not in datasets]
        if missing:
            raise ValueError(f"the schedule uses {missing} but no dataset was given for them")
        for m in sampler.schedule.modalities:
            if len(datasets[m]) == 0:
                raise ValueError(f"the dataset for {m!r} is empty")
        self.datasets, self.sampler, self.length = dict(datasets), sampler, length
        self.max_probes = max_probes
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _perm(self, modality: str, epoch: int) -> np.ndarray:
        key = (modality, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = _rng(self.sampler.seed, "epoch", modality, epoch).permutation(
                len(self.datasets[modality]))
            if len(self._perm_cache) > 2 * len(self.datasets):
                self._perm_cache.clear()
            self._perm_cache[key] = perm
        return perm

    def dataset_index(self, modality: str, ordinal: int) -> int:
        n = len(self.datasets[modality])
        return int(self._perm(modality, ordinal // n)[ordinal % n])

    def __getitem__(self, index: int) -> dict:
        modality, ordinal = self.sampler.assign(index)
        dataset = self.datasets[modality]
        n = len(dataset)
        skips: collections.Counter = collections.Counter()
        for probe in range(min(self.max_probes, n)):
            j = self.dataset_index(modality, ordinal + probe)
            counts_before = collections.Counter(getattr(dataset, "skip_counts", {}))
            item = dataset[j]
            if item is not None:
                return {**item, "modality": modality, "global_index": index,
                        "dataset_index": j, "skips": dict(skips)}
            after = collections.Counter(getattr(dataset, "skip_counts", {}))
            skips.update(after - counts_before)
        raise RuntimeError(f"global sample {index}: {min(self.max_probes, n)} consecutive bad "
                           f"{modality} items starting at ordinal {ordinal}: {dict(skips)}")


class MixCounter:
    """Realised mix for logging: feed it the items (or modality names) a step consumed."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.skips: collections.Counter = collections.Counter()

    def update(self, items) -> None:
        for item in items:
            if isinstance(item, str):
                self.counts[item] += 1
            else:
                self.counts[item["modality"]] += 1
                self.skips.update(item.get("skips", {}))

    def proportions(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {m: c / total for m, c in sorted(self.counts.items())} if total else {}

    def log_dict(self, prefix: str = "data/mix/") -> dict[str, float]:
        """Scalars for the logger: realised share per modality, skipped samples per reason."""
        out = {f"{prefix}{m}": p for m, p in self.proportions().items()}
        out.update({f"data/skipped/{r}": float(n) for r, n in sorted(self.skips.items())})
        return out
