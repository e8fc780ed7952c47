"""Sequence packing: several samples in one fixed-length sequence, each attending only to
itself, and a data-parallel sampler that gives every rank the same number of micro-batches.

A packed sequence of length L holds samples s_1..s_k back to back, then padding:
    tokens      int64 [L]   the samples' tokens, then pad_id
    labels      int64 [L]   within sample s: labels = its next token; its last token's label is
                            its own <eod> (never the next sample's first token); pad_id in padding
    loss_mask   float32 [L] each sample's loss_mask (dataset.py: already shifted with the
                            labels, 0 on its last token); 0 in padding
    position_ids int64 [L]  restart at 0 in every sample (1-D; TMRoPE ids are per sample)
    cu_seqlens  int32 [k+2] sample boundaries [0, n_1, n_1+n_2, ..., total, L]: the padding is a
                            last segment of its own, so attention never crosses a boundary
                            (flash-attention varlen / megatron PackedSeqParams)
    num_samples int         k
Sample-level fields that are not per token (media, spans) are kept as lists in sample order;
the samples' own TMRoPE ids (dataset "position_ids", [3, expanded length]) become
"sample_position_ids" (the model lays them out after expanding the placeholders).

Packing is greedy and order-preserving (`pack_lengths`): a bin is closed when the next sample
does not fit; the bins are therefore a pure function of the sample order and lengths, so a
resume at bin b starts at the same sample. A sample longer than L is cut to L (its last kept
token then predicts nothing).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def pack_lengths(lengths: Sequence[int], seq_length: int) -> list[list[int]]:
    """Greedy order-preserving bins of sample positions whose lengths (capped at seq_length)
    sum to at most seq_length."""
    bins, current, used = [], [], 0
    for i, n in enumerate(lengths):
        n = min(int(n), seq_length)
        if current and used + n > seq_length:
            bins.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        bins.append(current)
    return bins


def pack_samples(samples: Sequence[dict], seq_length: int, pad_id: int) -> dict:
    """One packed sequence from dataset items (tokens, labels, loss_mask; see module doc)."""
    tokens = torch.full((seq_length,), pad_id, dtype=torch.long)
    labels = torch.full((seq_length,), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    position_ids = torch.zeros(seq_length, dtype=torch.long)
    bounds, at = [0], 0
    for s in samples:
        n = min(len(s["tokens"]), seq_length - at)
        if n <= 0:
            raise ValueError(f"samples of {sum(len(x['tokens']) for x in samples)} tokens do "
                             f"not fit in {seq_length}")
        tokens[at:at + n] = s["tokens"][:n]
        labels[at:at + n] = s["labels"][:n]
        loss_mask[at:at + n] = s["loss_mask"][:n]
        if n < len(s["tokens"]):            # cut: the last kept token predicts nothing
            loss_mask[at + n - 1] = 0
        position_ids[at:at + n] = torch.arange(n)
        at += n
        bounds.append(at)
    if at < seq_length:
        bounds.append(seq_length)
        position_ids[at:] = torch.arange(seq_length - at)
    packed = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
              "position_ids": position_ids,
              "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
              "num_samples": len(samples)}
    per_token = ("tokens", "labels", "loss_mask", "position_ids")
    extra = [k for k in samples[0] if k not in packed and k not in per_token] if samples else []
    for key in extra:
        packed[key] = [s.get(key) for s in samples]
    if samples and "position_ids" in samples[0]:   # per-sample TMRoPE ids [3, expanded]
        packed["sample_position_ids"] = [s["position_ids"] for s in samples]
    return packed


def attention_mask_from_cu_seqlens(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Boolean [L, L] mask, True where query i may attend key j: same segment and j <= i."""
    segment = torch.zeros(seq_length, dtype=torch.long)
    for b in cu_seqlens[1:-1].tolist():
        segment[b:] += 1
    same = segment[:, None] == segment[None, :]
    return same & torch.ones(seq_length, seq_length, dtype=torch.bool).tril()


class PackedDataset(torch.utils.data.Dataset):
    """Packed sequences over a map-style dataset of samples, in its order.

    Args:
        dataset: items with tokens/labels/loss_mask (e.g. MultimodalDataset or MixtureDataset);
            None items (skipped bad samples) are left out.
        lengths: the length of each item used for packing (default: read every item once;
            pass the token counts from the index to avoid decoding media).
        seq_length: L.
        pad_id: the tokenizer's pad id.
    """

    def __init__(self, dataset, seq_length: int, pad_id: int,
                 lengths: Sequence[int] | None = None):
        self.dataset, self.seq_length, self.pad_id = dataset, seq_length, pad_id
        if lengths is None:
            lengths = []
            for i in range(len(dataset)):
                item = dataset[i]
                lengths.append(0 if item is None else len(item["tokens"]))
        self.bins = pack_lengths(lengths, seq_length)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict:
        samples = [s for s in (self.dataset[i] for i in self.bins[index]) if s is not None]
        if not samples:   # only bad samples: an all-padding sequence (loss mask zero)
            return pack_samples([], self.seq_length, self.pad_id)
        return pack_samples(samples, self.seq_length, self.pad_id)


class EqualMicroBatchSampler(torch.utils.data.Sampler):
    """This rank's micro-batches of sequence indices; every rank yields the same number.

    Global batch b covers sequences [b·G, (b+1)·G) (G = global_batch_size), rank r takes its
    r-th contiguous 1/dp share, cut into micro-batches (as text.GlobalOrderSampler). At the end
    of the data, a last partial global batch is either dropped (`drop_last=True`) or completed
    by repeating sequences from the start (`pad_index` returns which; the repeated ones should
    have their loss masked by the caller: `is_padding(index)`). Either way all ranks agree,
    so no DDP collective hangs. `consumed` (sequences already trained on) resumes exactly.
    """

    def __init__(self, total: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, consumed: int = 0, drop_last: bool = True):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch "
                             f"{micro_batch_size} x dp {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        self.total, self.mbs, self.gbs = total, micro_batch_size, global_batch_size
        self.dp_rank, self.dp_size, self.consumed = dp_rank, dp_size, consumed
        self.drop_last = drop_last

    @property
    def padded_total(self) -> int:
        if self.drop_last:
            return self.total // self.gbs * self.gbs
        return -(-self.total // self.gbs) * self.gbs

    def is_padding(self, index: int) -> bool:
        return index >= self.total

    def real_index(self, index: int) -> int:
        """The sequence a (possibly padding) index reads."""
        return index % self.total if self.total else 0

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.gbs // self.dp_size
        for start in range(self.consumed, self.padded_total, self.gbs):
            mine = start + self.dp_rank * per_rank
            for m in range(mine, mine + per_rank, self.mbs):
                yield list(range(m, m + self.mbs))

    def __len__(self) -> int:
        return max(0, self.padded_total - self.consumed) // self.gbs * (
            self.gbs // self.dp_size // self.mbs)


def padded_item(dataset, sampler: EqualMicroBatchSampler, index: int) -> dict:
    """`dataset[index]` for an index from `sampler`; a padding index repeats an earlier
    sequence with its loss mask zeroed."""
    item = dataset[sampler.real_index(index)]
    if sampler.is_padding(index):
        item = {**item, "loss_mask": torch.zeros_like(item["loss_mask"]), "is_padding": True}
    return item


class PaddedView(torch.utils.data.Dataset):
    """`dataset` indexed by an EqualMicroBatchSampler with drop_last=False: padding indices
    read `padded_item` (an earlier sequence, loss mask zero). Use it as the DataLoader's
    dataset with that sampler."""

    def __init__(self, dataset, sampler: EqualMicroBatchSampler):
        self.dataset, self.sampler = dataset, sampler

    def __len__(self) -> int:
        return self.sampler.padded_total

    def __getitem__(self, index: int) -> dict:
        return padded_item(self.dataset, self.sampler, index)


def collate(batch: Sequence[dict]) -> dict:
    """A micro-batch of packed sequences (or equal-length samples): per-token tensors and
    cu_seqlens stacked / kept, everything else as a list per sequence. cu_seqlens of sequence
    b are offset by b·L and concatenated ("cu_seqlens", one varlen batch of b·L tokens), and
    also kept per sequence ("cu_seqlens_per_sequence")."""
    out = {}
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        out[key] = torch.stack([b[key] for b in batch])
    if "cu_seqlens" in batch[0]:
        length = batch[0]["tokens"].shape[0]
        parts = [b["cu_seqlens"][(1 if i else 0):] + i * length for i, b in enumerate(batch)]
        out["cu_seqlens"] = torch.cat(parts).to(torch.int32)
        out["cu_seqlens_per_sequence"] = [b["cu_seqlens"] for b in batch]
    for key in batch[0]:
        if key not in out and key != "cu_seqlens":
            out[key] = [b.get(key) for b in batch]
    return out
