"""Phase 6 (DPO) of the tiny omni model on prepared preference pairs (tests/training/dpo_data.py:
image prompts, a learnable rule, two tool-use trajectory pairs), from the same step-0 weights,
which are also the frozen reference:

(a) 3 steps at TP=2, PP=2 (the reference pipelined too) and DP=2 give the losses and gradient
    norms of one rank within 1e-5; the first step's loss is log 2 (policy == reference).
(b) The reference log-probs precomputed by launch/precompute_ref_logprobs.py (at PP=2) give the
    frozen reference model's losses.
(c) `--phase 6` through launch/pretrain_omni.py on 2 CPU ranks learns the rule: the reward
    accuracy passes 0.9 and the margin grows.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.parallel.conftest import TINY, torchrun
from tests.training.dpo_data import prepare, rule_records, trajectory_record

ROOT = Path(__file__).parents[2]
OMNI = ["model.omni.preset=tiny", "model.omni.vision_overrides={image_size: 32}",
        "model.omni.audio_overrides={num_mel_bins: 80}", "data.multimodal.image_size=32",
        "data.multimodal.max_video_frames=4", "data.multimodal.packing=false",
        "data.multimodal.pad_audio_to_30s=false", "data.multimodal.schedule={mix: {cross_modal: 1.0}}",
        "data.seq_length=160", "training.micro_batch_size=4", "training.global_batch_size=8",
        "training.eval_interval=0", "checkpoint.save_interval=0"]


def _tensorboard(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


class DpoRuns:
    def __init__(self, root: Path, text_data: list[str]):
        tokenizer = next(o.split("=", 1)[1] for o in text_data if o.startswith("data.tokenizer="))
        records = rule_records(root / "pairs", 64) + [trajectory_record("a cat at the corner", i) for i in range(2)]
        self.data = prepare(root / "pairs", records, tokenizer)
        self.root, self.cache = root, {}
        self.base = TINY + text_data + OMNI + [f"data.multimodal.cross_modal=[{self.data}]"]
        self.init = root / "init" / "iter_0000000"
        torchrun(1, self.base + ["phase=3", f"checkpoint.dir={root / 'init'}"], root / "init.json", "--save-init")

    def get(self, name: str, nproc: int, overrides: list[str]) -> tuple[dict, Path]:
        if name not in self.cache:
            run_dir = self.root / name
            reference = [] if any(o.startswith("dpo.reference_logprobs") for o in overrides) else [
                f"dpo.reference={self.init}"]
            result = torchrun(nproc, self.base + ["phase=6", f"checkpoint.load={self.init}",
                                                  f"checkpoint.dir={run_dir}", *reference, *overrides],
                              self.root / f"{name}.json")
            self.cache[name] = (result, run_dir)
        return self.cache[name]


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory, text_data):
    return DpoRuns(tmp_path_factory.mktemp("dpo"), text_data)


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], ["parallel.tp=1"]],
                         ids=["tp2", "pp2", "dp2"])
def test_dpo_layouts_match_one_rank(dpo_runs, layout):
    reference, one_dir = dpo_runs.get("one_rank", 1, [])
    result, run_dir = dpo_runs.get("_".join(layout), 2, layout)
    assert len(reference["train"]) == 3
    assert reference["train"]["1"] == pytest.approx(math.log(2), abs=1e-6)
    for step, loss in reference["train"].items():
        assert result["train"][step] == pytest.approx(loss, abs=1e-5), (step, result["train"], reference["train"])
    norms, one_norms = _tensorboard(run_dir, "train/grad_norm"), _tensorboard(one_dir, "train/grad_norm")
    for step, norm in one_norms.items():
        assert norms[step] == pytest.approx(norm, abs=1e-5), (step, norms, one_norms)


def test_precomputed_reference_gives_the_same_loss(dpo_runs):
    reference, _ = dpo_runs.get("one_rank", 1, [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "precompute_ref_logprobs.py"), "--reference", str(dpo_runs.init),
           "--name", "ref.json"]
    for o in dpo_runs.base + ["parallel.pp=2"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote 66 pairs to {dpo_runs.data / 'ref.json'}" in proc.stdout
    result, _ = dpo_runs.get("precomputed", 1, ["dpo.reference_logprobs=ref.json"])
    for step, loss in reference["train"].items():
        assert result["train"][step] == pytest.approx(loss, abs=1e-6), (step, result["train"], reference["train"])


def test_phase6_through_pretrain_omni_learns_the_rule(dpo_runs):
    run = dpo_runs.root / "learn"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", "6"]
    for o in dpo_runs.base + [f"dpo.reference={dpo_runs.init}", f"checkpoint.load={dpo_runs.init}",
                              f"checkpoint.dir={run}", "training.train_steps=20", "training.global_batch_size=16",
                              "training.lr=3e-3", "training.warmup_steps=0", "training.lr_decay_style=constant",
                              "dpo.beta=0.5"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rewards/accuracy" in proc.stdout
    accuracy, margin = (_tensorboard(run, f"train/rewards/{n}") for n in ("accuracy", "margin"))
    assert sorted(accuracy) == list(range(1, 21))
    assert margin[1] == pytest.approx(0.0, abs=1e-6)
    assert min(accuracy[s] for s in range(11, 21)) > 0.9, accuracy
    early, late = (sum(margin[s] for s in steps) / 5 for steps in (range(2, 7), range(16, 21)))
    assert late > early > 0, margin
