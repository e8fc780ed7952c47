"""The DPO loss (training/dpo.py) against an explicit computation from the full logits on one
rank: per-token log-softmax, summed over each response's target tokens, then the sigmoid, IPO
and conservative-DPO formulas and the SFT term; policy == reference gives log 2 and zero
rewards; the vocab-parallel log-probs at TP=2 give the same loss and logit gradients."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state as ps

from megatron_omni.config.schema import DpoConfig
from megatron_omni.data.multimodal.pairs import PreferenceBatch
from megatron_omni.training.dpo import dpo_loss_func, reference_loss_func
from tests.models.multirank import run_ranks

B, S, V = 4, 9, 14   # two pairs, odd sizes


def _batch(seed: int = 0) -> tuple[PreferenceBatch, torch.Tensor]:
    """Two pairs (rows 0/1 and 2/3), random labels, a prompt and padding without loss, and the
    logits [B, S, V] (float64)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, S), generator=g)
    mask = torch.zeros(B, S)
    index = torch.full((B, S), -1)
    for row, (start, end) in enumerate([(3, 7), (3, 8), (2, 5), (2, 9)]):
        mask[row, start:end] = 1
        index[row, :end] = row
    batch = PreferenceBatch(
        tokens=labels.roll(1, 1), labels=labels, loss_mask=mask, position_ids=torch.arange(S).repeat(B, 1),
        sample_index=index, sample_ids=[f"p{i // 2}/{'chosen' if i % 2 == 0 else 'rejected'}" for i in range(B)],
        sample_modality=["text"] * B, sample_kinds=["preference"] * B, images=torch.zeros(0, 3, 4, 4),
        videos=[], video_timestamps=[], audio_mel=torch.zeros(0, 80, 1), audio_frames=torch.zeros(0, dtype=torch.long),
        pairs=[(0, "a"), (0, "b")], reference_logps=-torch.rand(B, generator=g, dtype=torch.float64) * 20)
    logits = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 2
    return batch, logits


def _explicit(batch: PreferenceBatch, logits: torch.Tensor, d: DpoConfig) -> dict:
    """The loss from the full logits: log_softmax, gather, per-sample sums, the formulas."""
    logp = F.log_softmax(logits, dim=-1).gather(-1, batch.labels[..., None])[..., 0]
    sums = (logp * batch.loss_mask).sum(1)
    counts = batch.loss_mask.sum(1)
    ratio = sums - batch.reference_logps
    h = ratio[0::2] - ratio[1::2]
    if d.loss_type == "ipo":
        loss = (h - 1 / (2 * d.beta)) ** 2
    else:
        eps = d.label_smoothing
        loss = -(1 - eps) * F.logsigmoid(d.beta * h) - eps * F.logsigmoid(-d.beta * h)
    loss = loss - d.sft_weight * sums[0::2] / counts[0::2]
    return {"loss": loss, "chosen": d.beta * ratio[0::2], "rejected": d.beta * ratio[1::2]}


SETTINGS = {"sigmoid": DpoConfig(beta=0.1), "cdpo": DpoConfig(beta=0.3, label_smoothing=0.2),
            "ipo": DpoConfig(beta=0.5, loss_type="ipo"), "sft": DpoConfig(beta=0.1, sft_weight=0.7)}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_loss_equals_explicit_computation(megatron_single_rank, name):
    d = SETTINGS[name]
    batch, logits = _batch()
    ref = _explicit(batch, logits, d)
    loss_sum, pairs, report = dpo_loss_func(d, batch, logits)
    assert int(pairs) == 2
    # the log-probs are float32 (megatron's cross entropy, as the model's logits): the squared
    # IPO loss of log-ratios near 5 carries their ~1e-6 rounding twice over, so relative there
    tolerance = 1e-5 * abs(ref["loss"].sum().item()) if d.loss_type == "ipo" else 1e-6
    assert abs(loss_sum.item() - ref["loss"].sum().item()) < tolerance
    for key, value in (("rewards/chosen", ref["chosen"]), ("rewards/rejected", ref["rejected"]),
                       ("rewards/margin", ref["chosen"] - ref["rejected"]),
                       ("rewards/accuracy", (ref["chosen"] > ref["rejected"]).double())):
        assert report[key][1].item() == 2
        assert abs(report[key][0].item() - value.sum().item()) < 1e-6 * max(1.0, abs(value.sum().item())), key
    assert abs(report["loss"][0].item() - ref["loss"].sum().item()) < tolerance


def test_policy_equal_to_reference_gives_log2_and_zero_rewards(megatron_single_rank):
    batch, logits = _batch(1)
    reference_loss_func(batch, logits)  # the reference pass of the same model keeps its log-probs
    loss_sum, pairs, report = dpo_loss_func(DpoConfig(beta=0.1), batch, logits)
    assert loss_sum.item() / int(pairs) == pytest.approx(math.log(2), abs=1e-7)  # float32
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert report[key][0].item() == 0.0, key


def _tp2_equals_one_rank() -> None:
    rank = dist.get_rank()
    assert ps.get_tensor_model_parallel_world_size() == 2
    d = DpoConfig(beta=0.2, sft_weight=0.3)
    batch, logits = _batch(2)
    full = logits.clone().requires_grad_()
    ref = _explicit(batch, full, d)["loss"].sum()
    ref.backward()
    cols = slice(V // 2 * rank, V // 2 * (rank + 1))
    mine = logits[..., cols].clone().requires_grad_()
    loss_sum, _, _ = dpo_loss_func(d, batch, mine)
    assert abs(loss_sum.item() - ref.item()) < 1e-6
    loss_sum.backward()
    torch.testing.assert_close(mine.grad, full.grad[..., cols], atol=1e-6, rtol=1e-6)


def test_vocab_parallel_tp2_equals_one_rank():
    run_ranks(_tp2_equals_one_rank, 2)


DPO_BASE = ["phase=6", "model.omni.preset=tiny", "model.omni.audio_overrides={num_mel_bins: 80}",
            "model.omni.vision_overrides={image_size: 32}", "data.multimodal.image_size=32",
            "data.multimodal.max_video_frames=4", "data.multimodal.cross_modal=[pairs]",
            "data.multimodal.schedule={mix: {cross_modal: 1.0}}", "data.multimodal.packing=false",
            "training.eval_interval=0", "dpo.reference=runs/sft"]


@pytest.mark.parametrize("change, message", [
    ([], None),
    (["dpo.beta=0"], "dpo.beta=0.0 must be > 0"),
    (["dpo.label_smoothing=0.5"], r"dpo.label_smoothing=0.5 must be in \[0, 0.5\)"),
    (["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"], "dpo.label_smoothing=0.1 applies to loss_type=sigmoid"),
    (["dpo.sft_weight=-1"], "dpo.sft_weight=-1.0 must be >= 0"),
    (["dpo.reference_logprobs=ref.json"], "exactly one of dpo.reference .* both are set"),
    (["dpo.reference=null"], "exactly one of dpo.reference .* neither is set"),
    (["training.micro_batch_size=3", "training.global_batch_size=12"], "training.micro_batch_size=3 must be even"),
    (["data.multimodal.packing=true"], "data.multimodal.packing=true: phase 6 puts one response per row"),
    (["data.multimodal.schedule={mix: {cross_modal: 0.5, audio: 0.5}}", "data.multimodal.audio=[a]"],
     "phase 6 reads the pairs of one modality's folders"),
    (["phase=3"], "dpo.reference is set but phase=3"),
])
def test_dpo_configs_are_checked_naming_the_field(change, message):
    from megatron_omni.config import ConfigError, load_config, validate

    cfg = load_config(None, DPO_BASE + change)
    if message is None:
        assert validate(cfg, 1) == 1
        return
    with pytest.raises(ConfigError, match=message):
        validate(cfg, 1)


def test_rewards_reach_the_console_line_and_tensorboard():
    from megatron_omni.training.metrics import step_report

    m = {"loss": 0.5, "grad_norm": 1.0, "skipped": False, "rewards/chosen": 0.25, "rewards/rejected": -0.5,
         "rewards/accuracy": 0.75, "rewards/margin": 0.75}
    line, scalars = step_report(3, 10, m, {"lr": 1e-6}, 0.5)
    assert ("loss 0.5000 | rewards/chosen 0.2500 | rewards/rejected -0.5000 | rewards/accuracy 0.7500 | "
            "rewards/margin 0.7500 | lr 1.000e-06") in line
    assert {k: scalars[f"train/rewards/{k}"] for k in ("chosen", "rejected", "accuracy", "margin")} == \
        {"chosen": 0.25, "rejected": -0.5, "accuracy": 0.75, "margin": 0.75}
