"""Phases 1-3 of the omni model: each phase's default trainable groups, and per-group learning
rates (training.group_lr) through megatron-core's optimizer parameter groups, scheduled by
OptimizerParamScheduler (warmup, cosine decay to peak * min_lr / lr), seen in the optimizer's
param_groups over real training steps."""
import math

import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.training.step import train_step
from megatron_omni.training.trainer import build_model, build_optimizer
from tests.omni_batches import MIXED, PLACEHOLDER_IDS, micro_batch

VOCAB, SEQ, STEPS = 200, 64, 5
BASE = ["model.num_layers=2", "model.omni.preset=tiny", f"data.seq_length={SEQ}", "training.lr=1e-3",
        "training.min_lr=1e-4", "training.warmup_steps=2", f"training.train_steps={STEPS}",
        "training.micro_batch_size=5", "training.global_batch_size=5",
        "parallel.distributed_optimizer=false"]  # param_groups then hold the model parameters themselves


@pytest.fixture(autouse=True)
def _megatron(megatron_single_rank):
    """One CPU rank with megatron's parallel state (tests/conftest.py)."""


def expected_lr(peak: float, step: int) -> float:
    """OptimizerParamScheduler at `step` (1-based: the trainer counts the step being taken):
    linear warmup over 2 steps, then cosine from peak to peak/10 over the remaining steps."""
    if step <= 2:
        return peak * step / 2
    low = peak / 10
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (step - 2) / (STEPS - 2)))


def groups_of(param_group: dict) -> set[str]:
    return {p.trainable_group for p in param_group["params"]}


def run(phase: int, *overrides: str) -> tuple[list, list[dict]]:
    torch.manual_seed(0)
    cfg = load_config(None, BASE + [f"phase={phase}", *overrides])
    model = build_model(cfg, VOCAB, PLACEHOLDER_IDS)
    optimizer, scheduler = build_optimizer(cfg, model)
    scheduler.step(increment=1)  # as the trainer does: step 1 uses the first warmup lr
    seen = []
    for step in range(STEPS):
        seen.append([(groups_of(g), g["lr"]) for g in optimizer.param_groups if g["params"]])
        train_step(model, optimizer, scheduler, [micro_batch(cfg.model.omni, MIXED, SEQ, VOCAB, seed=step)],
                   SEQ, 5)
    return model, seen


def test_phase2_group_learning_rates_follow_the_schedule():
    model, seen = run(2, "training.group_lr={vision_encoder: 1e-5, projectors: 1e-4}")
    peaks = {"vision_encoder": 1e-5, "projectors": 1e-4, "audio_encoder": 1e-3}
    for step, groups in enumerate(seen, start=1):
        assert set().union(*(g for g, _ in groups)) == set(peaks)  # phase 2 freezes the LLM
        for group_names, lr in groups:
            (name,) = group_names  # one trainable group per optimizer param group
            assert lr == pytest.approx(expected_lr(peaks[name], step), rel=1e-12), (step, name)
    frozen = [n for c in model for n, p in c.named_parameters() if not p.requires_grad]
    assert frozen and all(".llm." in n for n in frozen)


def test_phase1_trains_only_the_projectors():
    model, seen = run(1)
    assert {n for groups in seen for g, _ in groups for n in g} == {"projectors"}
    trainable = {p.trainable_group for c in model for p in c.parameters() if p.requires_grad}
    assert trainable == {"projectors"}
