"""Checks of the omni model (model.omni) and its data (data.multimodal)."""
from __future__ import annotations

import dataclasses
import math

from megatron_omni.config.encoders import AudioEncoderConfig, VisionEncoderConfig, audio_config, vision_config
from megatron_omni.config.load import ConfigError
from megatron_omni.config.mixes import PHASE_MIXES, Schedule
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_parallel import divisors
from megatron_omni.contract.batch import MODALITIES
from megatron_omni.contract.projectors import projector_layouts


def validate_omni(cfg: OmniConfig) -> None:
    """model.omni: preset overrides, token and head counts, shapes that split over parallel.tp,
    TMRoPE, and the data settings that must match the model."""
    omni, m, p = cfg.model.omni, cfg.model, cfg.parallel
    if omni is None:
        return
    for name, shapes in (("vision", VisionEncoderConfig), ("audio", AudioEncoderConfig)):
        fields = {f.name for f in dataclasses.fields(shapes)}
        unknown = sorted(set(getattr(omni, f"{name}_overrides") or {}) - fields)
        if unknown:
            raise ConfigError(f"model.omni.{name}_overrides has unknown fields {unknown}; use "
                              f"{', '.join(sorted(fields))}")
    vision, audio = projector_layouts(omni)   # the names are checked as the config loads
    side = math.isqrt(max(omni.image_tokens, 0))
    if vision.resamples and (omni.image_tokens < 1 or side * side != omni.image_tokens):
        raise ConfigError(f"model.omni.image_tokens={omni.image_tokens} must be a square (a token grid "
                          f"for TMRoPE), e.g. {max(1, side) ** 2}")
    if omni.resampler_heads < 1:
        raise ConfigError(f"model.omni.resampler_heads={omni.resampler_heads} must be >= 1, e.g. 4")
    if vision.resamples and (m.hidden_size % 4 or m.hidden_size % omni.resampler_heads):
        raise ConfigError(f"model.omni.resampler_heads={omni.resampler_heads}: the resampler is "
                          f"model.hidden_size={m.hidden_size} wide, which must be divisible by 4 and by "
                          f"resampler_heads; use resampler_heads in {[d for d in divisors(m.hidden_size) if d <= 64]}")
    _validate_media_shapes(cfg)
    hidden = omni.projector_hidden_size or m.hidden_size
    if hidden < 1:
        raise ConfigError(f"model.omni.projector_hidden_size={hidden} must be >= 1, or null (= model.hidden_size)")
    if (vision.tp_sharded or audio.tp_sharded) and hidden % p.tp:
        raise ConfigError(f"model.omni.projector_hidden_size={hidden} must be divisible by parallel.tp={p.tp}")
    if omni.max_video_frames < 1 or omni.frames_per_package < 1:
        raise ConfigError("model.omni.max_video_frames and model.omni.frames_per_package must be >= 1, e.g. 64 and 6")
    _validate_positions(cfg)
    _validate_context_parallel(cfg)
    if omni.contrastive_weight < 0 or omni.contrastive_temperature <= 0:
        raise ConfigError("model.omni.contrastive_weight must be >= 0 and contrastive_temperature > 0, "
                          "e.g. 0.1 and 0.07")
    mm = cfg.data.multimodal
    if mm is not None:
        if mm.max_video_frames > omni.max_video_frames:
            raise ConfigError(f"data.multimodal.max_video_frames={mm.max_video_frames} exceeds "
                              f"model.omni.max_video_frames={omni.max_video_frames}; lower the former")


def _validate_context_parallel(cfg: OmniConfig) -> None:
    """parallel.cp > 1 splits the merged sequence (docs/omni_long_context.md); the sequence
    rules shared with the LLM (seq_length over 2*cp, sparse blocks per chunk) are in
    validate_parallel / validate_model."""
    p = cfg.parallel
    if p.cp > 1 and cfg.phase == 6:
        raise ConfigError(f"parallel.cp={p.cp} with phase=6: the preference loss sums each "
                          "sample's log-probabilities over the whole sequence, which is not "
                          "split over context-parallel ranks; use parallel.cp=1")


def _validate_positions(cfg: OmniConfig) -> None:
    omni, m = cfg.model.omni, cfg.model
    if omni.tmrope:
        sections = omni.mrope_sections
        if sections is not None and (len(sections) != 3 or sum(sections) * 2 != m.head_dim):
            raise ConfigError(f"model.omni.mrope_sections={sections} must be three counts summing to "
                              f"model.head_dim / 2 = {m.head_dim // 2}, or null")
        if m.rope_scaling == "linear" and m.rope_scaling_factor != 1.0:
            raise ConfigError(f"model.rope_scaling_factor={m.rope_scaling_factor} with linear scaling is "
                              "not supported with TMRoPE; use model.rope_scaling=ntk or factor 1.0")


def _validate_media_shapes(cfg: OmniConfig) -> None:
    """The encoder shapes (preset + overrides) against parallel.tp and data.multimodal."""
    omni, tp, mm = cfg.model.omni, cfg.parallel.tp, cfg.data.multimodal
    vision, audio = vision_config(omni), audio_config(omni)
    for name, shape in (("vision", vision), ("audio", audio)):
        if shape.num_attention_heads % tp or shape.ffn_hidden_size % tp:
            raise ConfigError(f"model.omni.{name}={getattr(omni, name)!r} has {shape.num_attention_heads} "
                              f"heads and ffn {shape.ffn_hidden_size}, not divisible by parallel.tp={tp}")
    if mm is None:
        return
    for data_field, data_value, model_field, model_value in (
            ("image_size", mm.image_size, "vision_overrides.image_size", vision.image_size),
            ("n_mels", mm.n_mels, "audio_overrides.num_mel_bins", audio.num_mel_bins),
            ("tmrope", mm.tmrope, "tmrope", omni.tmrope)):
        if data_value != model_value:
            raise ConfigError(f"data.multimodal.{data_field}={data_value} but the model has "
                              f"model.omni.{model_field}={model_value}; make them equal")


def validate_multimodal(cfg: OmniConfig) -> None:
    """data.multimodal: value ranges and a schedule whose modalities all have sources (the
    files themselves are checked when the loader opens them)."""
    mm = cfg.data.multimodal
    if mm is None:
        return
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
    schedule = cfg.data.multimodal.schedule
    if schedule is not None:
        return schedule
    if cfg.phase not in PHASE_MIXES:
        raise ConfigError(f"data.multimodal.schedule is null and phase={cfg.phase} has no "
                          f"default mix (phases {sorted(PHASE_MIXES)} have); give one, e.g. "
                          "{mix: {text: 0.5, cross_modal: 0.5}}")
    return {"phase": cfg.phase}
