"""The training log's line and scalars from known values (training/metrics.py step_report), and
the model FLOPs the MFU counts (training/flops.py) against a hand count of the tiny omni model."""
import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.contract.batch import MODALITIES
from megatron_omni.training.flops import StepFlops, mfu, pass_factors
from megatron_omni.training.metrics import Progress, duration, eta_seconds, step_report
from tests.omni_batches import micro_batch

METRICS = {"loss": 2.5, "grad_norm": 0.75, "skipped": False, "lr": 1e-3, "loss/image_text": 2.25,
           "loss/cross_modal": 3.0}
INTERVAL = {"tokens": 12_000.0, "flops": 2.4e15, "peak_mem_gib": 1.5,
            "data/mix/image_text": 0.75, "data/mix/cross_modal": 0.25,
            "data/skipped/corrupt_image": 0.0, "data/skipped/too_long": 2.0}


def _parts(line: str) -> dict[str, list[str]]:
    return {p.split()[0]: p.split()[1:] for p in line.split(" | ")}


def test_eta_and_durations():
    assert eta_seconds(30.0, 3, 7) == pytest.approx(70.0)  # 10 s per step so far, 7 steps left
    assert eta_seconds(0.0, 0, 10) == 0.0
    assert duration(3725.4) == "1:02:05"
    assert duration(59.6) == "0:01:00"


def test_logged_step_shows_progress_throughput_and_memory():
    progress = Progress(elapsed_s=30.0, steps_done=3, steps_left=7, interval_s=2.0, consumed_samples=48,
                        consumed_tokens=36_000.0, skipped_steps=0)
    line, scalars = step_report(13, 20, METRICS, {"lr": 1e-3, "lr/projectors": 1e-2}, 0.9, progress,
                                INTERVAL, world=4, peak=1e15)
    parts = _parts(line)
    assert line.startswith("step     13/20 | loss 2.5000 | ")
    assert parts["lr"] == ["1.000e-03"] and parts["lr/projectors"] == ["1.000e-02"]
    assert parts["elapsed"] == ["0:00:30"] and parts["ETA"] == ["0:01:10"]
    assert parts["samples"] == ["48"] and parts["tokens"] == ["36,000"]
    assert parts["tok/s/GPU"] == ["1,500"]  # 12,000 non-padding tokens / 2 s / 4 GPUs
    assert parts["MFU"] == ["30.0%"]        # 2.4e15 FLOPs / (2 s * 4 GPUs * 1e15 FLOP/s)
    assert parts["peak_mem"] == ["1.5", "GiB"]
    assert parts["skipped_steps"] == ["0"]  # shown at 0
    assert parts["skipped"] == ["corrupt_image", "0", "too_long", "2"]  # every reason, 0 included
    assert scalars["train/tokens_per_s_per_gpu"] == pytest.approx(1500.0)
    assert scalars["train/mfu"] == pytest.approx(0.3)
    assert scalars["train/eta_s"] == pytest.approx(70.0)
    assert scalars["train/lr/projectors"] == 1e-2
    assert scalars["train/peak_mem_gib"] == 1.5 and scalars["train/skipped_steps"] == 0
    assert scalars["data/skipped/corrupt_image"] == 0.0


def test_loss_names_are_the_mix_names():
    progress = Progress(1.0, 1, 1, 1.0, 8, 100.0, 0)
    line, scalars = step_report(1, 2, METRICS, {"lr": 1e-3}, 1.0, progress, INTERVAL, world=1, peak=None)
    parts = _parts(line)
    mixed = set(parts["mix"][::2])
    losses = {k.split("/", 1)[1] for k in parts if k.startswith("loss/")}
    assert losses == mixed == {"image_text", "cross_modal"}
    assert losses <= set(MODALITIES)
    assert "MFU" not in parts and "train/mfu" not in scalars  # no known peak (CPU)
    assert {"train/loss/image_text", "data/mix/image_text"} <= scalars.keys()


def test_unlogged_step_writes_the_step_scalars_only():
    line, scalars = step_report(2, 20, {**METRICS, "skipped": True}, {"lr": 1e-3}, 0.5)
    assert "step skipped (non-finite grads)" in line and "ETA" not in line
    assert "train/tokens_per_s_per_gpu" not in scalars and scalars["train/lr"] == 1e-3


def test_pass_factors_follow_what_trains():
    def factors(phase):
        return pass_factors(load_config(None, [f"phase={phase}", "model.omni.preset=tiny"]))

    # phase 1: projectors train; the LLM passes their gradients back; the encoders run forward only
    assert factors(1) == {"vision_encoder": 1, "vision_projector": 3, "audio_encoder": 1,
                          "audio_projector": 3, "llm": 2}
    assert factors(2) == {"vision_encoder": 3, "vision_projector": 3, "audio_encoder": 3,
                          "audio_projector": 3, "llm": 2}
    assert set(factors(3).values()) == {3}


def test_omni_step_flops_match_a_hand_count():
    cfg = load_config(None, ["phase=1", "model.omni.preset=tiny", "data.seq_length=64"])
    batch = micro_batch(cfg.model.omni, ["image", "audio", "cross", "text"], 64, 512)
    assert batch.images.shape[0] == 1 and [v.shape[0] for v in batch.videos] == [3]
    assert batch.mel_frames() == [40, 40]
    tokens = int((batch.sample_index >= 0).sum())
    assert batch.non_padding_tokens() == tokens < batch.sample_index.numel()
    # tiny LLM (4 layers, h 64, 4 heads x 16, 2 KV groups, ffn 192), vocab 512, seq 64:
    # matmul params 4 * (64 * (64 + 64) + 64 * 64 + 3 * 64 * 192) + 64 * 512 = 229,376
    llm = 2 * 229_376 + 2 * 4 * 64 * 64  # forward per token, causal scores: 491,520
    # tiny vision tower (16 px, patch 4: 16 patches; 2 layers, h 64, ffn 96), per frame:
    # patch embedding 16 * 2 * 48 * 64 + 16 * 2 * (2 * (4 * 64^2 + 2 * 64 * 96) + 4 * 16 * 64)
    frame = 98_304 + 1_966_080
    # tiny audio encoder (16 mels, 2 layers, h 64, ffn 96), 40 frames -> 20 tokens:
    clip = 2 * 3 * 64 * (40 * 16 + 20 * 64) + 20 * 2 * (2 * (4 * 64 ** 2 + 2 * 64 * 96) + 4 * 20 * 64)
    # LLM tokens: image 4, video 2 packages x 4, audio 40 -> 20 -> 10 -> 5 per clip
    vision_tokens, audio_tokens = 4 + 8, 5 + 5
    # phase 1 factors: LLM 2x forward, encoders 1x, projectors 3x (2 x parameters per token)
    hand = (2 * llm * tokens + 1 * (1 + 3) * frame + 3 * 2 * 1000 * vision_tokens
            + 1 * 2 * clip + 3 * 2 * 500 * audio_tokens)
    flops = StepFlops(cfg, 512, {"vision": 1000, "audio": 500}).of(batch)
    assert flops == pytest.approx(hand, rel=1e-12)
    assert mfu(flops, 2.0, 4, 1e15) == pytest.approx(hand / (2.0 * 4 * 1e15))
    assert mfu(flops, 2.0, 4, None) is None


def test_text_step_flops_count_every_position():
    cfg = load_config(None, ["phase=3", "data.seq_length=64"])
    batch = {"tokens": torch.zeros(2, 64, dtype=torch.long)}
    per_token = 6 * 229_376 + 6 * 4 * 64 * 64  # all of the LLM trains
    assert StepFlops(cfg, 512, {}).of(batch) == pytest.approx(per_token * 128)


def test_samples_are_logged_under_their_mix_modality():
    cfg = load_config(None, ["phase=1", "model.omni.preset=tiny", "data.seq_length=64"])
    batch = micro_batch(cfg.model.omni, ["image", "audio", "cross", "text", "video"], 64, 512)
    index = batch.modality_index()
    rows = [MODALITIES[int(row[0])] for row in index]
    assert rows == ["image_text", "audio", "cross_modal", "text", "video"]
    assert bool((index[batch.sample_index < 0] == -1).all())
