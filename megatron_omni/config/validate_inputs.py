"""Checks of what a run reads: the tokenizer, the text or omni data, the validation data and the
checkpoints it starts from. ``validate(..., check_inputs=True)`` runs them (the trainer, and
``launch/pretrain_omni.py --dry-run`` unless ``--layout-only``); paths are relative to the
working directory of the run, as the trainer opens them. `validate_held_out` (the shape of
data.multimodal.valid, no files) runs in every ``validate``."""
from __future__ import annotations

from pathlib import Path

from megatron_omni.config.load import ConfigError
from megatron_omni.config.mixes import Schedule
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_omni import schedule_config
from megatron_omni.contract.batch import MODALITIES

TOKENIZER_SUFFIXES = (".model", ".json")
"""A SentencePiece model or a Hugging Face tokenizer.json (data/tokenizer.py load_tokenizer)."""


def validate_inputs(cfg: OmniConfig) -> None:
    _validate_tokenizer(cfg)
    if cfg.model.omni is None:
        check_blend(cfg.data.train_blend, "data.train_blend")
        if cfg.data.valid_blend is not None:
            check_blend(cfg.data.valid_blend, "data.valid_blend")
    elif cfg.data.multimodal is not None:
        _validate_multimodal_sources(cfg)
    _validate_validation_data(cfg)
    for name, path in (("checkpoint.load", cfg.checkpoint.load), ("distill.teacher", cfg.distill.teacher)):
        if path is not None and not Path(path).is_dir():
            raise ConfigError(f"{name}={path} does not exist; give a run folder or one of its "
                              f"iter_NNNNNNN checkpoint folders, or {name}=null")


def _validate_tokenizer(cfg: OmniConfig) -> None:
    path = cfg.data.tokenizer
    if path is None:
        raise ConfigError("data.tokenizer is not set; give a sentencepiece .model or a tokenizer.json, "
                          "e.g. data.tokenizer=hf/Qwen3-0.6B/tokenizer.json")
    if Path(path).suffix not in TOKENIZER_SUFFIXES:
        raise ConfigError(f"data.tokenizer={path} is neither a sentencepiece .model nor a "
                          "tokenizer.json; give one of those files")
    if not Path(path).is_file():
        raise ConfigError(f"data.tokenizer={path} does not exist; give an existing sentencepiece "
                          ".model or tokenizer.json")


def _validate_multimodal_sources(cfg: OmniConfig) -> None:
    """Each source of a modality the mix draws, and of data.multimodal.valid, exists: a folder or
    an indexed-binary prefix (the loader then checks that a folder is a prepared one)."""
    mm = cfg.data.multimodal
    fields = [(m, getattr(mm, m)) for m in Schedule.from_config(schedule_config(cfg)).modalities]
    fields += [(f"valid.{m}", paths) for m, paths in mm.valid.items()]
    for name, paths in fields:
        for i, path in enumerate(paths):
            if not (Path(path).is_dir() or all(Path(f"{path}{ext}").is_file() for ext in (".bin", ".idx"))):
                raise ConfigError(f"data.multimodal.{name}[{i}]={path} does not exist; give a prepared "
                                  "folder (data_prep/multimodal) or an indexed-binary prefix with "
                                  ".bin/.idx (data_prep/preprocess_text.py)")


def validate_held_out(cfg: OmniConfig) -> None:
    """data.multimodal.valid: a mapping from mix modalities (contract/batch.py MODALITIES) to
    non-empty lists of held-out sources (their files are checked with the inputs)."""
    mm = cfg.data.multimodal
    if mm is None:
        return
    example = "e.g. {text: [data/held_out/text], image_text: [data/held_out/images]}"
    unknown = sorted(set(mm.valid) - set(MODALITIES), key=str)
    if unknown:
        raise ConfigError(f"data.multimodal.valid has unknown modalities {unknown}; its keys are mix "
                          f"modalities ({', '.join(MODALITIES)}), {example}")
    for m, paths in mm.valid.items():
        if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
            raise ConfigError(f"data.multimodal.valid.{m}={paths!r} must be a non-empty list of held-out "
                              f"prepared folders or indexed-binary prefixes, {example}")


def check_blend(blend: list, name: str) -> None:
    """[prefix] or [weight1, prefix1, ...] with positive weights, each prefix with .bin and .idx."""
    if not blend:
        raise ConfigError(f"{name} is empty; give [prefix] or [weight1, prefix1, weight2, prefix2, ...]")
    prefixes = blend if len(blend) == 1 else blend[1::2]
    weights = [] if len(blend) == 1 else blend[0::2]
    if len(blend) > 1 and (len(blend) % 2 or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights)):
        raise ConfigError(f"{name}={blend}: expected alternating positive weights and prefixes, "
                          "e.g. [0.7, data/a_text_document, 0.3, data/b_text_document]")
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if not Path(f"{prefix}{ext}").is_file():
                raise ConfigError(f"{name}: {prefix}{ext} does not exist (prefix = path without .bin/.idx; "
                                  "make it with data_prep/preprocess_text.py)")


def _validate_validation_data(cfg: OmniConfig) -> None:
    """data.split when it splits train_blend, and training.eval_interval > 0 needs validation
    data (when it falls within train_steps): data.valid_blend or a validation share of data.split
    (text), data.multimodal.valid (omni)."""
    t, d = cfg.training, cfg.data
    if cfg.model.omni is None and d.valid_blend is None:
        shares = split_shares(d.split)
    if not t.eval_interval:
        return
    if cfg.model.omni is not None:
        if d.multimodal is None or not d.multimodal.valid:
            raise ConfigError("training.eval_interval must be 0 with model.omni unless "
                              "data.multimodal.valid gives held-out sources per modality (e.g. "
                              "{text: [data/held_out/text]}); set training.eval_interval=0")
        return
    if t.train_steps >= t.eval_interval and d.valid_blend is None and shares[1] == 0:
        raise ConfigError(f"training.eval_interval={cfg.training.eval_interval} but data.split="
                          f"{cfg.data.split!r} leaves no validation documents; give it a "
                          "validation share (e.g. data.split=95,5,0) or set data.valid_blend")


def split_shares(split: str) -> list[float]:
    """data.split as (train, valid, test) shares, missing ones 0 (as megatron-core reads it)."""
    try:
        shares = [float(x) for x in str(split).split(",")]
    except ValueError:
        shares = []
    shares += [0.0] * (3 - len(shares))
    if len(shares) != 3 or min(shares) < 0 or shares[0] <= 0:
        raise ConfigError(f"data.split={split!r}: give train,valid,test percentages with a positive "
                          "train share, e.g. 95,5,0")
    return shares
