"""The six phases of the plan (seed sections 3 and 7.1), what this build can run of them, and the
parameter groups that train in each (training/freeze.py freezes the rest)."""
from __future__ import annotations

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import ModelConfig

PHASES = {
    1: ("adapter alignment", "projectors only (LLM and encoders frozen)"),
    2: ("encoder finetune", "encoders + projectors (LLM frozen)"),
    3: ("joint pretraining", "all parameters"),
    4: ("long context", "all parameters, long sequences"),
    5: ("SFT", "all parameters on conversations with loss masks"),
    6: ("preference", "all parameters on preference pairs (DPO)"),
}
GROUPS = ("llm", "linear_attention", "vision_encoder", "audio_encoder", "projectors")
"""Every group a parameter can belong to (training/freeze.py: a module's `trainable_group`)."""
TEXT_PHASES = {3, 4}
"""Phases that run on the text-only LLM: its pretraining and long-context continuation."""
OMNI_PHASES = {1, 2, 3, 4, 5, 6}
"""Phases that run the omni model (model.omni set); phase 4 with model.omni is the long-context
omni run and its hybrid distillation (training/distill.py)."""
DEFAULT_TRAINABLE = {1: ["projectors"], 2: ["vision_encoder", "audio_encoder", "projectors"]}
"""training.trainable when the config leaves it null; other phases train everything."""


def check_phase_runnable(phase: int, omni: bool = False) -> str:
    """The phase's name; a clear error for a phase this model (text LLM, or omni when
    ``omni``) cannot run."""
    name, trains = PHASES[phase]
    if omni and phase not in OMNI_PHASES:
        raise ConfigError(f"phase={phase} ({name}) runs the text-only LLM; set model.omni=null")
    if not omni and phase not in TEXT_PHASES:
        raise ConfigError(f"phase={phase} ({name}: trains {trains}) needs the omni model; set "
                          "model.omni (e.g. --set model.omni.preset=tiny)")
    return name


def trainable_groups(phase: int, trainable: list[str] | None) -> list[str] | None:
    """The parameter groups that train: training.trainable, else the phase's default."""
    return trainable if trainable is not None else DEFAULT_TRAINABLE.get(phase)


def model_groups(model: ModelConfig) -> set[str]:
    """The groups a model of this config has parameters in: the LLM's, the Lightning layers'
    ('L' in model.layer_pattern) and, with model.omni, the encoders' and the projectors'."""
    groups = {"llm"}
    if "L" in model.layer_types():
        groups.add("linear_attention")
    if model.omni is not None:
        groups |= {"vision_encoder", "audio_encoder", "projectors"}
    return groups
