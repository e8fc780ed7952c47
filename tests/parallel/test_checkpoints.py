"""Checkpoints: exact resume after a kill, crash-safe saving, resharding between layouts, and
Hugging Face conversion of a model trained at TP=2. (Preemption signals and other faults: test_faults.py.)"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_omni.training.checkpoint import POINTER, latest_checkpoint

from .conftest import torchrun

CONVERT = Path(__file__).parents[2] / "launch" / "convert_checkpoint.py"
SIX_STEPS = ["training.train_steps=6", "checkpoint.save_interval=3", "training.eval_interval=0",
             "model.hidden_dropout=0.1", "model.attention_dropout=0.1"]
"""Dropout makes the RNG state part of what resume must restore."""


def test_resume_after_kill_is_exact(runs, tmp_path):
    base = runs.base + SIX_STEPS + [f"checkpoint.load={runs.init / 'iter_0000000'}"]
    straight = torchrun(2, base + [f"checkpoint.dir={tmp_path / 'a'}"], tmp_path / "a.json")
    # Dies after step 4 (its work is lost: the last checkpoint is step 3), then resumes.
    torchrun(2, base + [f"checkpoint.dir={tmp_path / 'b'}"], tmp_path / "b0.json", "--die-after", "4",
             check=False)
    assert latest_checkpoint(tmp_path / "b").name == "iter_0000003"
    resumed = torchrun(2, base + [f"checkpoint.dir={tmp_path / 'b'}"], tmp_path / "b.json")
    assert sorted(resumed["train"]) == ["4", "5", "6"]
    for step in ("4", "5", "6"):
        assert resumed["train"][step] == straight["train"][step], f"step {step}"


def test_death_during_save_never_becomes_latest(runs, tmp_path):
    base = runs.base + SIX_STEPS + [f"checkpoint.load={runs.init / 'iter_0000000'}",
                                    f"checkpoint.dir={tmp_path / 'run'}"]
    torchrun(1, base, tmp_path / "crash.json", "--die-in-save", "6", check=False)
    assert (tmp_path / "run" / "iter_0000006.tmp").is_dir()
    assert (tmp_path / "run" / POINTER).read_text().strip() == "3"
    assert latest_checkpoint(tmp_path / "run").name == "iter_0000003"
    resumed = torchrun(1, base, tmp_path / "resumed.json")
    assert sorted(resumed["train"]) == ["4", "5", "6"]
    assert latest_checkpoint(tmp_path / "run").name == "iter_0000006"
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_tp2_pp2_checkpoint_loads_at_one_rank(runs, tmp_path):
    got, run_dir = runs.get("tp2_pp2", 4, ["parallel.tp=2", "parallel.pp=2"])
    valid = torchrun(1, runs.base + [f"checkpoint.dir={tmp_path / 'eval'}",
                                     f"checkpoint.load={run_dir / 'iter_0000003'}"],
                     tmp_path / "valid.json", "--validate")
    assert valid["valid"] == pytest.approx(got["valid"]["3"], abs=1e-5)


def test_resume_at_another_layout_continues_the_run(runs, tmp_path):
    """Model, distributed-optimizer state and scheduler reshard: a TP=2xPP=2 run resumed on one
    rank takes the same 4th step as the single-rank run resumed on one rank."""
    steps = {}
    for name, nproc, layout in (("single", 1, []), ("tp2_pp2", 4, ["parallel.tp=2", "parallel.pp=2"])):
        _, run_dir = runs.get(name, nproc, layout)
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        steps[name] = torchrun(1, runs.base + ["training.train_steps=4", f"checkpoint.dir={copy}"],
                               tmp_path / f"{name}.json")["train"]["4"]
    assert steps["tp2_pp2"] == pytest.approx(steps["single"], abs=1e-5)


def _convert(*args) -> dict:
    proc = subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tp2_trained_model_converts_to_hf(runs, tmp_path):
    _, run_dir = runs.get("tp2", 2, ["parallel.tp=2"])
    summary = _convert("to-hf", "--checkpoint", run_dir, "--out", tmp_path / "hf", "--verify")
    assert summary["max_abs_logit_diff"] <= 1e-5
    from transformers import AutoTokenizer

    from megatron_omni.data.tokenizer import load_tokenizer

    tok = load_tokenizer(runs.base[-3].split("=", 1)[1])
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("12 + 7 = 19")["input_ids"] == tok.encode("12 + 7 = 19")


def test_hf_to_megatron_to_hf_is_bit_exact(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      tie_word_embeddings=False, max_position_embeddings=512)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "src")
    _convert("from-hf", "--hf", tmp_path / "src", "--out", tmp_path / "megatron")
    _convert("to-hf", "--checkpoint", tmp_path / "megatron", "--out", tmp_path / "back")
    src, back = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert src.keys() == back.keys()
    for key in src:
        assert torch.equal(src[key], back[key]), key
