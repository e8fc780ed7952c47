"""Text pretraining data: megatron-core GPTDatasets from weighted blends of indexed binaries,
read in a fixed global order so that any data-parallel layout and any restart see the same
samples in the same optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.data.index_check import IndexFileError, check_indexed_dataset


@dataclass(frozen=True)
class _DatasetTokenizer:
    """What megatron-core's GPTDataset reads from a tokenizer (unique_identifiers keys its
    index cache)."""

    vocab_size: int
    eod: int
    pad: int

    @property
    def unique_identifiers(self) -> dict:
        return {"class": "megatron_omni", "vocab_size": self.vocab_size, "eod": self.eod, "pad": self.pad}


def _blend(blend: list):
    """megatron-core's blend of [prefix] or [weight1, prefix1, ...] (config/validate_inputs.py
    check_blend checked it before the launch)."""
    return get_blend_from_list([str(x) for x in blend])


def _check_indexes(blends: dict[str, list]) -> None:
    """Rank 0 checks every dataset's .idx against its .bin (data/index_check.py) before
    megatron-core reads them; a fault reaches every rank as the same ConfigError, so none is
    left waiting in a collective."""
    dist = torch.distributed.is_initialized()
    error = None
    if not dist or torch.distributed.get_rank() == 0:
        try:
            for name, blend in blends.items():
                for prefix in blend if len(blend) == 1 else blend[1::2]:
                    check_indexed_dataset(prefix)
        except IndexFileError as err:
            error = f"{name}: {err}"
    if dist:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ConfigError(error)


def build_text_datasets(cfg: OmniConfig, tokenizer, num_train: int, num_valid: int):
    """(train, valid) GPTDatasets with at least num_train / num_valid samples each."""
    d = cfg.data
    tok = _DatasetTokenizer(tokenizer.vocab_size, tokenizer.eod_id, tokenizer.pad_id)
    common = dict(random_seed=cfg.training.seed, sequence_length=d.seq_length, tokenizer=tok,
                  reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                  create_attention_mask=False,
                  path_to_cache=d.cache_dir or str(Path(cfg.checkpoint.dir) / "data_cache"))
    if d.valid_blend is None:
        config = GPTDatasetConfig(blend=_blend(d.train_blend), split=d.split, **common)
    else:
        config = GPTDatasetConfig(blend_per_split=[_blend(d.train_blend), _blend(d.valid_blend), None],
                                  **common)
    _check_indexes({"data.train_blend": d.train_blend,
                    **({"data.valid_blend": d.valid_blend} if d.valid_blend is not None else {})})
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [num_train, num_valid, 0], lambda: True, config).build()
    if train is None or (num_valid and valid is None):
        raise ConfigError(f"data.split={d.split!r} leaves no train or validation documents; "
                          "give both splits a share or set data.valid_blend")
    if d.packed:
        train, valid = (None if ds is None else PackedDocuments(ds, tokenizer.eod_id)
                        for ds in (train, valid))
    return train, valid


class PackedDocuments(torch.utils.data.Dataset):
    """A GPTDataset whose samples also carry ``cu_seqlens`` [N + 1] (int32): the offsets of the
    documents in the sample's tokens, a new one starting after each <eod> (data.packed)."""

    def __init__(self, dataset, eod: int):
        self.dataset, self.eod = dataset, eod

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx) -> dict:
        sample = self.dataset[idx]
        tokens = sample["tokens"]
        starts = (tokens[:-1] == self.eod).nonzero().flatten() + 1
        sample["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int32), starts.int(),
                                          torch.tensor([len(tokens)], dtype=torch.int32)])
        return sample


class GlobalOrderSampler(torch.utils.data.Sampler):
    """Yields this data-parallel rank's micro-batches of sample indices.

    Global batch b covers samples [b·G, (b+1)·G) (G = global batch size); rank r takes the r-th
    contiguous 1/dp of it, cut into micro-batches. Starting at ``consumed`` samples resumes
    exactly where a run stopped.
    """

    def __init__(self, total: int, consumed: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.total, self.consumed = total, consumed
        self.mbs, self.gbs = micro_batch_size, global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def __iter__(self):
        per_rank = self.gbs // self.dp_size
        for start in range(self.consumed, self.total - self.gbs + 1, self.gbs):
            mine = start + self.dp_rank * per_rank
            for m in range(mine, mine + per_rank, self.mbs):
                yield list(range(m, m + self.mbs))

    def __len__(self):
        return (self.total - self.consumed) // self.gbs * (self.gbs // self.dp_size // self.mbs)


def micro_batches(dataset, consumed: int, cfg: OmniConfig, dp_rank: int, dp_size: int):
    """An iterator of this rank's micro-batches (dicts of tokens, labels, loss_mask, position_ids;
    and cu_seqlens with data.packed)."""
    t = cfg.training
    sampler = GlobalOrderSampler(len(dataset), consumed, t.micro_batch_size, t.global_batch_size,
                                 dp_rank, dp_size)
    # The loader draws its workers' base seed from `generator`; without one it would draw from
    # the global torch RNG (which dropout uses), so every new iterator (a validation pass, a
    # resume) would shift the training RNG streams.
    generator = torch.Generator().manual_seed(cfg.training.seed)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                            num_workers=cfg.data.num_workers,
                                            persistent_workers=cfg.data.num_workers > 0,
                                            generator=generator))
