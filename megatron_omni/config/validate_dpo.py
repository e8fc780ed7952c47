"""Checks of the dpo section and of a phase-6 run (config/schema.py DpoConfig), called by
config/validate.py; each message names the field and a valid value."""
from __future__ import annotations

from pathlib import Path

from megatron_omni.config.load import ConfigError
from megatron_omni.config.mixes import Schedule
from megatron_omni.config.schema import OmniConfig


def validate_dpo(cfg: OmniConfig, dp: int) -> None:
    d = cfg.dpo
    given = [name for name in ("reference", "reference_logprobs") if getattr(d, name)]
    if cfg.phase != 6:
        if given:
            raise ConfigError(f"dpo.{given[0]} is set but phase={cfg.phase}: preference training is "
                              f"phase 6; use phase=6 or dpo.{given[0]}=null")
        return
    if not d.beta > 0:
        raise ConfigError(f"dpo.beta={d.beta} must be > 0, e.g. 0.1")
    if not 0 <= d.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing={d.label_smoothing} must be in [0, 0.5), e.g. 0.0")
    if d.label_smoothing and d.loss_type != "sigmoid":
        raise ConfigError(f"dpo.label_smoothing={d.label_smoothing} applies to loss_type=sigmoid, not "
                          f"{d.loss_type}; set dpo.label_smoothing=0")
    if d.sft_weight < 0:
        raise ConfigError(f"dpo.sft_weight={d.sft_weight} must be >= 0 (0 = off)")
    if len(given) != 1:
        raise ConfigError("phase 6 needs exactly one of dpo.reference (a checkpoint) and "
                          "dpo.reference_logprobs (a precomputed table's name); "
                          + ("both are set" if given else "neither is set"))
    if cfg.model.omni is None or cfg.data.multimodal is None:
        raise ConfigError("phase 6 trains the omni model on prepared preference pairs: set model.omni "
                          "and data.multimodal (the pairs' folders under one modality of its schedule)")
    from megatron_omni.config.validate_omni import schedule_config

    modalities = Schedule.from_config(schedule_config(cfg)).modalities
    if len(modalities) != 1:
        raise ConfigError(f"data.multimodal.schedule draws {sorted(modalities)}; phase 6 reads the "
                          "pairs of one modality's folders, e.g. {mix: {cross_modal: 1.0}}")
    t = cfg.training
    if t.micro_batch_size % 2:
        raise ConfigError(f"training.micro_batch_size={t.micro_batch_size} must be even in phase 6 "
                          "(the rows of whole pairs: chosen and rejected)")
    if (t.global_batch_size // 2) % dp:
        raise ConfigError(f"training.global_batch_size={t.global_batch_size} holds "
                          f"{t.global_batch_size // 2} pairs, not divisible by the {dp} data-parallel "
                          "ranks")
    if cfg.data.multimodal.packing:
        raise ConfigError("data.multimodal.packing=true: phase 6 puts one response per row; set "
                          "data.multimodal.packing=false")


def validate_dpo_inputs(cfg: OmniConfig) -> None:
    """The reference checkpoint or, per preference folder, its precomputed table exists."""
    d = cfg.dpo
    if cfg.phase != 6:
        return
    if d.reference is not None and not Path(d.reference).exists():
        raise ConfigError(f"dpo.reference={d.reference} does not exist; give a run or checkpoint folder")
    if d.reference_logprobs is not None:
        from megatron_omni.config.validate_omni import schedule_config

        (modality,) = Schedule.from_config(schedule_config(cfg)).modalities
        for folder in getattr(cfg.data.multimodal, modality):
            if not (Path(folder) / d.reference_logprobs).is_file():
                raise ConfigError(f"dpo.reference_logprobs={d.reference_logprobs}: {folder} has no such "
                                  "file; write it with launch/precompute_ref_logprobs.py")
