"""Cross-field checks run before any model is built. Each names the fields and a valid value."""
from __future__ import annotations

import dataclasses
import math

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig

SUPPORTED_PHASES = {1, 2, 3, 4, 5, 6}


def validate(cfg: OmniConfig, world_size: int) -> int:
    """Check cfg for a job of `world_size` ranks; returns the derived data-parallel size."""
    _validate_phase(cfg)
    dp = _validate_world(cfg, world_size)
    _validate_heads(cfg)
    _validate_layers(cfg)
    _validate_batch(cfg, dp)
    _validate_sequence(cfg)
    _validate_training(cfg)
    _validate_rope(cfg)
    _validate_hybrid(cfg)
    _validate_omni(cfg)
    _validate_multimodal(cfg)
    _validate_distill(cfg)
    return dp


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _validate_phase(cfg: OmniConfig) -> None:
    if cfg.phase not in SUPPORTED_PHASES:
        raise ConfigError(f"phase={cfg.phase} is not a phase of the plan; use one of 1-6")


def _validate_world(cfg: OmniConfig, world_size: int) -> int:
    p = cfg.parallel
    for name in ("tp", "pp", "cp"):
        if getattr(p, name) < 1:
            raise ConfigError(f"parallel.{name}={getattr(p, name)} must be >= 1")
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        fits = [d for d in _divisors(world_size)]
        raise ConfigError(
            f"world size {world_size} is not a multiple of parallel.tp*pp*cp = "
            f"{p.tp}*{p.pp}*{p.cp} = {model_parallel}; launch a multiple of {model_parallel} "
            f"processes, or choose tp*pp*cp in {fits}")
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1; "
                          "set parallel.sequence_parallel=false or raise parallel.tp")
    # cp > 1: transformer-engine's attention under model.backend=te, our own
    # (megatron_omni.parallel.context_parallel) for the local backend and the S/L layers
    return world_size // model_parallel


def _validate_heads(cfg: OmniConfig) -> None:
    m, tp = cfg.model, cfg.parallel.tp
    for name in ("num_attention_heads", "num_query_groups"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name}={getattr(m, name)} must be >= 1")
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
            f"model.num_query_groups={m.num_query_groups}; use num_query_groups in "
            f"{_divisors(m.num_attention_heads)}")
    for name in ("num_attention_heads", "num_query_groups"):
        n = getattr(m, name)
        if n % tp:
            raise ConfigError(
                f"model.{name}={n} is not divisible by parallel.tp={tp}; "
                f"use parallel.tp in {[d for d in _divisors(n) if m.num_attention_heads % d == 0 and m.num_query_groups % d == 0]}")
    if m.ffn_hidden_size % tp:
        raise ConfigError(
            f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={tp} (the "
            f"MLP columns are split over tp); use ffn_hidden_size={m.ffn_hidden_size // tp * tp or tp}")


def _validate_layers(cfg: OmniConfig) -> None:
    p, n = cfg.parallel, cfg.model.num_layers
    vpp = p.vpp or 1
    if vpp > 1 and p.pp == 1:
        raise ConfigError(f"parallel.vpp={p.vpp} needs parallel.pp > 1 (interleaved pipeline); "
                          "set parallel.vpp=null or raise parallel.pp")
    if n % (p.pp * vpp):
        valid_pp = [d for d in _divisors(n) if n % (d * vpp) == 0 and (vpp == 1 or d > 1)]
        fix = f"parallel.pp in {valid_pp} (with vpp={vpp}) or " if valid_pp else ""
        raise ConfigError(
            f"model.num_layers={n} is not divisible by parallel.pp*vpp = {p.pp}*{vpp} = "
            f"{p.pp * vpp}; use {fix}model.num_layers a multiple of {p.pp * vpp}")


def _validate_batch(cfg: OmniConfig, dp: int) -> None:
    t, p = cfg.training, cfg.parallel
    if t.micro_batch_size < 1:
        raise ConfigError(f"training.micro_batch_size={t.micro_batch_size} must be >= 1")
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step or t.global_batch_size < per_step:
        lower = max(per_step, t.global_batch_size // per_step * per_step)
        raise ConfigError(
            f"training.global_batch_size={t.global_batch_size} is not a multiple of "
            f"training.micro_batch_size*dp = {t.micro_batch_size}*{dp} = {per_step}; "
            f"use global_batch_size={lower} or {lower + per_step}")
    num_micro = t.global_batch_size // per_step
    if (p.vpp or 1) > 1 and num_micro % p.pp:
        raise ConfigError(
            f"interleaved pipeline (parallel.vpp={p.vpp}) needs the number of micro-batches "
            f"({num_micro} = global_batch_size / (micro_batch_size*dp)) to be a multiple of "
            f"parallel.pp={p.pp}; use training.global_batch_size={per_step * p.pp * max(1, num_micro // p.pp)}")


def _validate_sequence(cfg: OmniConfig) -> None:
    p, s = cfg.parallel, cfg.data.seq_length
    if p.cp > 1 and s % (2 * p.cp):
        raise ConfigError(
            f"data.seq_length={s} must be divisible by 2*parallel.cp = {2 * p.cp} (load-balanced "
            f"context parallel); use data.seq_length={s // (2 * p.cp) * (2 * p.cp) or 2 * p.cp}")
    if p.sequence_parallel and s % (p.tp * p.cp):
        # each context-parallel rank holds seq_length/cp tokens, split again over tp
        step = math.lcm(p.tp * p.cp, 2 * p.cp if p.cp > 1 else 1)
        across = f"parallel.tp*cp = {p.tp}*{p.cp} = {p.tp * p.cp}" if p.cp > 1 else f"parallel.tp={p.tp}"
        raise ConfigError(
            f"data.seq_length={s} must be divisible by {across} with sequence "
            f"parallelism; use data.seq_length={max(step, s // step * step)}")
    if cfg.data.packed and cfg.training.micro_batch_size != 1:
        raise ConfigError(
            f"data.packed=true packs the documents of one seq_length sample: set "
            f"training.micro_batch_size=1 (got {cfg.training.micro_batch_size}; raise "
            "data.seq_length for more tokens per micro-batch)")
    if s > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_length={s} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; raise max_position_embeddings or shorten seq_length")


def _validate_training(cfg: OmniConfig) -> None:
    t = cfg.training
    if t.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"training.precision={t.precision!r}; use auto, bf16 or fp32")
    if t.lr_decay_style not in ("cosine", "linear", "constant"):
        raise ConfigError(f"training.lr_decay_style={t.lr_decay_style!r}; use cosine, linear or constant")
    if t.recompute not in (None, "selective", "full"):
        raise ConfigError(f"training.recompute={t.recompute!r}; use null, selective or full")
    if cfg.model.backend not in ("auto", "te", "local"):
        raise ConfigError(f"model.backend={cfg.model.backend!r}; use auto, te or local")
    if t.trainable is not None:
        from megatron_omni.training.freeze import GROUPS
        unknown = [g for g in t.trainable if g not in GROUPS]
        if unknown or not t.trainable:
            raise ConfigError(f"training.trainable={t.trainable}: use a non-empty list of "
                              f"{', '.join(GROUPS)} (or null to train everything)")
    if t.group_lr is not None:
        from megatron_omni.training.freeze import GROUPS
        bad = {g: v for g, v in t.group_lr.items()
               if g not in GROUPS or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0}
        if bad:
            raise ConfigError(f"training.group_lr has {bad}: use positive learning rates keyed by "
                              f"{', '.join(GROUPS)}, e.g. {{vision_encoder: 1e-5, projectors: 1e-4}}")
    if t.min_lr > t.lr:
        raise ConfigError(f"training.min_lr={t.min_lr} exceeds training.lr={t.lr}; use "
                          f"min_lr <= lr, e.g. min_lr={t.lr / 10:g}")
    if t.train_steps < 1:
        raise ConfigError(f"training.train_steps={t.train_steps} must be >= 1")
    decay = t.lr_decay_steps or t.train_steps
    if t.warmup_steps >= decay:
        raise ConfigError(
            f"training.warmup_steps={t.warmup_steps} must be smaller than the decay length "
            f"(training.lr_decay_steps, or train_steps when null) = {decay}; "
            f"use warmup_steps={max(0, decay // 10)}")


def _validate_rope(cfg: OmniConfig) -> None:
    m = cfg.model
    if m.rope_scaling not in ("linear", "ntk"):
        raise ConfigError(f"model.rope_scaling={m.rope_scaling!r}; use linear or ntk")
    if not m.rope_scaling_factor >= 1.0:
        raise ConfigError(f"model.rope_scaling_factor={m.rope_scaling_factor} must be >= 1 "
                          "(1 = no scaling), e.g. 8 to stretch 4K positions to 32K")
    if m.rope_theta <= 0:
        raise ConfigError(f"model.rope_theta={m.rope_theta} must be > 0, e.g. 1000000")


def _validate_distill(cfg: OmniConfig) -> None:
    d = cfg.distill
    if d.teacher is None:
        return
    if cfg.phase != 4:
        raise ConfigError(f"distill.teacher is set but phase={cfg.phase}: distillation is a "
                          "phase-4 stage; use phase=4 or distill.teacher=null")
    if cfg.parallel.pp != 1:
        raise ConfigError(f"distill.teacher with parallel.pp={cfg.parallel.pp}: distillation "
                          "runs without pipeline parallelism; use parallel.pp=1 (and tp/cp)")
    if not d.temperature > 0:
        raise ConfigError(f"distill.temperature={d.temperature} must be > 0, e.g. 1.0")
    weights = {"kl_weight": d.kl_weight, "hidden_mse_weight": d.hidden_mse_weight,
               "lm_weight": d.lm_weight}
    for name, w in weights.items():
        if w < 0:
            raise ConfigError(f"distill.{name}={w} must be >= 0")
    if not any(weights.values()):
        raise ConfigError("distill: kl_weight, hidden_mse_weight and lm_weight are all 0; "
                          "set e.g. distill.kl_weight=1.0")


def _validate_hybrid(cfg: OmniConfig) -> None:
    """model.layer_pattern and the settings of the layer types it uses."""
    m = cfg.model
    if m.layer_pattern is not None and m.layer_pattern != "hybrid":
        bad = sorted(set(m.layer_pattern) - set("DSL"))
        if bad:
            raise ConfigError(
                f"model.layer_pattern={m.layer_pattern!r} has letters {bad}; use D (dense), "
                f"S (sparse) and L (linear), one per layer, or 'hybrid'")
        if len(m.layer_pattern) != m.num_layers:
            raise ConfigError(
                f"model.layer_pattern={m.layer_pattern!r} has {len(m.layer_pattern)} letters but "
                f"model.num_layers={m.num_layers}; give one letter per layer, e.g. "
                f"{'SLLL' * (m.num_layers // 4) + 'S' * (m.num_layers % 4)!r}, or 'hybrid'")
    types = m.layer_types()
    cp = cfg.parallel.cp
    if "S" in types and cp > 1 and (cfg.data.seq_length // (2 * cp)) % m.sparse.block_size:
        # block selection is per query block: a CP chunk must start on a block boundary
        chunk = 2 * cp * m.sparse.block_size
        raise ConfigError(
            f"data.seq_length={cfg.data.seq_length} with parallel.cp={cp}: sparse (S) layers need "
            f"seq_length / (2*cp) to be a multiple of model.sparse.block_size="
            f"{m.sparse.block_size}; use data.seq_length="
            f"{max(chunk, cfg.data.seq_length // chunk * chunk)}")
    if "S" in types:
        _validate_sparse(cfg)
    if "L" in types:
        _validate_linear(cfg)


def _validate_sparse(cfg: OmniConfig) -> None:
    s = cfg.model.sparse
    if s.block_size < 16 or s.block_size & (s.block_size - 1):
        raise ConfigError(f"model.sparse.block_size={s.block_size} must be a power of two >= 16, "
                          "e.g. 64")
    if s.kernel_stride < 1 or s.kernel_size < s.kernel_stride or s.kernel_size % s.kernel_stride:
        raise ConfigError(
            f"model.sparse.kernel_size={s.kernel_size} must be a positive multiple of "
            f"model.sparse.kernel_stride={s.kernel_stride}; e.g. kernel_size=32, kernel_stride=16")
    if s.block_size % s.kernel_stride:
        raise ConfigError(
            f"model.sparse.block_size={s.block_size} must be a multiple of "
            f"model.sparse.kernel_stride={s.kernel_stride}; use kernel_stride in "
            f"{[d for d in _divisors(s.block_size) if s.kernel_size % d == 0]}")
    for name in ("topk", "init_blocks"):
        if getattr(s, name) < 0:
            raise ConfigError(f"model.sparse.{name}={getattr(s, name)} must be >= 0")
    if s.local_blocks < 1:
        raise ConfigError(f"model.sparse.local_blocks={s.local_blocks} must be >= 1 (it counts "
                          "the query's own block)")
    if s.dense_len < 1:
        raise ConfigError(f"model.sparse.dense_len={s.dense_len} must be >= 1")


def _validate_linear(cfg: OmniConfig) -> None:
    m, tp = cfg.model, cfg.parallel.tp
    lin = m.linear
    if lin.slopes not in ("alibi", "minimax"):
        raise ConfigError(f"model.linear.slopes={lin.slopes!r}; use alibi or minimax")
    if lin.chunk_size < 16 or lin.chunk_size & (lin.chunk_size - 1):
        raise ConfigError(f"model.linear.chunk_size={lin.chunk_size} must be a power of two >= 16, "
                          "e.g. 64")
    groups = lin.num_query_groups
    if groups is not None and (groups < 1 or m.num_attention_heads % groups or groups % tp):
        valid = [d for d in _divisors(m.num_attention_heads) if d % tp == 0]
        raise ConfigError(
            f"model.linear.num_query_groups={groups} must divide model.num_attention_heads="
            f"{m.num_attention_heads} and be divisible by parallel.tp={tp}; use one of {valid} "
            "or null (= num_attention_heads)")


def _validate_omni(cfg: OmniConfig) -> None:
    """model.omni: known presets and projectors, shapes that split over parallel.tp."""
    omni, m, p = cfg.model.omni, cfg.model, cfg.parallel
    if omni is None:
        return
    from megatron_omni.models.encoders.audio import AUDIO_PRESETS
    from megatron_omni.models.encoders.vision import VISION_PRESETS
    from megatron_omni.models.omni import media

    for name, value, options in (("vision", omni.vision, VISION_PRESETS),
                                 ("audio", omni.audio, AUDIO_PRESETS),
                                 ("vision_projector", omni.vision_projector, ("resampler", "mlp")),
                                 ("audio_projector", omni.audio_projector, ("conv_gmlp", "mlp"))):
        if value not in options:
            raise ConfigError(f"model.omni.{name}={value!r}; use one of {sorted(options)}")
    for name, preset in (("vision", VISION_PRESETS[omni.vision]), ("audio", AUDIO_PRESETS[omni.audio])):
        fields = {f.name for f in dataclasses.fields(preset)}
        unknown = sorted(set(getattr(omni, f"{name}_overrides") or {}) - fields)
        if unknown:
            raise ConfigError(f"model.omni.{name}_overrides has unknown fields {unknown}; use "
                              f"{', '.join(sorted(fields))}")
    side = math.isqrt(max(omni.image_tokens, 0))
    if omni.vision_projector == "resampler" and (omni.image_tokens < 1 or side * side != omni.image_tokens):
        raise ConfigError(f"model.omni.image_tokens={omni.image_tokens} must be a square (a token grid "
                          f"for TMRoPE), e.g. {max(1, side) ** 2}")
    if omni.vision_projector == "resampler" and (m.hidden_size % 4 or m.hidden_size % omni.resampler_heads):
        raise ConfigError(f"model.omni.resampler_heads={omni.resampler_heads}: the resampler is "
                          f"model.hidden_size={m.hidden_size} wide, which must be divisible by 4 and by "
                          f"resampler_heads; use resampler_heads in {[d for d in _divisors(m.hidden_size) if d <= 64]}")
    for name, shape in (("vision", media.vision_config(omni)), ("audio", media.audio_config(omni))):
        if shape.num_attention_heads % p.tp or shape.ffn_hidden_size % p.tp:
            raise ConfigError(f"model.omni.{name}={getattr(omni, name)!r} has {shape.num_attention_heads} "
                              f"heads and ffn {shape.ffn_hidden_size}, not divisible by parallel.tp={p.tp}")
    hidden = omni.projector_hidden_size or m.hidden_size
    if "mlp" in (omni.vision_projector, omni.audio_projector) and hidden % p.tp:
        raise ConfigError(f"model.omni.projector_hidden_size={hidden} must be divisible by parallel.tp={p.tp}")
    if omni.max_video_frames < 1 or omni.frames_per_package < 1:
        raise ConfigError("model.omni.max_video_frames and model.omni.frames_per_package must be >= 1, e.g. 64 and 6")
    if omni.tmrope:
        sections = omni.mrope_sections
        if sections is not None and (len(sections) != 3 or sum(sections) * 2 != m.head_dim):
            raise ConfigError(f"model.omni.mrope_sections={sections} must be three counts summing to "
                              f"model.head_dim / 2 = {m.head_dim // 2}, or null")
        if m.rope_scaling == "linear" and m.rope_scaling_factor != 1.0:
            raise ConfigError(f"model.rope_scaling_factor={m.rope_scaling_factor} with linear scaling is "
                              "not supported with TMRoPE; use model.rope_scaling=ntk or factor 1.0")
    if p.cp > 1:
        raise ConfigError(f"parallel.cp={p.cp} with model.omni: context parallelism of the merged "
                          "sequence is not implemented yet; use parallel.cp=1")
    if omni.contrastive_weight < 0 or omni.contrastive_temperature <= 0:
        raise ConfigError("model.omni.contrastive_weight must be >= 0 and contrastive_temperature > 0, "
                          "e.g. 0.1 and 0.07")
    mm = cfg.data.multimodal
    if mm is not None:
        vision, audio = media.vision_config(omni), media.audio_config(omni)
        for data_field, data_value, model_field, model_value in (
                ("image_size", mm.image_size, "vision_overrides.image_size", vision.image_size),
                ("n_mels", mm.n_mels, "audio_overrides.num_mel_bins", audio.num_mel_bins),
                ("tmrope", mm.tmrope, "tmrope", omni.tmrope)):
            if data_value != model_value:
                raise ConfigError(f"data.multimodal.{data_field}={data_value} but the model has "
                                  f"model.omni.{model_field}={model_value}; make them equal")
        if mm.max_video_frames > omni.max_video_frames:
            raise ConfigError(f"data.multimodal.max_video_frames={mm.max_video_frames} exceeds "
                              f"model.omni.max_video_frames={omni.max_video_frames}; lower the former")


def _validate_multimodal(cfg: OmniConfig) -> None:
    """data.multimodal: value ranges and a schedule whose modalities all have sources (the
    files themselves are checked when the loader opens them)."""
    mm = cfg.data.multimodal
    if mm is None:
        return
    from megatron_omni.data.multimodal.mixture import MODALITIES, Schedule

    if mm.image_backend not in ("pil", "dali", "auto"):
        raise ConfigError(f"data.multimodal.image_backend={mm.image_backend!r}; use pil, dali "
                          "or auto")
    if mm.n_mels not in (80, 128):
        raise ConfigError(f"data.multimodal.n_mels={mm.n_mels}; use 80 (Whisper medium) or 128 "
                          "(large-v3)")
    for name in ("image_size", "max_video_frames"):
        if getattr(mm, name) < 1:
            raise ConfigError(f"data.multimodal.{name}={getattr(mm, name)} must be >= 1")
    if mm.num_workers < 0:
        raise ConfigError(f"data.multimodal.num_workers={mm.num_workers} must be >= 0")
    schedule = schedule_config(cfg)
    try:
        stages = Schedule.from_config(schedule).stages
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"data.multimodal.schedule={schedule!r}: {err}; e.g. {{phase: 3}}, "
                          "{mix: {text: 0.5, image_text: 0.5}} or {progressive: [0, 100, 200, "
                          "300]}") from None
    for stage in stages:
        unknown = sorted(set(stage.weights) - set(MODALITIES))
        if unknown:
            raise ConfigError(f"data.multimodal.schedule stage {stage.name!r} mixes {unknown}; "
                              f"the modalities are {', '.join(MODALITIES)}")
        for m in stage.weights:
            if not getattr(mm, m):
                raise ConfigError(f"data.multimodal.{m} is empty but the schedule (stage "
                                  f"{stage.name!r}) draws {m}; list its prepared folders in "
                                  f"data.multimodal.{m} or drop it from the mix")


def schedule_config(cfg: OmniConfig) -> dict | list:
    """data.multimodal.schedule, or the run phase's mix when it is null."""
    from megatron_omni.data.multimodal.mixture import PHASE_MIXES

    schedule = cfg.data.multimodal.schedule
    if schedule is not None:
        return schedule
    if cfg.phase not in PHASE_MIXES:
        raise ConfigError(f"data.multimodal.schedule is null and phase={cfg.phase} has no "
                          f"default mix (phases {sorted(PHASE_MIXES)} have); give one, e.g. "
                          "{mix: {text: 0.5, cross_modal: 0.5}}")
    return {"phase": cfg.phase}
