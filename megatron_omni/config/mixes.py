"""The data mix of a run: the modalities, each phase's fixed mix, the progressive schedule, and
`Schedule.from_config`, which reads data.multimodal.schedule into stages (a start step and
normalised modality weights each, plus the block of draws that realises the weights exactly; the
draws themselves are data/multimodal/mixture.py's MixtureStream).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PHASE_MIXES: dict[int, dict[str, float]] = {
    1: {"image_text": 2 / 3, "audio": 1 / 3},
    2: {"image_text": 2 / 3, "audio": 1 / 3},
    3: {"text": 0.40, "image_text": 0.25, "video": 0.15, "audio": 0.10, "cross_modal": 0.10},
    5: {"text": 0.10, "image_text": 0.39, "video": 0.31, "audio": 0.20},
}
"""Per training phase, the data mix: phase 1 (image captions + ASR pairs) and 2 (OCR-dense
documents + audio events) 2:1 as the plan's batch sizes and sample counts (3.1.2, 3.1.3);
phase 3 the omni pretraining mix (3.1.4); phase 5 the stage-1 SFT mix (3.1.6, 7.1.2): ~10%
text-only conversations against regression, the rest image : video : audio instructions
100K : 80K : 50K."""

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
            {"progressive": true}                        PROGRESSIVE_SCHEDULE
            {"progressive": [0, 500, 1000, 1500]}        the same stages starting at these steps
            [stage, ...]                                 a stage list
        """
        if isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
            return cls([make_stage(s["mix"], s.get("start_step", 0), s.get("name"))
                        for s in config])
        if "stages" in config:
            return cls.from_config(config["stages"])
        progressive = config.get("progressive")
        if isinstance(progressive, Sequence) and not isinstance(progressive, str):
            if len(progressive) != len(PROGRESSIVE_SCHEDULE):
                raise ValueError(f"progressive: give {len(PROGRESSIVE_SCHEDULE)} start steps "
                                 f"(stages {[s['name'] for s in PROGRESSIVE_SCHEDULE]}), got "
                                 f"{list(progressive)}")
            return cls.from_config([dict(s, start_step=int(step))
                                    for s, step in zip(PROGRESSIVE_SCHEDULE, progressive)])
        if progressive:
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
