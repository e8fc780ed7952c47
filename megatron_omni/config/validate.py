"""Every check of a configuration that needs no model, run before anything is built: by the
trainer (training/trainer.py) and by ``launch/pretrain_omni.py --dry-run``, so both refuse the
same configs with the same message. Each message names the field(s) and a valid value. Choice
fields (``Literal`` in schema.py) are checked when the config loads (load.py)."""
from __future__ import annotations

from megatron_omni.config.load import ConfigError
from megatron_omni.config.phases import GROUPS, PHASES, check_phase_runnable, model_groups
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_inputs import validate_held_out, validate_inputs
from megatron_omni.config.validate_model import validate_model, validate_sizes
from megatron_omni.config.validate_omni import validate_multimodal, validate_omni
from megatron_omni.config.validate_parallel import validate_parallel
from megatron_omni.config.validate_rl import validate_rl, validate_rl_inputs


def validate(cfg: OmniConfig, world_size: int, check_inputs: bool = False) -> int:
    """Check cfg for a job of `world_size` ranks; returns the derived data-parallel size.

    ``check_inputs`` also checks what the run reads (config/validate_inputs.py: the tokenizer,
    data files, validation data, checkpoint.load): the trainer does, and so does the launcher's
    --dry-run unless --layout-only; without it the layout and values alone are checked (e.g. a
    plan-scale example on a machine without its data)."""
    if cfg.phase not in PHASES:
        raise ConfigError(f"phase={cfg.phase} is not a phase of the plan; use one of 1-6")
    validate_sizes(cfg)
    dp = validate_parallel(cfg, world_size)
    _validate_optimizer(cfg)
    _validate_schedule(cfg)
    _validate_groups(cfg)
    _validate_intervals(cfg)
    validate_model(cfg)
    validate_omni(cfg)
    validate_multimodal(cfg)
    validate_held_out(cfg)
    _validate_distill(cfg)
    check_phase_runnable(cfg.phase, cfg.model.omni is not None)
    validate_rl(cfg, dp)  # phase 6: GRPO, or DPO (config/validate_dpo.py)
    if check_inputs:
        validate_inputs(cfg)
        validate_rl_inputs(cfg)
    return dp


def _validate_optimizer(cfg: OmniConfig) -> None:
    t = cfg.training
    if not t.lr > 0:
        raise ConfigError(f"training.lr={t.lr} must be > 0, e.g. lr=3e-4")
    if t.min_lr < 0:
        raise ConfigError(f"training.min_lr={t.min_lr} must be >= 0 (the end of the decay), e.g. "
                          f"min_lr={t.lr / 10:g}")
    if t.min_lr > t.lr:
        raise ConfigError(f"training.min_lr={t.min_lr} exceeds training.lr={t.lr}; use "
                          f"min_lr <= lr, e.g. min_lr={t.lr / 10:g}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(t, name) < 1:
            raise ConfigError(f"training.{name}={getattr(t, name)} must be in [0, 1), e.g. "
                              f"{getattr(type(t)(), name)}")
    if not t.adam_eps > 0:
        raise ConfigError(f"training.adam_eps={t.adam_eps} must be > 0, e.g. 1e-8")
    for name in ("weight_decay", "clip_grad"):
        if getattr(t, name) < 0:
            raise ConfigError(f"training.{name}={getattr(t, name)} must be >= 0 (0 = off), e.g. "
                              f"{getattr(type(t)(), name)}")


def _validate_schedule(cfg: OmniConfig) -> None:
    t = cfg.training
    if t.train_steps < 1:
        raise ConfigError(f"training.train_steps={t.train_steps} must be >= 1")
    if t.lr_decay_steps is not None and t.lr_decay_steps < 1:
        raise ConfigError(f"training.lr_decay_steps={t.lr_decay_steps} must be >= 1, or null "
                          "(= train_steps)")
    if t.warmup_steps < 0:
        raise ConfigError(f"training.warmup_steps={t.warmup_steps} must be >= 0")
    if t.num_epochs is not None and t.num_epochs < 1:
        raise ConfigError(f"training.num_epochs={t.num_epochs} must be >= 1, or null (= train_steps)")
    if t.num_epochs is not None and cfg.model.omni is None:
        raise ConfigError("training.num_epochs needs model.omni (the text data is sampled, not "
                          "finite); set training.num_epochs=null and training.train_steps")
    if t.warmup_ratio is not None:
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"training.warmup_ratio={t.warmup_ratio} must be in [0, 1), e.g. 0.03")
        return  # warmup_steps follows from it once train_steps is known (training/trainer.py)
    decay = t.lr_decay_steps or t.train_steps
    if t.warmup_steps >= decay:
        raise ConfigError(
            f"training.warmup_steps={t.warmup_steps} must be smaller than the decay length "
            f"(training.lr_decay_steps, or train_steps when null) = {decay}; "
            f"use warmup_steps={max(0, decay // 10)}")


def _validate_groups(cfg: OmniConfig) -> None:
    t = cfg.training
    if t.trainable is not None:
        unknown = [g for g in t.trainable if g not in GROUPS]
        if unknown or not t.trainable:
            raise ConfigError(f"training.trainable={t.trainable}: use a non-empty list of "
                              f"{', '.join(GROUPS)} (or null to train everything)")
        have = model_groups(cfg.model)
        missing = [g for g in t.trainable if g not in have]
        if missing:
            raise ConfigError(f"training.trainable={t.trainable}: this model has no parameters in "
                              f"{missing}; list only parts it has: {', '.join(g for g in GROUPS if g in have)}")
    if t.group_lr is not None:
        bad = {g: v for g, v in t.group_lr.items()
               if g not in GROUPS or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0}
        if bad:
            raise ConfigError(f"training.group_lr has {bad}: use positive learning rates keyed by "
                              f"{', '.join(GROUPS)}, e.g. {{vision_encoder: 1e-5, projectors: 1e-4}}")


def _validate_intervals(cfg: OmniConfig) -> None:
    """Intervals, counts and worker numbers (0 means off where the field says so)."""
    t = cfg.training
    at_least = [("training.eval_interval", t.eval_interval, 0),
                ("training.eval_steps", t.eval_steps, 1 if t.eval_interval else 0),
                ("logging.log_interval", cfg.logging.log_interval, 1),
                ("checkpoint.save_interval", cfg.checkpoint.save_interval, 0),
                ("checkpoint.keep_last", cfg.checkpoint.keep_last, 0),
                ("data.num_workers", cfg.data.num_workers, 0)]
    for name, value, low in at_least:
        if value < low:
            raise ConfigError(f"{name}={value} must be >= {low}, e.g. {name}={max(low, 1)}")


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
