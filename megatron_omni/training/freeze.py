"""Which parameters train: named groups of modules, frozen before megatron's DDP wraps the model.

Every parameter belongs to one group: the `trainable_group` attribute of the innermost module
that holds it and declares one, else "llm". Modules declare their group as a class attribute
(e.g. the Lightning attention says "linear_attention"; the omni model's encoders and projectors
say theirs). `training.trainable` lists the groups that train; null trains everything.

Frozen parameters get requires_grad=False before the DDP wrap, so megatron's DDP gives them no
gradient buffer and get_megatron_optimizer leaves them out: they stay bit-identical.
"""
from __future__ import annotations

import torch
from megatron.core.optimizer import ParamGroupOverride, ParamKey, get_standard_config_overrides
from megatron.core.optimizer.optimizer_config import ParamPredicate

from megatron_omni.config.load import ConfigError

DEFAULT_GROUP = "llm"


def parameter_groups(module: torch.nn.Module) -> dict[str, str]:
    """{parameter name: group} for every parameter of module (names as named_parameters)."""
    groups: dict[str, str] = {}

    def visit(mod: torch.nn.Module, prefix: str, group: str) -> None:
        group = getattr(mod, "trainable_group", group)
        for name, param in mod.named_parameters(recurse=False):
            groups.setdefault(prefix + name, group)
        for name, child in mod.named_children():
            visit(child, f"{prefix}{name}.", group)

    visit(module, "", DEFAULT_GROUP)
    return groups


def apply_trainable(module: torch.nn.Module, trainable: list[str] | None) -> dict[str, int]:
    """Freeze every parameter of module outside the `trainable` groups (None: train all) and
    tag each parameter with its group (``param.trainable_group``). Returns {group: parameter
    count on this rank} of what stays trainable."""
    counts: dict[str, int] = {}
    params = dict(module.named_parameters())
    for name, group in parameter_groups(module).items():
        train = trainable is None or group in trainable
        params[name].requires_grad_(train)
        params[name].trainable_group = group  # read by the optimizer's per-group learning rates
        if train:
            counts[group] = counts.get(group, 0) + params[name].numel()
    return counts


def check_something_trains(counts_per_rank: list[dict[str, int]], trainable: list[str] | None) -> None:
    """After apply_trainable on every rank (counts gathered over the world): each listed group
    must hold parameters somewhere, else the config names a part the model does not have."""
    if trainable is None:
        return
    present = {g for counts in counts_per_rank for g in counts}
    missing = [g for g in trainable if g not in present]
    if missing:
        raise ConfigError(f"training.trainable={trainable}: the model has no parameters in "
                          f"{missing}; list only parts this model has")


def group_lr_overrides(opt_config, group_lr: dict[str, float] | None) -> dict:
    """megatron-core optimizer ``config_overrides``: its standard ones (no weight decay on biases
    and 1-D parameters) plus, per group of ``group_lr``, a peak learning rate (``max_lr``) that
    decays to ``peak * min_lr / lr``; OptimizerParamScheduler schedules each param group from
    its own max_lr/min_lr. Parameters are matched by the tag apply_trainable sets."""
    overrides = get_standard_config_overrides(opt_config)
    for group, peak in (group_lr or {}).items():
        key = ParamKey(predicate=ParamPredicate(
            name=f"trainable_group={group}", fn=lambda p, g=group: getattr(p, "trainable_group", None) == g))
        overrides[key] = ParamGroupOverride(max_lr=float(peak), min_lr=float(peak) * opt_config.min_lr / opt_config.lr)
    return overrides
