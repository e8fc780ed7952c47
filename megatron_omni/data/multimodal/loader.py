"""The omni training data loader: `build_omni_loader` turns the data.multimodal config section
into this data-parallel rank's omni micro-batches (contract/batch.py OmniBatch,
docs/omni_batch.md; built by `packing.collate`).

    loader = build_omni_loader(cfg, tokenizer, media_tokens, consumed_samples, dp_rank, dp)
    for step in ...:
        micro_batches = [next(loader) for _ in range(num_micro)]
        logger.log(loader.stats())   # {"data/mix/<m>": share, "data/skipped/<reason>": n}
        # (or loader.counts(), summed over ranks: training/data_stats.py)

The plan. Rows (of data.seq_length positions) are grouped in steps of training.global_batch_size
rows; step k's rows are filled, in order, with samples drawn by mixture.MixtureStream under the
schedule stage of step k — greedily by each sample's expanded length from the metadata (no media
decoded) with packing, one sample per row without. A sample that does not fit closes the row and
opens the next; at a stage switch it is taken back, so every sample of step k belongs to step k's
stage. The plan is a pure function of the config, so every rank computes the same one, and
`consumed_samples` (rows trained on = steps x global batch) resumes at exactly the row an
uninterrupted run would read next (the plan is replayed from step 0: metadata only, a few
microseconds per sample).

Rank r of dp takes rows [r·G/dp, (r+1)·G/dp) of every step (G = global batch), in micro-batches
of training.micro_batch_size rows, up to training.train_steps: every rank yields the same number.

Bad samples (bad_samples.LOADER_SKIP_REASONS: the datasets' reasons, plus "too_long": a sample
that starts with a media item longer than a row) leave their place in the row as padding; they
are counted per reason and the counts reach `stats()` from the DataLoader workers with the
micro-batches. With data.multimodal.strict the first one raises BadSampleError naming shard
and key.
"""
from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from megatron_omni.config.load import ConfigError
from megatron_omni.config.mixes import Schedule
from megatron_omni.config.schema import OmniConfig
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset, TextDocuments
from megatron_omni.data.multimodal.mixture import MixtureStream
from megatron_omni.data.multimodal.packing import collate, fit, pack_row
from megatron_omni.data.sample_format import MANIFEST_NAME

Ref = tuple[str, int]
"""A sample of the plan: (mix modality, item index among that modality's sources)."""


class ModalitySources:
    """The sources of one mix modality as one sequence of items (in source order)."""

    def __init__(self, datasets: Sequence[torch.utils.data.Dataset]):
        self.datasets = list(datasets)
        self.starts = np.cumsum([0] + [len(d) for d in self.datasets])
        self.lengths = np.concatenate([d.planned_lengths() for d in self.datasets]
                                      or [np.zeros(0, np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[torch.utils.data.Dataset, int]:
        position = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.datasets[position], index - int(self.starts[position])


def plan_steps(stream: MixtureStream, lengths: dict[str, np.ndarray], seq_length: int,
               rows_per_step: int, packing: bool) -> Iterator[list[list[Ref]]]:
    """Step after step from step 0, the rows of each (module doc): lists of refs."""
    schedule = stream.schedule
    pending: Ref | None = None
    step = 0
    while True:
        stage = schedule.stage_index(step)
        if stage != stream.stage:
            if pending is not None:
                stream.undraw(pending[0])
                pending = None
            stream.start_stage(stage)
        rows = []
        for _ in range(rows_per_step):
            row, used = [], 0
            while True:
                ref = pending if pending is not None else stream.draw()
                pending = None
                n = min(int(lengths[ref[0]][ref[1]]), seq_length)
                if row and (not packing or used + n > seq_length):
                    pending = ref
                    break
                row.append(ref)
                used += n
                if not packing:
                    break
            rows.append(row)
        yield rows
        step += 1


class RowReader(torch.utils.data.Dataset):
    """Reads a planned row (a tuple of refs) into a packed row, with what it delivered and
    skipped: "delivered" (mix modality per sample), "skips" ({reason: n})."""

    def __init__(self, sources: dict[str, ModalitySources], seq_length: int, pad_id: int,
                 tmrope: bool):
        self.sources, self.seq_length, self.pad_id = sources, seq_length, pad_id
        self.tmrope = tmrope

    def __getitem__(self, row: Sequence[Ref]) -> dict:
        samples, delivered, skips = [], [], collections.Counter()
        for modality, index in row:
            dataset, local = self.sources[modality].locate(index)
            before = collections.Counter(dataset.skip_counts)
            item = dataset[local]
            if item is not None:
                item = fit(item, self.seq_length)
                if item is None:  # the dataset's counter: its strict mode and logging
                    dataset.skips.skip(SkipSample("too_long", f"its first media item does not "
                                                  f"fit in {self.seq_length} positions"),
                                       dataset.where(local))
            if item is None:
                skips.update(collections.Counter(dataset.skip_counts) - before)
                continue
            item["modality"] = modality
            samples.append(item)
            delivered.append(modality)
        out = pack_row(samples, self.seq_length, self.pad_id, self.tmrope)
        out.update(delivered=delivered, skips=dict(skips))
        return out


class OmniLoader:
    """Iterator of this rank's micro-batches (module doc); `stats()` for the logs."""

    def __init__(self, loader: torch.utils.data.DataLoader, modalities: Sequence[str],
                 num_micro_batches: int):
        self._loader, self.modalities = loader, list(modalities)
        self._iter: Iterator | None = None
        self._mix: collections.Counter = collections.Counter()
        self._skips: collections.Counter = collections.Counter()
        self.num_micro_batches = num_micro_batches

    def __len__(self) -> int:
        """Micro-batches left to yield on this rank (the same on every rank)."""
        return self.num_micro_batches

    def __iter__(self) -> OmniLoader:
        return self

    def __next__(self) -> OmniBatch:
        if self._iter is None:
            self._iter = iter(self._loader)
        batch, delivered, skips = next(self._iter)
        self.num_micro_batches -= 1
        self._mix.update(delivered)
        self._skips.update(skips)
        return batch

    def counts(self) -> tuple[collections.Counter, collections.Counter]:
        """Since the last call of counts() or stats(), on this rank: (delivered samples per mix
        modality, bad samples per reason, summed over the DataLoader workers). Resets them."""
        mix, skips = self._mix, self._skips
        self._mix, self._skips = collections.Counter(), collections.Counter()
        return mix, skips

    def stats(self) -> dict[str, float]:
        """`loader_stats` of counts()."""
        return loader_stats(self.modalities, *self.counts())


def loader_stats(modalities: Sequence[str], mix: collections.Counter,
                 skips: collections.Counter) -> dict[str, float]:
    """The log's view of loader counts: "data/mix/<m>" the share of delivered samples per mix
    modality (every one of ``modalities`` listed), "data/skipped/<reason>" the bad samples of
    each reason that has any."""
    total = sum(mix.values())
    out = {f"data/mix/{m}": (mix[m] / total if total else 0.0)
           for m in sorted(set(modalities) | set(mix))}
    out.update({f"data/skipped/{r}": float(n) for r, n in sorted(skips.items()) if n})
    return out


def _micro_batch_rows(plan: Iterator[list[list[Ref]]], first_step: int, last_step: int,
                      dp_rank: int, dp: int, micro_batch_size: int) -> Iterator[list[tuple]]:
    for step, rows in enumerate(plan):
        if step >= last_step:
            return
        if step < first_step:
            continue
        per_rank = len(rows) // dp
        mine = rows[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        for m in range(0, per_rank, micro_batch_size):
            yield [tuple(row) for row in mine[m:m + micro_batch_size]]


class _Collate:
    """(collate() of rows, their delivered modalities, their skip counts); picklable for
    DataLoader workers."""

    def __init__(self, image_size: int, n_mels: int, packed: bool):
        self.image_size, self.n_mels, self.packed = image_size, n_mels, packed

    def __call__(self, rows: list[dict]) -> tuple[OmniBatch, list[str], collections.Counter]:
        delivered = [m for r in rows for m in r["delivered"]]
        skips = sum((collections.Counter(r["skips"]) for r in rows), collections.Counter())
        return collate(rows, self.image_size, self.n_mels, self.packed), delivered, skips


def open_sources(cfg: OmniConfig, tokenizer, config: LoaderConfig, modalities: Sequence[str]
                 ) -> dict[str, ModalitySources]:
    """The datasets of each modality: a folder holding manifest.json is a MultimodalDataset,
    a prefix with .bin/.idx a TextDocuments; anything else is a ConfigError naming the entry."""
    mm = cfg.data.multimodal
    sources = {}
    for m in modalities:
        datasets = []
        for i, path in enumerate(getattr(mm, m)):
            if (Path(path) / MANIFEST_NAME).is_file():
                datasets.append(MultimodalDataset(path, tokenizer, config, strict=mm.strict))
            elif Path(f"{path}.idx").is_file() and Path(f"{path}.bin").is_file():
                datasets.append(TextDocuments(path, tokenizer, config, strict=mm.strict))
            else:
                raise ConfigError(f"data.multimodal.{m}[{i}]={path!r} is neither a prepared "
                                  f"folder (with {MANIFEST_NAME}: data_prep/multimodal) nor an "
                                  "indexed-binary prefix (with .bin/.idx: "
                                  "data_prep/preprocess_text.py)")
        sources[m] = ModalitySources(datasets)
        if not len(sources[m]):
            raise ConfigError(f"data.multimodal.{m} has no samples ({getattr(mm, m)})")
    return sources


def build_omni_loader(cfg: OmniConfig, tokenizer, media_tokens: MediaTokens,
                      consumed_samples: int, dp_rank: int, dp: int) -> OmniLoader:
    """This rank's micro-batches of omni data (module doc).

    Args:
        cfg: a validated config with data.multimodal set; reads data.seq_length and
            training.{micro_batch_size, global_batch_size, train_steps, seed}.
        tokenizer: the run's tokenizer (placeholder, <pad> and <eod> ids).
        media_tokens: LLM tokens per media item, from the model config (the model checks them).
        consumed_samples: rows already trained on (a multiple of training.global_batch_size).
        dp_rank, dp: this rank's data-parallel rank and the data-parallel size.
    """
    t = cfg.training
    if consumed_samples % t.global_batch_size:
        raise ValueError(f"consumed_samples={consumed_samples} is not a whole number of steps "
                         f"of training.global_batch_size={t.global_batch_size}")
    mm = cfg.data.multimodal
    schedule, sources, plan, seed = _plan(cfg, tokenizer, media_tokens)
    first = consumed_samples // t.global_batch_size
    batches = _micro_batch_rows(plan, first, t.train_steps, dp_rank, dp, t.micro_batch_size)
    reader = RowReader(sources, cfg.data.seq_length, tokenizer.pad_id, mm.tmrope)
    # Own generator: the workers' base seed must not come from (and shift) the global RNG.
    loader = torch.utils.data.DataLoader(
        reader, batch_sampler=batches, num_workers=mm.num_workers,
        collate_fn=_Collate(mm.image_size, mm.n_mels, mm.packing),
        generator=torch.Generator().manual_seed(seed))
    num_micro = max(0, t.train_steps - first) * (t.global_batch_size // dp // t.micro_batch_size)
    return OmniLoader(loader, schedule.modalities, num_micro)


def epoch_steps(cfg: OmniConfig, tokenizer, media_tokens: MediaTokens, num_epochs: int) -> int:
    """The steps of training.global_batch_size rows in which the plan (module doc) draws
    num_epochs times the samples of all sources of the schedule's modalities: the train_steps of
    training.num_epochs (metadata only, nothing decoded)."""
    _, sources, plan, _ = _plan(cfg, tokenizer, media_tokens)
    target = num_epochs * sum(len(s) for s in sources.values())
    drawn = itertools.accumulate(sum(len(row) for row in rows) for rows in plan)
    return next(step for step, n in enumerate(drawn, start=1) if n >= target)


def _plan(cfg: OmniConfig, tokenizer, media_tokens: MediaTokens):
    """(schedule, sources per modality, the plan's steps from step 0, seed) of the config."""
    from megatron_omni.config.validate_omni import schedule_config

    mm, t = cfg.data.multimodal, cfg.training
    if mm is None:
        raise ConfigError("data.multimodal is null: this run has no omni data")
    schedule = Schedule.from_config(schedule_config(cfg))
    config = LoaderConfig(image_size=mm.image_size, image_backend=mm.image_backend,
                          max_video_frames=mm.max_video_frames, n_mels=mm.n_mels,
                          pad_audio_to_30s=mm.pad_audio_to_30s, media_tokens=media_tokens,
                          compute_position_ids=mm.tmrope)
    sources = open_sources(cfg, tokenizer, config, schedule.modalities)
    seed = t.seed if mm.seed is None else mm.seed
    stream = MixtureStream(schedule, {m: len(s) for m, s in sources.items()}, seed)
    plan = plan_steps(stream, {m: s.lengths for m, s in sources.items()}, cfg.data.seq_length,
                      t.global_batch_size, mm.packing)
    return schedule, sources, plan, seed
