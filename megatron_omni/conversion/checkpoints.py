"""Megatron checkpoints (any TP/PP/VPP) ↔ Hugging Face Qwen3 folders, in one process.

Both directions go through a TP=1/PP=1 model: dist_checkpointing reshards the saved shards into
it on load, and a checkpoint saved from it loads at any layout. Needs a process group (one CPU
process is enough): call ``platform.init_distributed()`` first, as launch/convert_checkpoint.py does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from megatron.core import parallel_state as ps, tensor_parallel

from megatron_omni.config import OmniConfig, config_from_dict
from megatron_omni.conversion.qwen3 import (hf_config, hf_to_megatron, load_hf_folder, megatron_to_hf,
                                            model_overrides_from_hf, save_hf_folder)
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.models.llm.model import build_llm
from megatron_omni.training import checkpoint


def single_rank_config(cfg: OmniConfig, dtype: str) -> OmniConfig:
    return dataclasses.replace(
        cfg,
        parallel=dataclasses.replace(cfg.parallel, tp=1, pp=1, vpp=None, cp=1, sequence_parallel=False),
        model=dataclasses.replace(cfg.model, backend="local"),
        training=dataclasses.replace(cfg.training, precision="bf16" if dtype == "bfloat16" else "fp32"))


def single_rank_model(cfg: OmniConfig, vocab_size: int):
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    return build_llm(cfg, vocab_size)


def plain_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}


def megatron_to_hf_folder(source: str | Path, out_dir: str | Path, tokenizer: str | None = None):
    """Write a Qwen3ForCausalLM folder (config.json, model.safetensors, tokenizer files) from a
    run folder or checkpoint folder. Returns (the megatron TP=1 model, the folder)."""
    path = checkpoint.resolve(source)
    common = checkpoint.read_common(path)
    cfg = single_rank_config(config_from_dict(common["config"]), common["dtype"])
    vocab_size = common["vocab_size"]
    model = single_rank_model(cfg, vocab_size)
    checkpoint.load_checkpoint(path, [model])
    out = Path(out_dir)
    hf_cfg = hf_config(cfg.model, vocab_size, common["dtype"])
    tok_path = tokenizer or cfg.data.tokenizer
    if tok_path:
        tok = load_tokenizer(tok_path)
        hf_cfg.eos_token_id, hf_cfg.pad_token_id = tok.eod_id, tok.pad_id
        tok.save_hf_files(out)
    save_hf_folder(megatron_to_hf(plain_state(model), cfg.model), hf_cfg, out)
    return model, out


def hf_folder_to_megatron(hf_dir: str | Path, out_root: str | Path, tokenizer: str | None = None) -> Path:
    """Save a weights-only megatron checkpoint (iteration 0) of an HF Qwen3 folder under out_root;
    start training from it with ``checkpoint.load=<out_root>``. Returns the checkpoint folder."""
    hf_state, hf_cfg = load_hf_folder(hf_dir)
    dtype = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    overrides = model_overrides_from_hf(hf_cfg)
    base = OmniConfig()
    cfg = single_rank_config(dataclasses.replace(
        base, model=dataclasses.replace(base.model, preset="custom", **overrides),
        data=dataclasses.replace(base.data, tokenizer=tokenizer)), dtype)
    vocab_size = overrides["vocab_size"]
    model = single_rank_model(cfg, vocab_size)
    missing, unexpected = model.load_state_dict(hf_to_megatron(hf_state, cfg.model), strict=False)
    missing = [k for k in missing if "_extra_state" not in k]
    if missing or unexpected:
        raise RuntimeError(f"HF import left parameters unset: missing {missing}, unexpected {unexpected}")
    return checkpoint.save_checkpoint(out_root, 0, [model], 0, dataclasses.asdict(cfg), vocab_size)
