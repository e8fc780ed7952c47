"""The six phases of the plan (seed sections 3 and 7.1) and what this build can run of them."""
from __future__ import annotations

from megatron_omni.config.load import ConfigError

PHASES = {
    1: ("adapter alignment", "projectors only (LLM and encoders frozen)"),
    2: ("encoder finetune", "encoders + projectors (LLM frozen)"),
    3: ("joint pretraining", "all parameters"),
    4: ("long context", "all parameters, long sequences"),
    5: ("SFT", "all parameters on conversations with loss masks"),
    6: ("preference", "all parameters on preference pairs (DPO)"),
}
TEXT_PHASES = {3, 4}
"""Phases that run on the text-only LLM: its pretraining and long-context continuation."""


def check_phase_runnable(phase: int) -> str:
    """The phase's name; a clear error for phases that need parts this build does not have yet."""
    name, trains = PHASES[phase]
    if phase not in TEXT_PHASES:
        raise ConfigError(
            f"phase={phase} ({name}: trains {trains}) needs the omni model (vision/audio encoders, "
            "projectors, multimodal data), which this build does not have yet; phases 3 and 4 "
            "run the text-only LLM")
    return name
