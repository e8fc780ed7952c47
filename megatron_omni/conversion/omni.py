"""Hugging Face folders → a weights-only megatron omni checkpoint (iteration 0), to start omni
training from released weights (``checkpoint.load=<out>`` at any TP/PP; dist_checkpointing
reshards).

Sources: an HF Qwen3 folder for the LLM (conversion/qwen3.py), a SigLIP folder
(``SiglipVisionModel`` or a full ``SiglipModel``) for the vision encoder (siglip.py) and a Whisper
folder (``WhisperEncoder``, ``WhisperModel`` or ``WhisperForConditionalGeneration``) for the audio
encoder (whisper.py). The projectors, which have no source, keep the model's own initialisation
(seeded by training.seed).

The model section is derived from the HF configs: the LLM's shapes (model_overrides_from_hf) and
each encoder as ``model.omni.vision`` / ``audio`` = a preset it equals, else the configured
preset with ``*_overrides`` for the fields that differ. Where the user's config pins a part (a
``--config`` file pins all; a ``--set`` of its fields pins that part), the folder must match it:
ConversionError names the folder, each differing field and both values.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_omni.config import OmniConfig, load_config
from megatron_omni.config.schema import OmniModelConfig
from megatron_omni.conversion import qwen3, siglip, whisper
from megatron_omni.conversion.checkpoints import plain_state, single_rank_config
from megatron_omni.conversion.common import ConversionError, load_full_state_dict, staged_folder
from megatron_omni.config.encoders import AUDIO_PRESETS, VISION_PRESETS, AudioEncoderConfig, VisionEncoderConfig
from megatron_omni.config import encoders
from megatron_omni.training import checkpoint

LLM_FIELDS = checkpoint.MODEL_SHAPE_FIELDS + ("rope_theta", "rope_scaling_factor", "norm_eps")
"""ModelConfig fields an HF Qwen3 config decides that a run config is checked against."""
_PINS = {"llm": ("model.preset", "model.vocab_size") + tuple(f"model.{f}" for f in LLM_FIELDS),
         "vision": ("model.omni.preset", "model.omni.vision", "model.omni.vision_overrides"),
         "audio": ("model.omni.preset", "model.omni.audio", "model.omni.audio_overrides")}
"""--set keys that pin a part to the user's config."""


@dataclasses.dataclass
class OmniSources:
    """The three HF folders, read: state dicts and the configs they imply."""

    llm_state: dict[str, torch.Tensor]
    llm_fields: dict
    vision_state: dict[str, torch.Tensor]
    vision: VisionEncoderConfig
    audio_state: dict[str, torch.Tensor]
    audio: AudioEncoderConfig


def read_sources(llm: str | Path, vision: str | Path, audio: str | Path) -> OmniSources:
    """Read the folders; ConversionError names the flag and folder that is not what it should be."""
    parts = {}
    for flag, path, reader in (("--llm", llm, qwen3.load_hf_folder), ("--vision", vision, siglip.load_hf_folder),
                               ("--audio", audio, whisper.load_hf_folder)):
        try:
            parts[flag] = reader(path)
        except ConversionError as e:
            raise ConversionError(f"{flag} {path}: {e}") from e
    llm_state, llm_cfg = parts["--llm"]
    return OmniSources(llm_state, qwen3.model_overrides_from_hf(llm_cfg), *parts["--vision"], *parts["--audio"])


def _encoder_setting(found, presets: dict, named: str) -> tuple[str, dict | None]:
    """(preset name, overrides) spelling the encoder config ``found``."""
    if presets.get(named) == found:
        return named, None
    for name, preset in presets.items():
        if preset == found:
            return name, None
    base = presets[named]
    return named, {f.name: getattr(found, f.name) for f in dataclasses.fields(found)
                   if getattr(found, f.name) != getattr(base, f.name)}


def _mismatch(flag: str, path, what: str, found: dict, expected: dict, hint: str) -> None:
    diff = [f"{k}: folder {found[k]!r} vs config {expected[k]!r}" for k in expected if found[k] != expected[k]]
    if diff:
        raise ConversionError(f"{flag} {path}: the {what} does not match the config ({hint}): " + "; ".join(diff))


def derive_config(base: OmniConfig, src: OmniSources, pinned: set[str], folders: dict[str, str]) -> OmniConfig:
    """``base`` with its model section taken from the HF configs; the parts in ``pinned``
    (llm, vision, audio) must already match them (ConversionError otherwise)."""
    model, omni = base.model, base.model.omni
    if "llm" in pinned:
        fields = LLM_FIELDS + (("vocab_size",) if model.vocab_size is not None else ())
        _mismatch("--llm", folders["llm"], "Qwen3 LLM", src.llm_fields,
                  {f: getattr(model, f) for f in fields}, f"model.preset={model.preset}")
    same_shape = all(src.llm_fields[f] == getattr(model, f) for f in LLM_FIELDS)
    model = dataclasses.replace(model, **src.llm_fields, preset=model.preset if same_shape else "custom")
    for part, found, presets in (("vision", src.vision, VISION_PRESETS), ("audio", src.audio, AUDIO_PRESETS)):
        expected = getattr(encoders, f"{part}_config")(omni)
        if part in pinned:
            _mismatch(f"--{part}", folders[part], f"{part} encoder", dataclasses.asdict(found),
                      dataclasses.asdict(expected),
                      f"model.omni.{part}={getattr(omni, part)}, "
                      f"{part}_overrides={getattr(omni, part + '_overrides')}")
        name, overrides = _encoder_setting(found, presets, getattr(omni, part))
        omni = dataclasses.replace(omni, **{part: name, f"{part}_overrides": overrides})
    return dataclasses.replace(base, model=dataclasses.replace(model, omni=omni))


def model_sets(cfg: OmniConfig) -> list[str]:
    """``--set`` strings that give a run this model section (LLM shapes, encoder presets)."""
    m, o = cfg.model, cfg.model.omni
    sets = [f"model.{f}={getattr(m, f)}" for f in LLM_FIELDS + ("vocab_size",)]
    for part in ("vision", "audio"):
        overrides = getattr(o, f"{part}_overrides")
        sets.append(f"model.omni.{part}={getattr(o, part)}")
        sets.append(f"model.omni.{part}_overrides=" + (
            "{" + ", ".join(f"{k}: {v}" for k, v in overrides.items()) + "}" if overrides else "null"))
    return sets


def hf_folders_to_omni(llm: str | Path, vision: str | Path, audio: str | Path, out_root: str | Path,
                       config: str | Path | None = None, sets: list[str] = ()) -> dict:
    """Save a weights-only omni checkpoint (iteration 0) under ``out_root`` from the three HF
    folders; the rest of the config (projectors, seed, ...) from ``config`` (a run's YAML, which
    also pins the model section) and ``sets``. Needs a process group (``platform.init_distributed``).

    Returns a summary: the checkpoint folder, tensors imported per part, the freshly initialised
    keys, and the ``--set`` strings of the derived model section.
    """
    from megatron.core import parallel_state as ps, tensor_parallel

    from megatron_omni.models.omni.model import OmniModel

    keys = [s.partition("=")[0].strip() for s in sets]
    pinned = {part for part, pins in _PINS.items() if config is not None or any(k in pins for k in keys)}
    base = load_config(config, list(sets))
    if base.model.omni is None:
        base = dataclasses.replace(base, model=dataclasses.replace(base.model, omni=OmniModelConfig()))
    src = read_sources(llm, vision, audio)
    folders = {"llm": str(llm), "vision": str(vision), "audio": str(audio)}
    derived = derive_config(base, src, pinned, folders)
    dtype = str(next(iter(src.llm_state.values())).dtype).removeprefix("torch.")
    cfg = single_rank_config(derived, dtype)
    vocab_size = cfg.model.vocab_size
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    torch.manual_seed(cfg.training.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    # placeholder ids only steer the forward's merge; they are not part of the weights
    model = OmniModel(cfg, vocab_size, {"image": 0, "video": 0, "audio": 0})
    fresh = set(plain_state(model))
    imported = {}
    llm_state = qwen3.hf_to_megatron(src.llm_state, cfg.model)
    missing, unexpected = model.llm.load_state_dict(llm_state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ConversionError(f"--llm {llm}: the LLM import left parameters unset: missing {missing}, "
                              f"unexpected {unexpected}")
    imported["llm"] = len(llm_state)
    fresh -= {f"llm.{k}" for k in llm_state}
    for part, state in (("vision", siglip.hf_to_megatron(src.vision_state, src.vision)),
                        ("audio", whisper.hf_to_megatron(src.audio_state, src.audio))):
        module = getattr(model, f"{part}_encoder")
        load_full_state_dict(module, state)
        imported[f"{part}_encoder"] = len(state)
        fresh -= {f"{part}_encoder.{k}" for k in state}
    with staged_folder(out_root) as tmp:
        path = checkpoint.save_checkpoint(tmp, 0, [model], 0, dataclasses.asdict(cfg), vocab_size)
    return {"checkpoint": str(Path(out_root) / path.name), "imported": imported, "fresh": sorted(fresh),
            "model_sets": model_sets(derived)}
