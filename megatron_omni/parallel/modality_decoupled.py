"""Modality-decoupled data parallelism (parallel.modality_decoupled; docs/modality_decoupled.md).

Every pipeline stage of an LLM replica holds the encoders and projectors (TP-split over the
stage's TP group as on stage 0 in the coupled layout). Per training step::

    before the schedule  all media items of the step's micro-batches -> balance() over the pp
                         stages by cost; each stage encodes + projects its share once (no_grad)
                         -> gather to stage 0 over the pipeline group (same tp, same dp rank)
                         -> stage 0: one leaf [all tokens, h] (requires_grad), sliced per
                            micro-batch; the model's merge reads them in each forward
    the 1F1B schedule    unchanged; the LLM backward accumulates the leaf's .grad
    end of the schedule  (finalize_model_grads wrapper) leaf.grad scattered back to the owners;
                         each owner recomputes its items one at a time and runs
                         torch.autograd.backward(outputs, grads); encoder/projector main_grads
                         all-reduced over the pipeline group, then megatron's DDP reduces them
                         over the data-parallel group as for every other parameter

Every rank of a pipeline group sees the same micro-batches (the data path gives them to each
stage), so each one computes the same item list and assignment: no counts are exchanged, and
all ranks join the same collectives every step (none when the step has no media).

The model side (models/omni/model.py) supplies ``check_media(tokens, batch)``,
``encode_item(batch, kind, index)`` -> encoder output, ``project_item(kind, features)`` ->
[tokens, h], ``media_parameters()``, ``media_dtype()``, ``encoder_trains(kind)``, and
``media_tokens``, ``vision_encoder.cfg``, ``audio_encoder.cfg`` for media_items.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads
from megatron.core.utils import unwrap_model

from megatron_omni.config.encoders import AudioEncoderConfig, VisionEncoderConfig
from megatron_omni.contract.balance import balance
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.media import MediaTokens
from megatron_omni.contract.projectors import stride2_length


@dataclass(frozen=True)
class MediaItem:
    """One image, video or audio clip of a step: micro-batch number, kind, number among the
    micro-batch's items of that kind, the LLM tokens it becomes, and its cost estimate."""

    micro: int
    kind: str
    index: int
    tokens: int
    cost: float


def media_items(batch: OmniBatch, tokens: MediaTokens, vision: VisionEncoderConfig,
                audio: AudioEncoderConfig) -> list[tuple[str, int, int, float]]:
    """[(kind, index, LLM tokens, cost)] of a micro-batch's items (images, videos, clips in
    order). Cost: encoder positions (patches × frames; ceil(mel frames / 2) after the audio
    tower's stride-2 conv) × layers × hidden², a dense-FLOP proxy that compares the two towers."""
    per_patch, per_frame = vision.num_layers * vision.hidden_size ** 2, audio.num_layers * audio.hidden_size ** 2
    items = [("image", i, tokens.image_tokens, float(vision.num_patches * per_patch))
             for i in range(int(batch.images.shape[0]))]
    items += [("video", i, tokens.video_tokens(int(v.shape[0])), float(vision.num_patches * int(v.shape[0]) * per_patch))
              for i, v in enumerate(batch.videos)]
    items += [("audio", i, tokens.audio_tokens(n), float(stride2_length(n) * per_frame))
              for i, n in enumerate(batch.mel_frames())]
    return items


def work_per_rank(items: list[MediaItem], owner: list[int], ways: int) -> tuple[list[int], list[float]]:
    """(items, cost) each way encodes."""
    counts, costs = [0] * ways, [0.0] * ways
    for item, way in zip(items, owner):
        counts[way] += 1
        costs[way] += item.cost
    return counts, costs


class MediaExchange:
    """The step's media of one model chunk (the one holding encoders): encode before the
    schedule, embeddings to stage 0, gradients back, encoder backward at the schedule's end."""

    def __init__(self, model):
        self.model = model
        self.items: list[MediaItem] = []
        self.owner: list[int] = []
        self.train = False
        self.queue: deque = deque()
        self.leaf: torch.Tensor | None = None
        self.kept: dict[int, torch.Tensor] = {}
        self.batches: list = []

    # ---------------------------------------------------------------- groups

    @staticmethod
    def _group():
        return ps.get_pipeline_model_parallel_group()

    @staticmethod
    def _ways_rank() -> tuple[int, int]:
        return ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()

    # ---------------------------------------------------------------- forward

    def encode_step(self, batches: list, train: bool) -> None:
        """Encode this rank's share of the step's media and deliver every item to stage 0
        (collective over the pipeline group). ``train``: gradients will be asked for."""
        model = self.model
        for batch in batches:
            model.check_media(batch.tokens, batch)
        ways = self._ways_rank()[0]
        self.batches = batches
        shapes = (model.media_tokens, model.vision_encoder.cfg, model.audio_encoder.cfg)
        self.items = [MediaItem(m, *item) for m, batch in enumerate(batches) for item in media_items(batch, *shapes)]
        self.owner = balance([item.cost for item in self.items], ways)
        self.train = train and any(p.requires_grad for p in model.media_parameters())
        self.kept, self.queue, self.leaf = {}, deque(), None
        outputs = []
        with torch.no_grad():
            for i in self._mine():
                item = self.items[i]
                features = model.encode_item(batches[item.micro], item.kind, item.index)
                outputs.append(model.project_item(item.kind, features))
                if self.train and not model.encoder_trains(item.kind):
                    self.kept[i] = features  # frozen encoder: only the projector recomputes
        tokens = self._gather(outputs)
        if tokens is None:
            self.queue.extend({} for _ in batches)
            return
        self.leaf = tokens.requires_grad_(self.train)
        per_item = self.leaf.split([item.tokens for item in self.items])
        features = [{} for _ in batches]
        for item, piece in zip(self.items, per_item):
            features[item.micro].setdefault(item.kind, []).append(piece)
        self.queue.extend({kind: torch.cat(p) for kind, p in f.items()} for f in features)

    def next_features(self) -> dict[str, torch.Tensor]:
        """{kind: [positions, h]} of the next micro-batch's media, in item order (stage 0, in
        the schedule's forward order)."""
        if not self.queue:
            raise RuntimeError("modality-decoupled media: a forward without encode_step for its micro-batch")
        return self.queue.popleft()

    def _mine(self) -> list[int]:
        rank = self._ways_rank()[1]
        return [i for i, way in enumerate(self.owner) if way == rank]

    def _layout(self) -> tuple[list[list[int]], int]:
        """(items of each way in item order, padded buffer rows)."""
        ways = self._ways_rank()[0]
        per_way = [[i for i, w in enumerate(self.owner) if w == way] for way in range(ways)]
        width = max((sum(self.items[i].tokens for i in its) for its in per_way), default=0)
        return per_way, width

    def _buffer(self, rows: int) -> torch.Tensor:
        p = next(iter(self.model.media_parameters()))
        return torch.zeros(rows, self.model.config.hidden_size, dtype=self.model.media_dtype(), device=p.device)

    def _gather(self, outputs: list[torch.Tensor]) -> torch.Tensor | None:
        """Stage 0: every item's tokens [Σ tokens, h] in item order; None elsewhere and when the
        step has no media."""
        per_way, width = self._layout()
        if width == 0:
            return None
        send = self._buffer(width)
        if outputs:
            mine = torch.cat(outputs)
            send[:mine.shape[0]] = mine
        first = ps.is_pipeline_first_stage(ignore_virtual=True)
        received = [self._buffer(width) for _ in per_way] if first else None
        torch.distributed.gather(send, received, dst=ps.get_pipeline_model_parallel_first_rank(),
                                 group=self._group())
        if not first:
            return None
        pieces = [None] * len(self.items)
        for its, buf in zip(per_way, received):
            offset = 0
            for i in its:
                pieces[i] = buf[offset:offset + self.items[i].tokens]
                offset += self.items[i].tokens
        return torch.cat(pieces)

    # ---------------------------------------------------------------- backward

    def backward(self) -> None:
        """Gradients of the step's embeddings back to their owners, the encoder/projector
        backward there (recomputing one item at a time), and their gradients summed over the
        pipeline group (collective; nothing when the step has no media or nothing trains)."""
        per_way, width = self._layout()
        if not self.train or width == 0:
            return
        first = ps.is_pipeline_first_stage(ignore_virtual=True)
        chunks = None
        if first:
            grad = self.leaf.grad if self.leaf.grad is not None else torch.zeros_like(self.leaf)
            per_item = grad.split([item.tokens for item in self.items])
            chunks = []
            for its in per_way:
                buf = self._buffer(width)
                if its:
                    mine = torch.cat([per_item[i] for i in its])
                    buf[:mine.shape[0]] = mine
                chunks.append(buf)
        received = self._buffer(width)
        torch.distributed.scatter(received, chunks, src=ps.get_pipeline_model_parallel_first_rank(),
                                  group=self._group())
        model, offset = self.model, 0
        for i in self._mine():
            item = self.items[i]
            grads = received[offset:offset + item.tokens]
            offset += item.tokens
            features = self.kept.pop(i, None)
            if features is None:
                features = model.encode_item(self.batches[item.micro], item.kind, item.index)
            outputs = model.project_item(item.kind, features)
            torch.autograd.backward(outputs, grads)
        self.leaf, self.batches = None, []
        self._reduce_grads()

    def _reduce_grads(self) -> None:
        """Sum the encoder/projector gradients (megatron DDP's main_grad) over the pipeline
        group: each stage holds those of its own items."""
        grads = [p.main_grad for p in self.model.media_parameters() if p.requires_grad]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, group=self._group())
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def work(self) -> tuple[list[int], list[float]]:
        """(items, cost) each pipeline stage encodes in the step last encoded."""
        return work_per_rank(self.items, self.owner, self._ways_rank()[0])


def exchanges(model) -> list[MediaExchange]:
    """The MediaExchange of each model chunk that has one (modality-decoupled omni models)."""
    return [x for x in (getattr(c, "media_exchange", None) for c in unwrap_model(model)) if x is not None]


def encode_step(model, micro_batches: list, forward_only: bool) -> None:
    """Before the schedule: the step's media encoded and delivered (no-op without decoupling)."""
    for exchange in exchanges(model):
        exchange.encode_step(micro_batches, train=not forward_only)


def finalize_grads(model, *args, **kwargs):
    """megatron's finalize_model_grads, preceded by the decoupled encoders' backward (the
    schedule calls it once at the end of its backward, on every rank)."""
    for exchange in exchanges(model):
        exchange.backward()
    return finalize_model_grads(model, *args, **kwargs)
