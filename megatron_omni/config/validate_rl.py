"""Checks of the rl section and of what phase 6 runs (config/schema.py RlConfig): GRPO when
rl.grpo, else DPO (config/validate_dpo.py). Called by config/validate.py; each message names
the field and a valid value."""
from __future__ import annotations

from pathlib import Path

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_dpo import validate_dpo, validate_dpo_inputs

REWARD_NAMES = ("accuracy", "format", "repetition")
"""The reward functions of rl/rewards.py REWARDS (tests/rl/test_rewards.py keeps them equal)."""


def validate_rl(cfg: OmniConfig, dp: int) -> None:
    """The rl section; the dpo section when phase 6 runs DPO."""
    r = cfg.rl
    if not r.grpo:
        validate_dpo(cfg, dp)
        return
    if cfg.phase != 6:
        raise ConfigError(f"rl.grpo=true but phase={cfg.phase}: GRPO is phase 6; use phase=6 or "
                          "rl.grpo=false")
    dpo_given = [name for name in ("reference", "reference_logprobs") if getattr(cfg.dpo, name)]
    if dpo_given:
        raise ConfigError(f"rl.grpo=true with dpo.{dpo_given[0]} set: a run trains either GRPO or DPO "
                          f"(both in one step is not supported yet); set dpo.{dpo_given[0]}=null or "
                          "rl.grpo=false")
    if cfg.model.omni is None:
        raise ConfigError("rl.grpo trains the omni model; set model.omni (e.g. model.omni.preset=tiny)")
    at_least = [("prompts_per_step", 1), ("group_size", 2), ("max_new_tokens_short", 1),
                ("max_new_tokens_long", 1), ("repetition_ngram", 1), ("inner_steps", 1)]
    for name, low in at_least:
        if getattr(r, name) < low:
            raise ConfigError(f"rl.{name}={getattr(r, name)} must be >= {low}, e.g. "
                              f"{max(low, getattr(type(r)(), name))}")
    positive = ["temperature", "advantage_eps"]
    for name in positive:
        if not getattr(r, name) > 0:
            raise ConfigError(f"rl.{name}={getattr(r, name)} must be > 0, e.g. {getattr(type(r)(), name)}")
    if not 0 <= r.long_ratio <= 1:
        raise ConfigError(f"rl.long_ratio={r.long_ratio} must be in [0, 1], e.g. 0.5 (half long mode)")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rl.top_p={r.top_p} must be in (0, 1], e.g. 1.0 (no nucleus cut)")
    if not 0 <= r.clip_low < 1:
        raise ConfigError(f"rl.clip_low={r.clip_low} must be in [0, 1), e.g. 0.2")
    if r.clip_high < 0:
        raise ConfigError(f"rl.clip_high={r.clip_high} must be >= 0, e.g. 0.2")
    if r.kl_coef < 0:
        raise ConfigError(f"rl.kl_coef={r.kl_coef} must be >= 0 (0 = no reference), e.g. 0.04")
    if r.kl_coef > 0 and r.reference is None:
        raise ConfigError(f"rl.kl_coef={r.kl_coef} needs rl.reference (the frozen model's checkpoint, "
                          "usually checkpoint.load); set it, or rl.kl_coef=0")
    _validate_rewards(r.rewards)
    _validate_batch(cfg, dp)


def _validate_rewards(rewards: dict) -> None:
    bad = {k: v for k, v in rewards.items()
           if k not in REWARD_NAMES or isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad or not rewards:
        raise ConfigError(f"rl.rewards={rewards}: use numeric weights keyed by {', '.join(REWARD_NAMES)}, "
                          "e.g. {accuracy: 1.0, format: 0.5, repetition: 0.5}")


def _validate_batch(cfg: OmniConfig, dp: int) -> None:
    r, t = cfg.rl, cfg.training
    rows = r.prompts_per_step * r.group_size
    if t.global_batch_size != rows:
        raise ConfigError(f"training.global_batch_size={t.global_batch_size} must equal "
                          f"rl.prompts_per_step x rl.group_size = {rows} (one response per row)")
    if r.prompts_per_step % dp:
        raise ConfigError(f"rl.prompts_per_step={r.prompts_per_step} is not divisible by the {dp} "
                          "data-parallel ranks (each prompt's group stays on one rank)")
    longest = max(r.max_new_tokens_short if r.long_ratio < 1 else 0,
                  r.max_new_tokens_long if r.long_ratio > 0 else 0)
    if longest >= cfg.data.seq_length:
        raise ConfigError(f"data.seq_length={cfg.data.seq_length} leaves no room for a prompt beside "
                          f"{longest} new tokens (rl.max_new_tokens_*); raise data.seq_length or lower "
                          "them")


def validate_rl_inputs(cfg: OmniConfig) -> None:
    """The files GRPO reads (prompts, reference) exist; DPO's when phase 6 runs DPO."""
    r = cfg.rl
    if not r.grpo:
        validate_dpo_inputs(cfg)
        return
    for name in ("prompts", "reference"):
        value = getattr(r, name)
        if value is not None and not Path(value).exists():
            raise ConfigError(f"rl.{name}={value} does not exist")
