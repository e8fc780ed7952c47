"""Preference pairs for DPO (phase 6): prepared folders of kind "preference"
(data_prep/multimodal/preferences.py) read as micro-batches whose rows come in pairs.

A stored pair is one sample: prompt + chosen + rejected + <eod>, the prompt's media, and the
token offsets where each response starts (`extra["token_offsets"]`). `split_pair` turns its
expanded item (dataset.py) into two rows: prompt + chosen and prompt + rejected, both with the
prompt's positions and decoded media (the same tensors: each item is read and decoded once), the
rejected response's position ids continuing right after the prompt as the chosen one's do.

`PairLoader` yields `PreferenceBatch`es: OmniBatch micro-batches of training.micro_batch_size
rows, one sample per row (no packing), sample 2k the chosen and 2k+1 the rejected response of
the micro-batch's k-th pair. A step takes training.global_batch_size / 2 pairs: pair j of the
run is pair j mod n of the epoch j // n's shuffle (seeded) of all n pairs of the folders (or, for
the precompute command, in stored order); data-parallel rank r takes its contiguous share. A bad
sample is counted and replaced by the next pair in that order.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.packing import collate, fit, pack_row

PAIR_KIND = "preference"
"""The manifest kind of prepared preference folders."""


@dataclass
class PreferenceBatch(OmniBatch):
    """An OmniBatch of pairs (module doc) with, per sample, the reference model's summed
    log-probability of its response when known (precomputed tables, or filled on the last
    pipeline stage by training/dpo.py before the policy's step)."""

    pairs: list = field(default_factory=list)
    """Per pair: (folder index, stored sample key)."""
    reference_logps: torch.Tensor | None = None
    """float32 [2 * pairs]: chosen, rejected, chosen, ... as the samples."""


def split_pair(item: dict, offsets: Sequence[int], unexpanded_length: int) -> tuple[dict, dict]:
    """(prompt + chosen, prompt + rejected) items of an expanded pair `item` whose responses
    start at token `offsets` of its `unexpanded_length` stored tokens (media only in the prompt,
    so each offset moves by the expansion)."""
    shift = item["expanded_length"] - unexpanded_length
    p, q = offsets[0] + shift, offsets[1] + shift
    c = q - p
    chosen, rejected = dict(item), dict(item)
    for key in ("tokens", "labels", "loss_mask", "media_item", "position_ids"):
        chosen[key] = item[key][..., :q]
    chosen["loss_mask"] = chosen["loss_mask"].clone()
    chosen["loss_mask"][q - 1] = 0  # its label is the rejected response's first token
    rejected["tokens"] = torch.cat([item["tokens"][:p], item["tokens"][q:]])
    rejected["media_item"] = torch.cat([item["media_item"][:p], item["media_item"][q:]])
    for key in ("labels", "loss_mask"):  # position p-1 predicts the rejected response's first token
        rejected[key] = torch.cat([item[key][:p - 1], item[key][q - 1:]])
    if "position_ids" in item:
        ids = item["position_ids"]
        rejected["position_ids"] = torch.cat([ids[..., :p], ids[..., q:] - c], dim=-1)
    chosen["expanded_length"], rejected["expanded_length"] = q, item["expanded_length"] - c
    chosen["id"], rejected["id"] = f"{item['id']}/chosen", f"{item['id']}/rejected"
    return chosen, rejected


class PairSources:
    """The pairs of every folder as one sequence: pair i is (folder, sample) in folder order."""

    def __init__(self, folders: Sequence[str], tokenizer, config: LoaderConfig, strict: bool):
        self.datasets = []
        for i, folder in enumerate(folders):
            dataset = MultimodalDataset(folder, tokenizer, config, strict=strict)
            if dataset.kind != PAIR_KIND:
                raise ConfigError(f"preference data {folder!r} is a {dataset.kind!r} folder; phase 6 "
                                  f"reads {PAIR_KIND!r} folders (python -m omni_data_prep.multimodal "
                                  "preferences)")
            self.datasets.append(dataset)
        self.starts = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        folder = int(np.searchsorted(self.starts, index, side="right")) - 1
        return folder, index - int(self.starts[folder])

    def rows(self, index: int) -> tuple[tuple[int, str], dict, dict] | None:
        """((folder, key), chosen row item, rejected row item) of pair `index`; None when bad."""
        folder, local = self.locate(index)
        dataset = self.datasets[folder]
        item = dataset[local]
        if item is None:
            return None
        _, key, tokens, _, meta, _ = dataset.reader.raw(local)
        return (folder, key), *split_pair(item, meta.extra["token_offsets"], len(tokens))


def reference_table(folder: str | Path, name: str) -> dict[str, list[float]]:
    """{sample key: [chosen, rejected] reference log-probs} of `<folder>/<name>`
    (launch/precompute_ref_logprobs.py)."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"dpo.reference_logprobs={name!r}: {path} does not exist; write it with "
                          "launch/precompute_ref_logprobs.py")
    return json.loads(path.read_text())["pairs"]


class PairReader(torch.utils.data.Dataset):
    """Reads a micro-batch (a tuple of pair indices) into a PreferenceBatch with its skips."""

    def __init__(self, sources: PairSources, seq_length: int, pad_id: int, tmrope: bool,
                 image_size: int, n_mels: int, modality: str, tables: list[dict] | None):
        self.sources, self.seq_length, self.pad_id, self.tmrope = sources, seq_length, pad_id, tmrope
        self.image_size, self.n_mels, self.modality, self.tables = image_size, n_mels, modality, tables

    def __getitem__(self, indices: Sequence[int]):
        rows, pairs, skips = [], [], collections.Counter()
        for index in indices:
            for attempt in range(len(self.sources)):
                before = self._skip_counts()
                read = self.sources.rows((index + attempt) % len(self.sources))
                if read is not None:
                    items = [fit(r, self.seq_length) for r in read[1:]]
                    if all(i is not None for i in items):
                        break
                skips.update(self._skip_counts() - before)
                if read is not None:
                    skips["too_long"] += 1
            else:
                raise RuntimeError("every preference pair is bad")
            pairs.append(read[0])
            for item in items:
                item["modality"] = self.modality
                rows.append(pack_row([item], self.seq_length, self.pad_id, self.tmrope))
        batch = collate(rows, self.image_size, self.n_mels, packed=False)
        reference = None
        if self.tables is not None:
            try:
                reference = torch.tensor([v for folder, key in pairs for v in self.tables[folder][key]])
            except KeyError as err:
                raise ConfigError(f"the reference log-prob table has no pair {err}; recompute it "
                                  "for this data") from None
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(OmniBatch)}
        return PreferenceBatch(**fields, pairs=pairs, reference_logps=reference), skips

    def _skip_counts(self) -> collections.Counter:
        return sum((collections.Counter(d.skip_counts) for d in self.sources.datasets),
                   collections.Counter())


class PairLoader:
    """Iterator of this rank's PreferenceBatches (module doc); `counts()` for the log."""

    def __init__(self, loader: torch.utils.data.DataLoader, modality: str, num_micro_batches: int):
        self._loader, self.modality, self.num_micro_batches = loader, modality, num_micro_batches
        self._iter: Iterator | None = None
        self._pairs, self._skips = 0, collections.Counter()

    def __len__(self) -> int:
        return self.num_micro_batches

    def __iter__(self) -> PairLoader:
        return self

    def __next__(self) -> PreferenceBatch:
        if self._iter is None:
            self._iter = iter(self._loader)
        batch, skips = next(self._iter)
        self.num_micro_batches -= 1
        self._pairs += len(batch.pairs)
        self._skips.update(skips)
        return batch

    def counts(self) -> tuple[collections.Counter, collections.Counter]:
        """(pairs delivered under the mix modality, bad samples per reason) since the last call."""
        out = collections.Counter({self.modality: self._pairs}), self._skips
        self._pairs, self._skips = 0, collections.Counter()
        return out


def _pair_order(n: int, seed: int, shuffle: bool) -> Iterator[int]:
    epoch = 0
    while True:
        order = np.random.default_rng(seed + epoch).permutation(n) if shuffle else np.arange(n)
        yield from (int(i) for i in order)
        epoch += 1


def build_pair_loader(cfg: OmniConfig, tokenizer, media_tokens: MediaTokens, consumed_samples: int,
                      dp_rank: int, dp: int, shuffle: bool = True, steps: int | None = None
                      ) -> PairLoader:
    """This rank's preference micro-batches: the folders of data.multimodal's one scheduled
    modality (config/validate_dpo.py), training.{micro,global}_batch_size rows (two per pair),
    up to training.train_steps (or `steps`) steps; with dpo.reference_logprobs the stored
    reference log-probs ride along."""
    from megatron_omni.config.mixes import Schedule
    from megatron_omni.config.validate_omni import schedule_config

    mm, t = cfg.data.multimodal, cfg.training
    (modality,) = Schedule.from_config(schedule_config(cfg)).modalities
    folders = getattr(mm, modality)
    config = LoaderConfig(image_size=mm.image_size, image_backend=mm.image_backend,
                          max_video_frames=mm.max_video_frames, n_mels=mm.n_mels,
                          pad_audio_to_30s=mm.pad_audio_to_30s, media_tokens=media_tokens,
                          compute_position_ids=mm.tmrope)
    sources = PairSources(folders, tokenizer, config, mm.strict)
    name = cfg.dpo.reference_logprobs
    tables = [reference_table(f, name) for f in folders] if name else None
    pairs_per_step, pairs_per_micro = t.global_batch_size // 2, t.micro_batch_size // 2
    per_rank = pairs_per_step // dp
    first = consumed_samples // t.global_batch_size
    last = t.train_steps if steps is None else steps
    seed = t.seed if mm.seed is None else mm.seed
    order = _pair_order(len(sources), seed, shuffle)

    def micro_batches() -> Iterator[list[int]]:
        for step in range(last):
            mine = [next(order) for _ in range(pairs_per_step)][dp_rank * per_rank:(dp_rank + 1) * per_rank]
            if step >= first:
                # one dataset index per micro-batch: the tuple of its pairs
                yield from ([tuple(mine[m:m + pairs_per_micro])] for m in range(0, per_rank, pairs_per_micro))

    reader = PairReader(sources, cfg.data.seq_length, tokenizer.pad_id, mm.tmrope, mm.image_size,
                        mm.n_mels, modality, tables)
    loader = torch.utils.data.DataLoader(reader, batch_sampler=micro_batches(), num_workers=mm.num_workers,
                                         collate_fn=lambda x: x[0],
                                         generator=torch.Generator().manual_seed(seed))
    return PairLoader(loader, modality, max(0, last - first) * (per_rank // pairs_per_micro))
