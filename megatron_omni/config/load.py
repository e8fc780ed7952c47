"""YAML + ``--set a.b=c`` overrides → OmniConfig, with errors that name the field.

Every value is checked against its field's type annotation: int, float, bool, str, list, dict,
a nested dataclass, ``X | None``, and ``Literal[...]`` (a choice field: the error lists the
choices)."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from megatron_omni.config.presets import MODEL_PRESETS, OMNI_PRESETS
from megatron_omni.config.schema import OmniConfig


class ConfigError(ValueError):
    """A configuration problem; the message names the field(s) and a valid alternative."""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> OmniConfig:
    """Read YAML (or start from defaults when path is None), apply overrides, build dataclasses.

    Overrides are ``section.field=value`` strings; values are parsed as YAML scalars/lists
    (``training.lr=1e-4``, ``data.train_blend=[0.5,a,0.5,b]``, ``parallel.vpp=null``).
    """
    raw: dict = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        *parents, leaf = key.strip().split(".")
        if not sep or not all([*parents, leaf]):
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        node = raw
        for p in parents:
            if node.get(p) is None:  # an absent or empty (null) section
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
        node[leaf] = yaml.safe_load(value)
    model = raw.get("model") or {}
    if isinstance(model, dict):
        preset = model.get("preset", "tiny")
        if not isinstance(preset, str) or preset not in MODEL_PRESETS:
            raise ConfigError(f"model.preset={preset!r} is unknown; use one of {sorted(MODEL_PRESETS)}")
        raw["model"] = {**MODEL_PRESETS[preset], **model}
        omni = model.get("omni")
        if isinstance(omni, dict):
            name = omni.get("preset", "tiny")
            if not isinstance(name, str) or name not in OMNI_PRESETS:
                raise ConfigError(f"model.omni.preset={name!r} is unknown; use one of {sorted(OMNI_PRESETS)}")
            raw["model"]["omni"] = {**OMNI_PRESETS[name], **omni}
    return _build(OmniConfig, raw, "")


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict) -> OmniConfig:
    """The inverse of config_to_dict (e.g. the config stored in a checkpoint)."""
    return _build(OmniConfig, data, "")


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid fields: {sorted(fields)}"
            raise ConfigError(f"unknown field {prefix}{key}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp, value, name: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, name + ".")
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{name} may not be null")
    for option in options:
        base = typing.get_origin(option) or option
        if base is type(None):
            continue
        if base is typing.Literal:
            if any(value == choice and type(value) is type(choice) for choice in typing.get_args(option)):
                return value
            continue
        if dataclasses.is_dataclass(base):
            if isinstance(value, dict):
                return _build(base, value, name + ".")
        elif base is bool:
            if isinstance(value, bool):
                return value
        elif base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
        elif base is str:
            if isinstance(value, str):
                return value
        elif base is list:
            if isinstance(value, list):
                return value
        elif base is dict:
            if isinstance(value, dict):
                return value
    literals = [o for o in options if typing.get_origin(o) is typing.Literal]
    if literals:  # a choice field
        words = ["null"] * (type(None) in options) + [str(c) for o in literals for c in typing.get_args(o)]
        raise ConfigError(f"{name}={value!r}; use {', '.join(words[:-1])} or {words[-1]}")
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{name}={value!r} has the wrong type; expected {expected}")
