"""Bytes one rank holds while training, per pipeline stage (docs/planner.md has the model).

Static: weights (params dtype), fp32 main gradients of the trainable parameters (megatron's DDP
with grad_reduce_in_fp32), Adam state of the trainable parameters (bf16: fp32 master copy + two
moments = 12 bytes; fp32: the two moments = 8 bytes), divided by dp under the distributed
optimizer. Dynamic: decoder activations by recompute mode times the micro-batches in flight on
the stage, the encoders' activations on stage 0, the logits on the last stage, and a margin.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from megatron_omni.config.encoders import audio_config, vision_config
from megatron_omni.config.phases import trainable_groups
from megatron_omni.config.schema import OmniConfig
from megatron_omni.plan.params import padded_vocab, rank_parameters, stage_layers

GIB = 2 ** 30
MARGIN_FIXED = 2 * GIB
"""CUDA context, NCCL and cuBLAS workspaces."""
MARGIN_FRACTION = 0.08
"""Allocator fragmentation, as a share of everything else."""
LOGIT_BYTES = 10
"""Per logit element at the loss: bf16 logits, their fp32 copy and fp32 softmax."""


@dataclass
class RankMemory:
    """Bytes on one rank of pipeline `stage`."""

    stage: int
    params: int
    """Parameters (count, not bytes) on the rank."""
    weights: int
    grads: int
    optimizer: int
    activations: int
    encoders: int
    """Encoder and projector activations (stage 0 of the omni model)."""
    logits: int
    margin: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name not in ("stage", "params"))


def dtype_bytes(cfg: OmniConfig) -> int:
    """2 for bf16 (and precision=auto: the planner targets GPUs), 4 for fp32."""
    return 4 if cfg.training.precision == "fp32" else 2


def static_bytes(cfg: OmniConfig, stage: int, dp: int) -> tuple[int, int, int, int]:
    """(parameters, weight bytes, gradient bytes, optimizer bytes) of a rank of `stage`."""
    counts = rank_parameters(cfg, stage)
    groups = trainable_groups(cfg.phase, cfg.training.trainable)
    trainable = sum(n for g, n in counts.items() if groups is None or g in groups)
    width = dtype_bytes(cfg)
    per_param = 12 if width == 2 else 8
    shards = dp if cfg.parallel.distributed_optimizer else 1
    return sum(counts.values()), width * sum(counts.values()), 4 * trainable, -(-per_param * trainable // shards)


def rank_tokens(cfg: OmniConfig) -> int:
    """Tokens of one micro-batch on one rank: micro_batch_size · seq_length / cp."""
    return cfg.training.micro_batch_size * cfg.data.seq_length // cfg.parallel.cp


def te_dense_layers(cfg: OmniConfig) -> bool:
    """Whether the dense layers are transformer-engine's: model.backend te, or auto on a GPU
    (the planner's target) unless data.packed with dense layers picks local (models/llm/model.py)."""
    m = cfg.model
    return m.backend == "te" or (m.backend == "auto" and not (cfg.data.packed and "D" in m.layer_types()))


def layer_activation_bytes(cfg: OmniConfig, letter: str = "D") -> int:
    """Activations one decoder layer keeps for backward, one micro-batch, no recompute, in units
    of h (split over tp under sequence parallelism) and of q = heads·head_dim, kv = groups·head_dim
    and f = ffn_hidden_size (split over tp):
    - local modules (S and L layers always; D layers on the local backend): 6h (each norm's
      input and normalised copy, each linear's input) + 6q + 4kv (the fused qkv output, the
      q/k norm and RoPE outputs, the attention output and the projection's input) + 5f (fc1's
      output, the SiLU, its product and fc2's input), + 2q for an output gate, + 2q for the
      Lightning output norm; tests/plan/test_activations.py measures them on CPU;
    - transformer-engine D layers (norms fused into the linears): 4h + 4q + 4kv + 3f.
    The attention cores are flash-style: no s x s scores are kept."""
    m, p = cfg.model, cfg.parallel
    q, f = m.num_attention_heads * m.head_dim, m.ffn_hidden_size
    groups = (m.linear.num_query_groups or m.num_attention_heads) if letter == "L" else m.num_query_groups
    kv = groups * m.head_dim
    sp = p.tp if p.sequence_parallel else 1
    if letter == "D" and te_dense_layers(cfg):
        per_token = 4 * m.hidden_size // sp + (4 * q + 4 * kv + 3 * f) // p.tp
    else:
        gated = (letter == "S" and m.sparse.output_gate) or (letter == "L" and m.linear.output_gate)
        extra = (2 * q if gated else 0) + (2 * q if letter == "L" else 0)
        per_token = 6 * m.hidden_size // sp + (6 * q + 4 * kv + 5 * f + extra) // p.tp
    return dtype_bytes(cfg) * rank_tokens(cfg) * per_token


def micro_batches(cfg: OmniConfig, dp: int) -> int:
    """Micro-batches per step on each data-parallel rank."""
    t = cfg.training
    return max(1, t.global_batch_size // (t.micro_batch_size * dp))


def in_flight(cfg: OmniConfig, stage: int, dp: int) -> float:
    """Micro-batches whose activations a rank of `stage` holds at its peak, in units of the
    stage's whole layers: 1F1B holds pp - stage; interleaved (vpp > 1) holds (pp - stage - 1)·2 +
    (vpp - 1)·pp + 1 chunks of 1/vpp of them (megatron's warm-up counts)."""
    p, micro = cfg.parallel, micro_batches(cfg, dp)
    vpp = p.vpp or 1
    if vpp == 1:
        return min(p.pp - stage, micro)
    return min((p.pp - stage - 1) * 2 + (vpp - 1) * p.pp + 1, micro * vpp) / vpp


def decoder_activations(cfg: OmniConfig, stage: int, dp: int) -> int:
    letters = stage_layers(cfg, cfg.parallel.pp, cfg.parallel.vpp or 1, stage)
    per_layer = [layer_activation_bytes(cfg, x) for x in letters]
    mode = cfg.training.recompute
    if mode == "full":  # each layer keeps its input; one layer is recomputed at a time
        p = cfg.parallel
        kept = dtype_bytes(cfg) * rank_tokens(cfg) * cfg.model.hidden_size // (p.tp if p.sequence_parallel else 1)
        return int(kept * len(letters) * in_flight(cfg, stage, dp)) + max(per_layer)
    # selective recomputes the core attention only, which keeps no s x s scores here
    return int(sum(per_layer) * in_flight(cfg, stage, dp))


def encoder_tokens(cfg: OmniConfig) -> tuple[int, int]:
    """(vision, audio) encoder tokens per sample the planner budgets: one video of
    data.multimodal.max_video_frames (else model.omni.max_video_frames) frames and one clip of the
    audio encoder's full length."""
    omni, mm = cfg.model.omni, cfg.data.multimodal
    frames = mm.max_video_frames if mm is not None else omni.max_video_frames
    return frames * vision_config(omni).num_patches, audio_config(omni).max_source_positions


def encoder_activations(cfg: OmniConfig, dp: int) -> int:
    """Encoder activations (never recomputed) of the micro-batches in flight through stage 0's
    first chunk (min(pp, micro-batches)), per sample those of encoder_tokens. A frozen encoder
    (its group not in training.trainable / the phase default) saves nothing for backward: no
    input or weight of it requires grad, so only its output, the projector's input, is kept."""
    if cfg.model.omni is None:
        return 0
    tp, per_sample = cfg.parallel.tp, 0
    groups = trainable_groups(cfg.phase, cfg.training.trainable)
    shapes = (vision_config(cfg.model.omni), audio_config(cfg.model.omni))
    for name, shape, tokens in zip(("vision_encoder", "audio_encoder"), shapes, encoder_tokens(cfg)):
        h, f = shape.hidden_size, shape.ffn_hidden_size
        if groups is not None and name not in groups:
            per_sample += tokens * h
        else:
            per_sample += tokens * shape.num_layers * (4 * h + (4 * h + 2 * f) // tp)
    samples = cfg.training.micro_batch_size * min(cfg.parallel.pp, micro_batches(cfg, dp))
    return int(dtype_bytes(cfg) * per_sample * samples)


def rank_memory(cfg: OmniConfig, dp: int) -> list[RankMemory]:
    """One RankMemory per pipeline stage of cfg's layout (dp = world / (tp·pp·cp))."""
    p = cfg.parallel
    out = []
    for stage in range(p.pp):
        params, weights, grads, optimizer = static_bytes(cfg, stage, dp)
        logits = LOGIT_BYTES * rank_tokens(cfg) * padded_vocab(cfg) // p.tp if stage == p.pp - 1 else 0
        row = RankMemory(stage, params, weights, grads, optimizer, decoder_activations(cfg, stage, dp),
                         encoder_activations(cfg, dp) if stage == 0 else 0, logits)
        row.margin = int(MARGIN_FIXED + MARGIN_FRACTION * row.total)
        out.append(row)
    return out
