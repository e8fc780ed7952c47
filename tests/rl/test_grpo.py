"""The GRPO loss (rl/grpo.py) against an explicit computation from the full logits on one rank:
per-token log-softmax, ratio to the rollout policy, PPO clipping, the k3 KL to the reference,
masked to the response tokens and averaged over them; its gradient with respect to the logits;
the reported KL, clip fraction and entropy (TP=2, PP=2, DP=2 of the whole step:
tests/parallel/test_grpo.py). Also the group advantages and the rollout rows' layout (prompt + response, shifted labels)."""
import pytest
import torch
import torch.nn.functional as F

from megatron_omni.config.schema import RlConfig
from megatron_omni.rl.grpo import Rollout, group_advantages, grpo_loss_func, logprobs_loss_func, rollout_batch

B, S, V = 4, 11, 14   # odd sizes
SETTINGS = RlConfig(grpo=True, clip_low=0.2, clip_high=0.28, kl_coef=0.1)


def _batch(seed: int = 0, with_reference: bool = True):
    """Four rollouts (prompts of 2-4 tokens, responses of 3-6, one token masked out), old and
    reference log-probs near the policy's (so some ratios clip, some not), advantages of both
    signs; and the logits [B, S, V] (float64)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 2
    rollouts = []
    for prompt, response in [(2, 5), (4, 6), (3, 3), (2, 6)]:
        ids = torch.randint(0, V, (prompt + response,), generator=g).tolist()
        mask = [1.0] * response
        mask[1] = 0.0 if response == 6 else 1.0
        rollouts.append(Rollout(ids[:prompt], ids[prompt:], mask, [0.0] * response))
    batch = rollout_batch(rollouts, torch.tensor([1.0, 0.5, 0.0, -2.0]), S, 0, True, 4, 80)
    logp = F.log_softmax(logits, -1).gather(-1, batch.labels[..., None])[..., 0].float()
    noise = lambda: 0.6 * torch.randn(B, S, generator=g)
    batch.old_logps = (logp + noise()) * batch.loss_mask
    batch.ref_logps = (logp + noise()) * batch.loss_mask if with_reference else None
    return batch, logits


def _explicit(batch, logits: torch.Tensor, s: RlConfig) -> dict:
    """The loss from the full logits, written out."""
    logp = F.log_softmax(logits, -1).gather(-1, batch.labels[..., None])[..., 0]
    mask = batch.loss_mask.double()
    adv = batch.advantages.double()[:, None]
    ratio = torch.exp(logp - batch.old_logps.double())
    pg = -torch.min(ratio * adv, ratio.clamp(1 - s.clip_low, 1 + s.clip_high) * adv)
    if batch.ref_logps is None:
        kl = torch.zeros_like(logp)
    else:
        q = batch.ref_logps.double()
        kl = torch.exp(q - logp) - (q - logp) - 1
    probs = F.softmax(logits, -1)
    entropy = -(probs * F.log_softmax(logits, -1)).sum(-1)
    clipped = ((ratio > 1 + s.clip_high) & (adv > 0)) | ((ratio < 1 - s.clip_low) & (adv < 0))
    n = mask.sum()
    return {"loss": ((pg + s.kl_coef * kl) * mask).sum() / n, "kl": (kl * mask).sum() / n,
            "clip_fraction": (clipped * mask).sum() / n, "entropy": (entropy * mask).sum() / n, "tokens": n}


@pytest.mark.parametrize("with_reference", [True, False], ids=["kl", "no_reference"])
def test_loss_and_gradient_equal_explicit_computation(megatron_single_rank, with_reference):
    batch, logits = _batch(0, with_reference)
    full = logits.clone().requires_grad_()
    ref = _explicit(batch, full, SETTINGS)
    ref["loss"].backward()
    mine = logits.clone().requires_grad_()
    loss_sum, tokens, report = grpo_loss_func(SETTINGS, batch, mine)
    assert int(tokens) == int(ref["tokens"]) == 5 + 5 + 3 + 5
    (loss_sum / int(tokens)).backward()
    assert abs(loss_sum.item() / int(tokens) - ref["loss"].item()) < 1e-6
    torch.testing.assert_close(mine.grad, full.grad, atol=1e-6, rtol=1e-6)
    assert full.grad.abs().sum() > 0
    for key in ("kl", "clip_fraction", "entropy"):
        total, count = report[f"rl/{key}"]
        assert count.item() == int(tokens)
        assert abs(total.item() / count.item() - ref[key].item()) < 1e-6, key
    assert 0 < ref["clip_fraction"] < 1  # the case clips some tokens and not others
    if with_reference:
        assert ref["kl"] > 0


def test_on_policy_start_gives_minus_mean_advantage(megatron_single_rank):
    """Old and reference log-probs equal to the policy's (the first inner step of an unclipped
    rollout against its own reference): ratio 1, KL 0, the loss −mean advantage per token."""
    batch, logits = _batch(1)
    logprobs_loss_func("old_logps", batch, logits)
    logprobs_loss_func("ref_logps", batch, logits)
    loss_sum, tokens, report = grpo_loss_func(SETTINGS, batch, logits)
    per_token = batch.advantages[:, None] * batch.loss_mask
    assert loss_sum.item() == pytest.approx(-per_token.sum().item(), abs=1e-5)
    assert report["rl/kl"][0].item() == pytest.approx(0.0, abs=1e-6)
    assert report["rl/clip_fraction"][0].item() == 0.0


def test_group_advantages_normalise_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4, 1e-6)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv[:4], expected)
    assert adv[4:8].abs().max() == 0  # equal rewards: no signal
    group = rewards[8:]
    torch.testing.assert_close(adv[8:], (group - group.mean()) / (group.std(unbiased=False) + 1e-6))


def test_rollout_rows_hold_prompt_then_response_with_shifted_targets():
    batch = rollout_batch([Rollout([5, 6, 7], [8, 9, 2], [1.0, 1.0, 1.0], [-0.1, -0.2, -0.3]),
                           Rollout([5], [4], [1.0], [-0.5])], torch.tensor([0.5, -0.5]), 8, 0, False, 4, 80)
    assert batch.tokens.tolist() == [[5, 6, 7, 8, 9, 2, 0, 0], [5, 4, 0, 0, 0, 0, 0, 0]]
    assert batch.labels[0, :5].tolist() == [6, 7, 8, 9, 2]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(batch.old_logps[0, 2:5], torch.tensor([-0.1, -0.2, -0.3]))
    assert batch.old_logps[1, 0].item() == pytest.approx(-0.5)
    assert batch.sample_index.tolist()[1] == [1, 1, -1, -1, -1, -1, -1, -1]
    assert batch.position_ids.shape == (2, 8)
