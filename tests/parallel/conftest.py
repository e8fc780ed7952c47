"""Multi-rank test harness: tiny demo data, and torchrun launches of runner.py whose results are
cached per session (several tests compare against the same single-rank run)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from omni_data_prep.demo_data import prepare_demo_data

RUNNER = Path(__file__).with_name("runner.py")

TINY = [
    "model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=192",
    "model.num_attention_heads=4", "model.num_query_groups=2", "model.head_dim=16",
    "data.seq_length=64", "training.micro_batch_size=2", "training.global_batch_size=8",
    "training.train_steps=3", "training.warmup_steps=1", "training.lr=3e-3",
    "training.eval_interval=3", "training.eval_steps=1",
    "checkpoint.save_interval=1", "checkpoint.keep_last=0",
]
"""The tiny model and a 3-step run shared by the parity tests."""


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_data")
    tokenizer, prefix = prepare_demo_data(out, num_docs=600, vocab_size=400)
    return [f"data.tokenizer={tokenizer}", f"data.train_blend=[{prefix}]",
            f"data.cache_dir={out / 'cache'}"]


def torchrun(nproc: int, overrides: list[str], out: Path, *flags: str, timeout: int = 600,
             check: bool = True, runner: Path = RUNNER) -> dict:
    """Run runner.py (or another runner taking --out and --set) on nproc CPU ranks; returns its
    JSON result (with check, a non-zero exit fails the test)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(runner), "--out", str(out), *flags]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = out.with_suffix(".log")
    # Own session + output to a file: a killed run can leave helper processes (megatron's
    # checkpoint writers); they are killed with the group and hold no pipe we wait on.
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}); log {log}:\n{log.read_text()[-6000:]}")
    return json.loads(out.read_text()) if check and out.exists() else {}


def checkpoint_tensors(ckpt: Path) -> dict[str, "torch.Tensor"]:
    """Every tensor of a dist_checkpointing checkpoint folder, unsharded, by key."""
    flat = ckpt.with_suffix(".pt")
    dcp_to_torch_save(ckpt, flat)
    return {k: v for k, v in torch.load(flat, weights_only=False).items() if isinstance(v, torch.Tensor)}


class Runs:
    """Cached training runs keyed by name: each is (result JSON, run folder)."""

    def __init__(self, root: Path, base: list[str]):
        self.root, self.base, self.cache = root, base, {}
        self.init = root / "init"
        torchrun(1, base + [f"checkpoint.dir={self.init}"], root / "init.json", "--save-init")

    def get(self, name: str, nproc: int, overrides: list[str]) -> tuple[dict, Path]:
        if name not in self.cache:
            run_dir = self.root / name
            result = torchrun(nproc, self.base + overrides + [
                f"checkpoint.dir={run_dir}", f"checkpoint.load={self.init / 'iter_0000000'}"],
                self.root / f"{name}.json")
            self.cache[name] = (result, run_dir)
        return self.cache[name]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, text_data):
    return Runs(tmp_path_factory.mktemp("runs"), TINY + text_data)
