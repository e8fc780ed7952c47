"""Megatron checkpoints (any TP/PP/VPP) ↔ Hugging Face Qwen3 folders, in one process.

Both directions go through a TP=1/PP=1 model: dist_checkpointing reshards the saved shards into
it on load, and a checkpoint saved from it loads at any layout. Needs a process group (one CPU
process is enough): call ``platform.init_distributed()`` first, as launch/convert_checkpoint.py does.
Each output folder is written under a temporary name and published only when complete (and, for
an export, verified): common.staged_folder. User mistakes raise ConversionError.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from megatron.core import parallel_state as ps, tensor_parallel

from megatron_omni.config import ConfigError, OmniConfig, config_from_dict, load_config
from megatron_omni.config.presets import CUSTOM_PRESET, MODEL_PRESETS
from megatron_omni.config.schema import ModelConfig
from megatron_omni.conversion.common import ConversionError, staged_folder
from megatron_omni.conversion.qwen3 import (hf_config, hf_to_megatron, load_hf_folder, megatron_to_hf,
                                            model_overrides_from_hf, save_hf_folder)
from megatron_omni.data.tokenizer import Tokenizer, load_tokenizer
from megatron_omni.models.llm.model import build_llm
from megatron_omni.training import checkpoint
from megatron_omni.training.ckpt_errors import CheckpointError


USER_ERRORS = (ConversionError, ConfigError, CheckpointError)
"""What a conversion raises for a bad input; the launchers print it as one ``error:`` line."""


def single_rank_config(cfg: OmniConfig, dtype: str) -> OmniConfig:
    return dataclasses.replace(
        cfg,
        parallel=dataclasses.replace(cfg.parallel, tp=1, pp=1, vpp=None, cp=1, sequence_parallel=False),
        model=dataclasses.replace(cfg.model, backend="local"),
        training=dataclasses.replace(cfg.training, precision="bf16" if dtype == "bfloat16" else "fp32"))


def single_rank_model(cfg: OmniConfig, vocab_size: int, omni: bool = False):
    """The TP=1 LLM of cfg, or with ``omni`` the whole omni model (encoders, projectors, LLM;
    placeholder ids 0: they only steer the forward's merge, not the weights); initialises one-rank
    parallel state when there is none."""
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    if omni:
        from megatron_omni.models.omni.model import OmniModel

        return OmniModel(cfg, vocab_size, {"image": 0, "video": 0, "audio": 0})
    return build_llm(cfg, vocab_size)


def plain_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}


def resolve_checkpoint(source: str | Path, flag: str = "--checkpoint") -> Path:
    """checkpoint.resolve, with ConversionError naming ``flag`` for a path that is not a megatron
    run or checkpoint folder (saying what it is instead) or a damaged checkpoint."""
    path = Path(source)
    if not path.is_dir():
        raise ConversionError(f"{flag} {path}: no such folder")
    if (path / "config.json").is_file():
        raise ConversionError(f"{flag} {path}: a Hugging Face folder, not a megatron run or "
                              "checkpoint folder (import it with from-hf)")
    try:
        return checkpoint.resolve(path)
    except (FileNotFoundError, CheckpointError) as e:
        raise ConversionError(f"{flag} {path}: {e}") from e


def read_tokenizer(path: str | Path, vocab_size: int) -> Tokenizer:
    """The tokenizer at ``path``; ConversionError when it cannot be read or has ids outside the
    model's vocabulary of ``vocab_size``."""
    try:
        tok = load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise ConversionError(f"--tokenizer {path}: {e}") from e
    if tok.vocab_size > vocab_size:
        raise ConversionError(f"--tokenizer {path} has {tok.vocab_size} ids but the model's vocabulary "
                              f"is {vocab_size}; give the tokenizer the model was trained with")
    return tok


def verify_logits(model, hf_dir: Path, tolerance: float) -> float:
    """Max |logit difference| between our model and transformers' (from ``hf_dir``) on random
    tokens; ConversionError above ``tolerance``."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=next(model.parameters()).dtype).eval()
    vocab = hf.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    model.eval()
    with torch.no_grad():
        ours = model(tokens, positions, None)[..., :vocab].float()
        theirs = hf(tokens).logits.float()
    diff = (ours - theirs).abs().max().item()
    if diff > tolerance:
        raise ConversionError(f"verify failed: max |logit diff| {diff:.3e} > {tolerance:.1e} "
                              "(nothing was written)")
    return diff


def megatron_to_hf_folder(source: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                          tolerance: float | None = 1e-5) -> dict:
    """Write a Qwen3ForCausalLM folder (config.json, generation_config.json, model.safetensors
    with the true vocabulary's rows, tokenizer files) from a run folder or checkpoint folder;
    with ``tolerance`` (None = no check) it is compared with transformers before it is published.
    Returns the summary: the folder and, when verified, the max |logit difference|."""
    path = resolve_checkpoint(source)
    common = checkpoint.read_common(path)
    cfg = single_rank_config(config_from_dict(common["config"]), common["dtype"])
    vocab_size = common["vocab_size"]
    tok_path = tokenizer or cfg.data.tokenizer
    tok = read_tokenizer(tok_path, vocab_size) if tok_path else None
    model = single_rank_model(cfg, vocab_size)
    checkpoint.load_checkpoint(path, [model])
    hf_cfg = hf_config(cfg.model, vocab_size, common["dtype"])
    if tok is not None:
        hf_cfg.bos_token_id = hf_cfg.eos_token_id = tok.eod_id
        hf_cfg.pad_token_id = tok.pad_id
    summary = {"hf_folder": str(out_dir)}
    with staged_folder(out_dir) as tmp:
        if tok is not None:
            tok.save_hf_files(tmp)
        save_hf_folder(megatron_to_hf(plain_state(model), cfg.model, vocab_size), hf_cfg, tmp)
        if tolerance is not None:
            summary["max_abs_logit_diff"] = verify_logits(model, tmp, tolerance)
    return summary


def matching_preset(model: ModelConfig) -> str:
    """The first named model.preset that gives exactly ``model``'s vocabulary and
    checkpoint.MODEL_FUNCTION_FIELDS (with the schema defaults for the fields it does not set),
    else CUSTOM_PRESET."""
    fields = ("vocab_size",) + checkpoint.MODEL_FUNCTION_FIELDS
    for name, values in MODEL_PRESETS.items():
        preset = dataclasses.replace(ModelConfig(), **values)
        if values and all(getattr(preset, f) == getattr(model, f) for f in fields):
            return name
    return CUSTOM_PRESET


def model_sets(model: ModelConfig) -> list[str]:
    """``--set`` strings that give a run exactly this (dense Qwen3) model: its preset and every
    field checkpoint.FUNCTION_FIELDS compares, plus the vocabulary."""
    return [f"model.preset={model.preset}"] + [
        f"model.{f}={getattr(model, f)}" for f in ("vocab_size",) + checkpoint.MODEL_FUNCTION_FIELDS]


def hf_folder_to_megatron(hf_dir: str | Path, out_root: str | Path, tokenizer: str | None = None) -> dict:
    """Save a weights-only megatron checkpoint (iteration 0) of an HF Qwen3 folder under out_root;
    start training from it with ``checkpoint.load=<out_root>`` and the returned ``model_sets``.
    Returns the summary: the checkpoint folder, the stored preset name and the ``--set`` strings
    that reproduce the imported model."""
    hf_state, hf_cfg = load_hf_folder(hf_dir)
    dtype = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    overrides = model_overrides_from_hf(hf_cfg)
    vocab_size = overrides["vocab_size"]
    if tokenizer:
        read_tokenizer(tokenizer, vocab_size)
    model_cfg = dataclasses.replace(ModelConfig(), **overrides)
    preset = matching_preset(model_cfg)
    base = load_config(None, [f"model.preset={preset}"])
    cfg = single_rank_config(dataclasses.replace(
        base, model=dataclasses.replace(base.model, **overrides),
        data=dataclasses.replace(base.data, tokenizer=tokenizer)), dtype)
    model = single_rank_model(cfg, vocab_size)
    missing, unexpected = model.load_state_dict(hf_to_megatron(hf_state, cfg.model), strict=False)
    missing = [k for k in missing if "_extra_state" not in k]
    if missing or unexpected:
        raise ConversionError(f"HF import left parameters unset: missing {missing}, unexpected {unexpected}")
    with staged_folder(out_root) as tmp:
        path = checkpoint.save_checkpoint(tmp, 0, [model], 0, dataclasses.asdict(cfg), vocab_size)
    return {"checkpoint": str(Path(out_root) / path.name), "preset": preset,
            "model_sets": model_sets(cfg.model)}
