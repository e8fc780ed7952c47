"""Phase 6 (DPO) of the tiny omni model on prepared preference pairs (tests/training/dpo_data.py:
image prompts, a learnable rule, two tool-use trajectory pairs), from the same step-0 weights,
which are also the frozen reference:

(a) `--phase 6` through launch/pretrain_omni.py on 2 CPU ranks (DP=2) learns the rule in 20
    steps: the reward accuracy passes 0.9 and the margin grows.
(b) The first 3 steps at TP=2, PP=2 (the reference pipelined too) and DP=2 (the run of (a), and
    one without the distributed optimizer) give the losses and gradient norms of one rank within
    1e-5, and every parameter's first-step gradient within 1e-5 of its largest entry; the first
    step's loss is log 2 (policy == reference).
(c) The reference log-probs precomputed by launch/precompute_ref_logprobs.py (at PP=2) give the
    frozen reference model's losses.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun
from tests.training.dpo_data import prepare, rule_records, trajectory_record

ROOT = Path(__file__).parents[2]
OMNI = ["model.omni.preset=tiny", "model.omni.vision_overrides={image_size: 32}",
        "model.omni.audio_overrides={num_mel_bins: 80}", "data.multimodal.image_size=32",
        "data.multimodal.max_video_frames=4", "data.multimodal.packing=false",
        "data.multimodal.pad_audio_to_30s=false", "data.multimodal.schedule={mix: {cross_modal: 1.0}}",
        "data.seq_length=160", "training.micro_batch_size=4", "training.eval_interval=0",
        "checkpoint.save_interval=0", "training.train_steps=20", "training.global_batch_size=16",
        "training.lr=3e-3", "training.warmup_steps=0", "training.lr_decay_style=constant",
        "dpo.beta=0.5"]
"""The run of (a); the parity runs take its first 3 steps (runner.py --max-steps 3)."""


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
            torchrun(nproc, self.base + ["phase=6", f"checkpoint.load={self.init}", f"checkpoint.dir={run_dir}",
                                         *reference, *overrides], self.root / f"{name}.json", "--max-steps", "3",
                     "--grads")
            self.cache[name] = run_dir
        return self.cache[name]

    def learn(self) -> tuple[Path, str]:
        """(run folder, console output) of the 20-step DP=2 run through launch/pretrain_omni.py."""
        if "learn" not in self.cache:
            run = self.root / "learn"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(ROOT / "launch" / "pretrain_omni.py"), "--phase", "6"]
            for o in self.base + [f"dpo.reference={self.init}", f"checkpoint.load={self.init}",
                                  f"checkpoint.dir={run}"]:
                cmd += ["--set", o]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert proc.returncode == 0, proc.stderr[-4000:]
            self.cache["learn"] = (run, proc.stdout)
        return self.cache["learn"]


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory, text_data):
    return DpoRuns(tmp_path_factory.mktemp("dpo"), text_data)


def _first_steps(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: {k: v for k, v in _tensorboard(run_dir, f"train/{tag}").items() if k <= 3}
            for tag in ("loss", "grad_norm")}


def test_phase6_through_pretrain_omni_learns_the_rule(dpo_runs):
    run, stdout = dpo_runs.learn()
    assert "rewards/accuracy" in stdout
    accuracy, margin = (_tensorboard(run, f"train/rewards/{n}") for n in ("accuracy", "margin"))
    assert sorted(accuracy) == list(range(1, 21))
    assert margin[1] == pytest.approx(0.0, abs=1e-6)
    assert min(accuracy[s] for s in range(11, 21)) > 0.9, accuracy
    early, late = (sum(margin[s] for s in steps) / 5 for steps in (range(2, 7), range(16, 21)))
    assert late > early > 0, margin


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], ["parallel.distributed_optimizer=false"],
                                    None], ids=["tp2", "pp2", "dp2", "dp2_distopt"])
def test_dpo_layouts_match_one_rank(dpo_runs, layout):
    one_rank = dpo_runs.get("one_rank", 1, [])
    reference = _first_steps(one_rank)
    run = dpo_runs.get("_".join(layout), 2, layout) if layout else dpo_runs.learn()[0]
    result = _first_steps(run)
    assert sorted(reference["loss"]) == [1, 2, 3]
    assert reference["loss"][1] == pytest.approx(math.log(2), abs=1e-6)
    for tag in ("loss", "grad_norm"):  # within 1e-5, relative for norms of several units
        for step, value in reference[tag].items():
            assert result[tag][step] == pytest.approx(value, rel=1e-5, abs=1e-5), (tag, step, result, reference)
    if layout is None:   # the distributed optimizer's main_grad is reduced only in this rank's shard
        return
    ref_grads = checkpoint_tensors(one_rank / "grads" / "iter_0000000")
    grads = checkpoint_tensors(run / "grads" / "iter_0000000")
    assert grads.keys() == ref_grads.keys()
    assert {k.split(".")[0] for k, g in ref_grads.items() if g.abs().max() > 0} >= {
        "vision_encoder", "vision_projector", "embedding", "decoder"}, sorted({k.split(".")[0] for k in ref_grads})
    for key, ref_grad in ref_grads.items():
        err = (grads[key] - ref_grad).abs().max().item()
        assert err <= 1e-5 * max(ref_grad.abs().max().item(), 1e-3), (key, err)


def test_precomputed_reference_gives_the_same_loss(dpo_runs):
    reference = _first_steps(dpo_runs.get("one_rank", 1, []))["loss"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "precompute_ref_logprobs.py"), "--reference", str(dpo_runs.init),
           "--name", "ref.json"]
    for o in dpo_runs.base + ["parallel.pp=2"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote 66 pairs to {dpo_runs.data / 'ref.json'}" in proc.stdout
    result = _first_steps(dpo_runs.get("precomputed", 1, ["dpo.reference_logprobs=ref.json"]))["loss"]
    for step, loss in reference.items():
        assert result[step] == pytest.approx(loss, abs=1e-6), (step, result, reference)
