"""Phase-4 distillation (training/distill.py).

(a) The vocab-parallel KL and log-softmax at TP=2 equal the single-rank values, forward and
    gradient, including shards whose logits differ by large offsets (the max is all-reduced).
(b) End to end: a tiny dense model trains 3 steps, launch/convert_dense_to_hybrid.py turns it
    into "SLLS", and 4 distillation steps at TP=2 (sequence parallel; KL + hidden MSE + LM) with
    training.trainable=[linear_attention] lower the logged KL to the teacher; the logged loss is
    the weighted sum of the logged parts; only the Lightning attention tensors change, every
    other tensor stays bit-identical to the converted checkpoint.
(c) Bad distill configs name the field.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state as ps

from megatron_omni.config import ConfigError, load_config, validate
from megatron_omni.training.distill import vocab_parallel_kl, vocab_parallel_log_softmax
from tests.models.multirank import run_ranks
from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun

CONVERT = Path(__file__).parents[2] / "launch" / "convert_dense_to_hybrid.py"
T = 2.0


def _logits():
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 5, 12, generator=gen) * 3
    teacher = torch.randn(2, 5, 12, generator=gen) * 3
    student[0, :, 6:] += 40.0  # the second shard dominates some tokens: the max must be global
    teacher[1, :, :6] += 30.0
    return student, teacher, torch.rand(2, 5, generator=gen)


def _reference():
    student, teacher, weight = _logits()
    student.requires_grad_()
    log_q = F.log_softmax(student / T, dim=-1)
    log_p = F.log_softmax(teacher / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    (kl * weight).sum().backward()
    return log_q.detach(), kl.detach(), student.grad


def _tp2_matches_single_rank() -> None:
    rank, group = dist.get_rank(), ps.get_tensor_model_parallel_group()
    ref_log_q, ref_kl, ref_grad = _reference()
    student, teacher, weight = _logits()
    cols = slice(6 * rank, 6 * (rank + 1))
    mine = student[..., cols].clone().requires_grad_()
    log_q = vocab_parallel_log_softmax(mine, T, group)
    torch.testing.assert_close(log_q, ref_log_q[..., cols], atol=1e-5, rtol=1e-5)
    kl = vocab_parallel_kl(mine, teacher[..., cols], T, group)
    torch.testing.assert_close(kl, ref_kl, atol=1e-5, rtol=1e-5)
    (kl * weight).sum().backward()
    torch.testing.assert_close(mine.grad, ref_grad[..., cols], atol=1e-6, rtol=1e-5)
    assert ref_kl.min() > 0.01  # teacher and student differ on every token


def test_vocab_parallel_kl_tp2_equals_single_rank():
    log_q, kl, _ = _reference()
    torch.testing.assert_close(vocab_parallel_log_softmax(_logits()[0], T, None), log_q)
    student, teacher, _ = _logits()
    torch.testing.assert_close(vocab_parallel_kl(student, teacher, T, None), kl)
    run_ranks(_tp2_matches_single_rank, 2)


def _tensorboard(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_distillation_lowers_kl_and_trains_only_linear_attention(tmp_path, text_data):
    base = TINY + text_data + ["data.seq_length=32", "training.micro_batch_size=1",
                               "training.global_batch_size=2", "training.eval_interval=0",
                               "checkpoint.save_interval=0"]
    dense = tmp_path / "dense"
    torchrun(1, base + [f"checkpoint.dir={dense}"], tmp_path / "dense.json")
    proc = subprocess.run(
        [sys.executable, str(CONVERT), "--dense", str(dense), "--out", str(tmp_path / "hybrid"),
         "--pattern", "SLLS", "--set", "model.linear.chunk_size=16"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    init = Path(json.loads(proc.stdout.strip().splitlines()[-1])["checkpoint"])

    run = tmp_path / "distill"
    torchrun(2, base + [
        "phase=4", "parallel.tp=2", "parallel.sequence_parallel=true", "model.layer_pattern=SLLS",
        "model.linear.chunk_size=16", "training.trainable=[linear_attention]", "training.train_steps=4", "training.lr=1e-2",
        "training.warmup_steps=0", "training.lr_decay_style=constant",
        f"distill.teacher={dense}", f"distill.temperature={T}", "distill.hidden_mse_weight=0.5",
        "distill.lm_weight=0.1", f"checkpoint.load={init}", f"checkpoint.dir={run}"],
        tmp_path / "distill.json")
    kl, mse, lm, loss = (_tensorboard(run, f"train/{n}") for n in ("kl", "mse", "lm", "loss"))
    assert sorted(kl) == [1, 2, 3, 4] and kl[1] > 0
    assert kl[4] < 0.8 * kl[1], kl
    for step in kl:  # the optimised loss is the weighted sum of the logged parts
        assert loss[step] == pytest.approx(T ** 2 * kl[step] + 0.5 * mse[step] + 0.1 * lm[step],
                                           rel=1e-5)
    before = checkpoint_tensors(init)
    after = checkpoint_tensors(run / "iter_0000004")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    lightning = sorted(k for k in before if k.startswith(("decoder.layers.1.self_attention.",
                                                          "decoder.layers.2.self_attention.")))
    assert changed == lightning, changed


@pytest.mark.parametrize("change, message", [
    (["phase=3"], "distill.teacher is set but phase=3: distillation is a phase-4 stage"),
    (["parallel.pp=2", "model.num_layers=4"], "distill.teacher with parallel.pp=2"),
    (["distill.temperature=0"], "distill.temperature=0.0 must be > 0"),
    (["distill.kl_weight=0"], "kl_weight, hidden_mse_weight and lm_weight are all 0"),
    (["distill.lm_weight=-1"], "distill.lm_weight=-1.0 must be >= 0"),
])
def test_bad_distill_configs_are_refused(change, message):
    cfg = load_config(None, ["phase=4", "distill.teacher=runs/dense", *change])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, 2 if "parallel.pp=2" in change else 1)
