"""Rollouts (megatron_omni/rl/rollout.py) in the policy's training layouts, in one launch of two
gloo ranks: at TP=2 (with and without sequence parallelism) and at PP=2 the greedy tokens equal the
one-rank model's token for token, a seeded sampled rollout equals the one-rank one and is the same
on every rank, and the log-probs equal the one-rank values and a teacher-forced vocab-parallel
forward at TP=2 within 1e-5; sequence parallelism is back on after the call."""
from pathlib import Path

import pytest
import torch
from megatron.core import dist_checkpointing, parallel_state as ps, tensor_parallel

from megatron_omni.rl.rollout import generate
from tests.models.multirank import run_ranks
from tests.rl.test_rollout import perturb, prompts, teacher_forced, text_policy

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

GREEDY = dict(max_new_tokens=8, temperature=0)
SAMPLED = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)


def rollouts(model, eos: int) -> dict:
    return {name: generate(model, prompts(), eos_ids=[eos], **kw)
            for name, kw in (("greedy", GREEDY), ("sampled", SAMPLED))}


def assert_same(ours: dict, reference: dict, layout: str) -> None:
    for name, r in reference.items():
        assert ours[name].responses() == r.responses(), (layout, name, ours[name].responses(), r.responses())
        assert ours[name].stop_reason == r.stop_reason, (layout, name)
        torch.testing.assert_close(ours[name].logprobs, r.logprobs, atol=1e-5, rtol=0, msg=f"{layout} {name}")
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, {k: (v.response_ids, v.logprobs) for k, v in ours.items()})
    for other in everyone[1:]:  # bit-identical on every rank
        for k, (ids, logprobs) in other.items():
            assert torch.equal(ids, everyone[0][k][0]) and torch.equal(logprobs, everyone[0][k][1]), (layout, k)


def check_layouts(folder: str) -> None:
    reference = torch.load(Path(folder) / "reference.pt", weights_only=False)
    eos = reference.pop("eos")
    for layout in (["parallel.tp=2"], ["parallel.tp=2", "parallel.sequence_parallel=true"]):
        _, model = text_policy(*layout)
        dist_checkpointing.load(model.sharded_state_dict(), str(Path(folder) / "ckpt"))
        ours = rollouts(model.eval(), eos)
        assert_same(ours, reference, layout)
        assert model.config.sequence_parallel == ("parallel.sequence_parallel=true" in layout)  # restored
        if model.config.sequence_parallel:
            continue
        sampled = ours["sampled"]
        for i, (p, response) in enumerate(zip(prompts(), sampled.responses())):
            torch.testing.assert_close(sampled.logprobs[i, :len(response)], teacher_forced(model, p, response),
                                       atol=1e-5, rtol=0)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(1, 2)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    _, model = text_policy("parallel.pp=2")
    dist_checkpointing.load(model.sharded_state_dict(), str(Path(folder) / "ckpt"))
    assert_same(rollouts(model.eval(), eos), reference, "pp=2")


def test_tp2_and_pp2_rollouts_equal_one_rank(tmp_path):
    _, model = text_policy()
    perturb(model)
    (tmp_path / "ckpt").mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path / "ckpt"))
    first = generate(model.eval(), prompts(), eos_ids=[-1], **GREEDY).responses()[1]
    eos = first[next(k for k in range(1, 8) if first[k] not in first[:k])]   # prompt 1 stops early
    reference = rollouts(model, eos)
    assert "eos" in reference["greedy"].stop_reason and "length" in reference["greedy"].stop_reason
    torch.save({**reference, "eos": eos}, tmp_path / "reference.pt")
    run_ranks(check_layouts, 2, str(tmp_path))
