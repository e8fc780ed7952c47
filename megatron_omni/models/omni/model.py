"""The omni model: vision and audio encoders with their projectors feeding the Qwen3-style GPTModel.

On the first pipeline stage (the only one holding encoders and projectors)::

    tokens [b, s] -> LLM word embedding [b, s, h]            (full sequence, all TP ranks)
    images, video frames -> VisionEncoder -> vision projector -> image / video tokens [n, h]
    log-mel clips        -> AudioEncoder  -> audio projector  -> audio tokens [n, h]
    merge: the positions holding <image> / <video> / <audio> (row-major over the micro-batch)
           are overwritten by that kind's tokens, item after item      (media.py checks counts)
    -> [s, b, h] -> sequence-parallel scatter (+ embedding dropout) -> decoder -> loss

The merge works on the whole [s, b, h] sequence. Context parallelism (parallel.cp > 1) splits
the merged sequence right after it, before megatron's sequence-parallel scatter: every CP rank
receives the whole micro-batch, encodes all its media (the encoders run redundantly on the cp
ranks of stage 0), merges, and keeps its two load-balanced chunks (split_for_cp of
parallel/context_parallel.py); the step splits position ids, labels and loss masks alike
(training/step.py omni_local_batch). An encoder's gradient on a CP rank therefore comes only from
the positions that rank owns, and megatron's DDP sums it over data x context parallel ranks.
docs/omni_long_context.md.

Positions: with TMRoPE the GPTModel's rotary embedding is our TMRotaryEmbedding, fed this CP
rank's [b, 3, s / cp] ids of the batch on every pipeline stage; without it, plain 1-D RoPE (over
the pack, megatron slicing its table for the CP layout).

No media-dependent control flow reaches a collective or leaves a parameter without gradient:
a kind absent from a micro-batch (text-only batches, ranks without media) runs a tiny dummy
through its encoder and projector and adds 0 * its sum to the embeddings (the anchor), so every
encoder/projector parameter gets a (zero) gradient on every rank under megatron's DDP.

With parallel.modality_decoupled every pipeline stage holds the encoders and projectors, the
step's media are encoded before the schedule (parallel/modality_decoupled.py, through the
per-item methods below) and stage 0's merge reads the delivered tokens instead of encoding.
The checkpoint keeps one copy: stages > 0 save their encoders as replicas (replica_id) and
their parameters are marked ``shared`` so the gradient norm counts them once.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import sharded_state_dict_default

from megatron_omni.config.schema import OmniConfig, OmniModelConfig
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.config import encoders
from megatron_omni.contract.media import KINDS
from megatron_omni.contract.projectors import projector_layouts
from megatron_omni.models.encoders.audio import AudioEncoder, audio_transformer_config
from megatron_omni.models.encoders.vision import VisionEncoder, vision_transformer_config
from megatron_omni.models.llm.model import build_llm, params_dtype, rope_base
from megatron_omni.models.omni import media
from megatron_omni.models.omni.contrastive import attach, vision_audio_contrastive
from megatron_omni.models.positions.tmrope import TMRotaryEmbedding, default_sections
from megatron_omni.models.projectors import projector_class
from megatron_omni.parallel.context_parallel import split_for_cp
from megatron_omni.parallel.modality_decoupled import MediaExchange

MEDIA_MODULES = ("vision_encoder", "audio_encoder", "vision_projector", "audio_projector")


class GPTTMRotaryEmbedding(TMRotaryEmbedding):
    """TMRotaryEmbedding in GPTModel's ``mrope`` slot: GPTModel calls
    ``rotary_pos_emb(position_ids, mrope_section, cp_group=...)`` with the ids it was given,
    which are already this CP rank's (so the CP group is not used to slice again)."""

    def forward(self, position_ids: torch.Tensor, mrope_section=None, cp_group=None) -> torch.Tensor:
        return super().forward(position_ids)


def mrope_sections(cfg: OmniConfig) -> list[int]:
    omni = cfg.model.omni
    return list(omni.mrope_sections) if omni.mrope_sections else list(default_sections(cfg.model.head_dim))


class OmniModel(MegatronModule):
    """Encoders + projectors (pipeline stage 0 only; every stage with
    parallel.modality_decoupled) and the LLM chunk of this rank.

    ``forward(input_ids, position_ids, attention_mask, labels=None, batch=None)``: input_ids
    [b, s] (placeholders expanded; the whole sequence, also under context parallelism),
    position_ids [b, 3, s'] (TMRoPE) or [b, s'] and labels [b, s'] of this CP rank (s' = s / cp,
    its load-balanced chunks: training/step.py omni_local_batch), ``batch`` the OmniBatch
    (docs/omni_batch.md; its media, read on stage 0 only; None: no media). Returns what the
    GPTModel returns (per-token losses [b, s'] with labels on the last stage, hidden states
    elsewhere).

    ``placeholder_ids``: {"image": id, "video": id, "audio": id} of the tokenizer.
    """

    def __init__(self, cfg: OmniConfig, vocab_size: int, placeholder_ids: dict[str, int],
                 vp_stage: int | None = None):
        omni: OmniModelConfig = cfg.model.omni
        sections = mrope_sections(cfg) if omni.tmrope else None
        llm = build_llm(cfg, vocab_size, vp_stage, mrope_section=sections,
                        scatter_embedding_sequence_parallel=False)
        super().__init__(config=llm.config)
        self.omni = omni
        self.llm = llm
        self.placeholder_ids = dict(placeholder_ids)
        self.media_tokens = encoders.media_tokens(omni)
        """LLM tokens per media item (the data path expands placeholders to the same counts)."""
        if sections is not None:
            llm.rotary_pos_emb = GPTTMRotaryEmbedding(cfg.model.head_dim, sections, rope_base(cfg.model))
        self.model_type = llm.model_type
        self.pre_process, self.post_process = llm.pre_process, llm.post_process
        self.share_embeddings_and_output_weights = llm.share_embeddings_and_output_weights
        self.contrastive_losses: list[torch.Tensor] = []
        """The detached contrastive loss of each micro-batch that had one, for the log (read and
        cleared by training/step.contrastive_total)."""
        self.media_exchange: MediaExchange | None = None
        """The step's encoded media under parallel.modality_decoupled (else None)."""
        decoupled = cfg.parallel.modality_decoupled
        if not (self.pre_process or decoupled):
            return
        dtype, h = params_dtype(cfg), cfg.model.hidden_size
        vcfg, acfg = encoders.vision_config(omni), encoders.audio_config(omni)
        self.vision_encoder = VisionEncoder(vcfg, vision_transformer_config(vcfg, params_dtype=dtype))
        self.audio_encoder = AudioEncoder(acfg, audio_transformer_config(acfg, params_dtype=dtype))
        vision, audio = projector_layouts(omni)
        self.vision_projector = projector_class(vision).for_encoder(omni, self.vision_encoder, h, dtype)
        self.audio_projector = projector_class(audio).for_encoder(omni, self.audio_encoder, h, dtype)
        if decoupled:
            self.media_exchange = MediaExchange(self)
            if not self.pre_process:
                for p in self.media_parameters():  # stage 0's copy is the one counted in grad norms
                    p.shared = True

    # ------------------------------------------------------------------ megatron interface

    def set_input_tensor(self, input_tensor) -> None:
        self.llm.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self):
        return self.llm.shared_embedding_or_output_weight()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """The LLM's keys unprefixed (exactly a text checkpoint's), the encoders and projectors
        under their attribute names (vision_encoder., audio_projector., ...)."""
        out = self.llm.sharded_state_dict(prefix, sharded_offsets, metadata)
        tp_group = parallel_state.get_tensor_model_parallel_group()  # replicas of the plain modules
        stage = parallel_state.get_pipeline_model_parallel_rank()
        for name, module in self.named_children():
            if name != "llm":
                media = sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                   tp_group=tp_group)
                if not self.pre_process:  # decoupled: stage 0 saves, every stage loads
                    for entry in media.values():
                        entry.replica_id = (stage, *entry.replica_id[1:])
                out.update(media)
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Also takes the keys of sharded_state_dict (the LLM's unprefixed)."""
        own = tuple(f"{name}." for name, _ in self.named_children())
        return super().load_state_dict({k if k.startswith(own) else f"llm.{k}": v for k, v in state_dict.items()},
                                       strict=strict)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask=None,
                labels: torch.Tensor | None = None, batch: OmniBatch | None = None, packed_seq_params=None):
        if position_ids.dim() == 3:
            position_ids = position_ids.transpose(0, 1)  # [b, 3, s] -> megatron's mrope [3, b, s]
        decoder_input = self.embed(input_ids, batch) if self.pre_process else None
        return self.llm(input_ids, position_ids, attention_mask, decoder_input=decoder_input, labels=labels,
                        packed_seq_params=packed_seq_params)

    def embed(self, input_ids: torch.Tensor, batch: OmniBatch | None) -> torch.Tensor:
        """Word embeddings with the media tokens merged in: [s, b, h], then this CP rank's chunks
        [s / cp, b, h], scattered over the TP group under sequence parallelism (the decoder's
        input)."""
        word = self.llm.embedding.word_embeddings(input_ids)          # [b, s, h], full sequence
        merged, anchor, aligned = self.merge_media(word, input_ids, batch)
        embeddings = (merged + anchor).transpose(0, 1).contiguous()    # [s, b, h]
        cp = parallel_state.get_context_parallel_world_size()
        if aligned is not None:
            # the LM loss is a token sum that megatron divides by the global token count: scaling by
            # this micro-batch's tokens makes the weight relative to the per-token LM loss; each of
            # the cp ranks (all computing the same loss) backpropagates 1/cp of it
            scale = self.omni.contrastive_weight * batch.loss_mask.sum() / cp
            embeddings = attach(embeddings, scale * aligned)
            self.contrastive_losses.append(aligned.detach().float())
        embeddings = split_for_cp(embeddings, seq_dim=0)  # this CP rank's load-balanced chunks
        if self.config.fp32_residual_connection:
            embeddings = embeddings.float()
        dropout = self.llm.embedding.embedding_dropout
        if self.config.sequence_parallel:
            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
            with tensor_parallel.get_cuda_rng_tracker().fork():
                return dropout(embeddings)
        return dropout(embeddings)

    def merge_media(self, word: torch.Tensor, input_ids: torch.Tensor, batch: OmniBatch | None):
        """(word embeddings with every placeholder position overwritten, anchor scalar, the
        vision-audio contrastive loss or None)."""
        features, anchor, samples = self.encode_media(input_ids, batch)
        b, s, h = word.shape
        flat = word.reshape(b * s, h)
        for kind, tokens in features.items():
            index = (input_ids.reshape(-1) == self.placeholder_ids[kind]).nonzero().squeeze(1)
            flat = flat.index_copy(0, index, tokens.to(flat.dtype))
        aligned = None
        if self.omni.contrastive_weight > 0 and "video" in features and "audio" in features:
            counts = media.item_token_counts(self.media_tokens, batch)
            owner = {k: torch.tensor(samples[k]).repeat_interleave(torch.tensor(counts[k])).to(flat.device)
                     for k in ("video", "audio")}
            aligned = vision_audio_contrastive(features["video"], owner["video"], features["audio"],
                                               owner["audio"], self.omni.contrastive_temperature)
        return flat.view(b, s, h), anchor, aligned

    def encode_media(self, input_ids: torch.Tensor, batch: OmniBatch | None):
        """({kind: [positions of that kind, h] tokens in order}, anchor, {kind: sample number of
        each item}): the micro-batch's media through encoders and projectors, after the checks of
        media.assign_items and the size limits."""
        counts = media.item_token_counts(self.media_tokens, batch)
        samples = self.check_media(input_ids, batch)
        device = self.llm.embedding.word_embeddings.weight.device
        features, anchor = {}, torch.zeros((), device=device)
        if self.media_exchange is not None:
            return self.media_exchange.next_features(), anchor, samples
        videos = batch.videos if batch is not None else []
        if counts["image"]:
            features["image"] = self.vision_projector(self.vision_encoder(batch.images.to(device))).flatten(0, -2)
        if videos:
            frames = self.vision_encoder(torch.cat([v.to(device) for v in videos]))       # [ΣT, N, hv]
            per_video = frames.split([v.shape[0] for v in videos])
            features["video"] = torch.cat([self.vision_projector(f[None]).flatten(0, -2) for f in per_video])
        if not counts["image"] and not videos:
            anchor = anchor + self._vision_dummy(device)
        if counts["audio"]:
            mel = batch.audio_mel.to(device)
            frames = batch.mel_frames()
            features["audio"] = torch.cat([self.audio_projector(self.audio_encoder(mel[i:i + 1, :, :n]))[0]
                                           for i, n in enumerate(frames)])
        else:
            anchor = anchor + self._audio_dummy(device)
        return features, anchor, samples

    # ------------------------------------------------------------------ per item (decoupled)

    def media_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name in MEDIA_MODULES for p in getattr(self, name).parameters()]

    def media_dtype(self) -> torch.dtype:
        """dtype of the projectors' outputs (what the exchange sends)."""
        return next(self.vision_projector.parameters()).dtype

    def check_media(self, input_ids: torch.Tensor, batch: OmniBatch | None) -> dict[str, list[int]]:
        """{kind: sample number of each item}, after the checks of media.assign_items (items
        against placeholders) and the encoders' size limits."""
        counts = media.item_token_counts(self.media_tokens, batch)
        names = media.sample_names(batch, input_ids.shape[0])
        owner = media.sample_of_token(batch, input_ids)
        samples = {kind: media.assign_items(kind, input_ids == self.placeholder_ids[kind], owner, counts[kind], names)
                   for kind in KINDS}
        self._check_sizes(batch, samples, names)
        return samples

    def encode_item(self, batch: OmniBatch, kind: str, index: int) -> torch.Tensor:
        """One item through its encoder: image [1, N, hv], video [1, T, N, hv], audio [1, L, ha]."""
        device = next(self.vision_encoder.parameters()).device
        if kind == "image":
            return self.vision_encoder(batch.images[index:index + 1].to(device))
        if kind == "video":
            return self.vision_encoder(batch.videos[index].to(device))[None]
        frames = batch.mel_frames()[index]
        return self.audio_encoder(batch.audio_mel[index:index + 1, :, :frames].to(device))

    def project_item(self, kind: str, features: torch.Tensor) -> torch.Tensor:
        """encode_item's output through its projector: [LLM tokens of the item, h]."""
        if kind == "audio":
            return self.audio_projector(features)[0]
        return self.vision_projector(features).flatten(0, -2)

    def encoder_trains(self, kind: str) -> bool:
        encoder = self.audio_encoder if kind == "audio" else self.vision_encoder
        return any(p.requires_grad for p in encoder.parameters())

    def _vision_dummy(self, device) -> torch.Tensor:
        v = self.vision_encoder.cfg
        pixels = torch.zeros(1, v.num_channels, v.image_size, v.image_size, device=device)
        return 0.0 * self.vision_projector(self.vision_encoder(pixels)).sum()

    def _audio_dummy(self, device) -> torch.Tensor:
        mel = torch.zeros(1, self.audio_encoder.cfg.num_mel_bins, 1, device=device)
        return 0.0 * self.audio_projector(self.audio_encoder(mel)).sum()

    def _check_sizes(self, batch: OmniBatch | None, samples: dict[str, list[int]], names: list[str]) -> None:
        """Media the encoders cannot take: ValueError naming the sample and the limit."""
        if batch is None:
            return
        v, a, omni = self.vision_encoder.cfg, self.audio_encoder.cfg, self.omni
        frame = (v.num_channels, v.image_size, v.image_size)
        images = batch.images
        for i in range(len(samples["image"])):
            if tuple(images.shape[1:]) != frame:
                raise ValueError(f"sample {names[samples['image'][i]]}: images are {list(images.shape[1:])}; "
                                 f"the vision encoder takes {list(frame)} (model.omni.vision_overrides)")
        for i, video in enumerate(batch.videos):
            name = names[samples["video"][i]]
            if video.shape[0] > omni.max_video_frames:
                raise ValueError(f"sample {name}: video of {video.shape[0]} frames exceeds "
                                 f"model.omni.max_video_frames={omni.max_video_frames}")
            if tuple(video.shape[1:]) != frame:
                raise ValueError(f"sample {name}: video frames are {list(video.shape[1:])}; the vision "
                                 f"encoder takes {list(frame)} (model.omni.vision_overrides)")
        mel = batch.audio_mel
        for i, n in enumerate(batch.mel_frames()):
            name = names[samples["audio"][i]]
            if mel.shape[1] != a.num_mel_bins:
                raise ValueError(f"sample {name}: audio has {mel.shape[1]} mel bins; the audio encoder "
                                 f"takes {a.num_mel_bins}")
            if not 1 <= n <= min(a.max_frames, mel.shape[2]):
                raise ValueError(f"sample {name}: audio clip of {n} mel frames; the audio encoder takes "
                                 f"1 to {a.max_frames} ({a.max_frames // 100} s) and the batch holds "
                                 f"{mel.shape[2]} frames per clip")
