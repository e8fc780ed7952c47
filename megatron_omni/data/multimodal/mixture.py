"""Draws of a data mix (config/mixes.py: phase mixes, the progressive schedule, `Schedule`), made
by `MixtureStream` as a pure function of (seed, schedule, the steps at which stages begin), so a
restart replays to exactly the same place and every data-parallel rank computes the same draws
without communicating.

A schedule is a list of stages, each with a start step and modality weights. The loader
(loader.py) tells the stream when a step of a new stage begins (`start_stage`), so a switch
happens exactly at the configured step whatever the number of samples per step (packing).

Within a stage, samples are dealt in blocks of B (the smallest B <= 1000 making every weight x B
an integer, else 1000 with largest-remainder rounding): block b holds exactly round(w_m x B)
samples of modality m, in an order shuffled by (seed, stage, b). So the realised mix over any
whole blocks equals the configured one (within 1/B after rounding), not only in expectation.
The k-th draw of modality m overall (counted over all stages) takes item perm_e[k mod N] of that
modality's items (N of them), where perm_e is the permutation of epoch e = k // N drawn from
(seed, m, e): every item once per epoch.
"""
from __future__ import annotations

import collections
import zlib
from collections.abc import Mapping

import numpy as np

from megatron_omni.config.mixes import Schedule


def _rng(*words: int | str) -> np.random.Generator:
    seq = [w if isinstance(w, int) else zlib.crc32(w.encode()) for w in words]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seq)))


class MixtureStream:
    """Sequential draws (modality, item index) under a schedule (module doc).

    Args:
        schedule: the stages.
        sizes: modality -> number of items (every modality the schedule uses, each > 0).
        seed: shuffles the blocks and the epochs.
    """

    def __init__(self, schedule: Schedule, sizes: Mapping[str, int], seed: int = 0):
        missing = [m for m in schedule.modalities if not sizes.get(m)]
        if missing:
            raise ValueError(f"the schedule uses {missing} but they have no items")
        self.schedule, self.sizes, self.seed = schedule, dict(sizes), seed
        self.stage, self.offset = 0, 0       # stage index, draws made in it
        self.drawn: collections.Counter = collections.Counter()   # per modality, all stages
        self._block: tuple[int, int, tuple[str, ...]] | None = None   # (stage, block, order)
        self._perms: dict[str, tuple[int, np.ndarray]] = {}           # modality -> (epoch, perm)

    def start_stage(self, stage: int) -> None:
        """The next draw is the first of `stage`."""
        self.stage, self.offset = stage, 0

    def _modality(self, stage: int, offset: int) -> str:
        block = self.schedule.stages[stage].block
        index = offset // len(block)
        if self._block is None or self._block[:2] != (stage, index):
            perm = _rng(self.seed, "block", stage, index).permutation(len(block))
            self._block = (stage, index, tuple(block[i] for i in perm))
        return self._block[2][offset % len(block)]

    def item(self, modality: str, ordinal: int) -> int:
        """The item the `ordinal`-th draw of `modality` takes."""
        n = self.sizes[modality]
        epoch = ordinal // n
        cached = self._perms.get(modality)
        if cached is None or cached[0] != epoch:
            cached = self._perms[modality] = (epoch, _rng(self.seed, "epoch", modality, epoch)
                                              .permutation(n))
        return int(cached[1][ordinal % n])

    def draw(self) -> tuple[str, int]:
        m = self._modality(self.stage, self.offset)
        self.offset += 1
        self.drawn[m] += 1
        return m, self.item(m, self.drawn[m] - 1)

    def undraw(self, modality: str) -> None:
        """Take back the last draw (it was `modality`): the next draw of the same stage
        repeats it, and that modality's next draw in any stage takes the same item."""
        self.offset -= 1
        self.drawn[modality] -= 1
