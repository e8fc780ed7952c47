"""TP/PP/VPP/DP/SP/CP runs of the tiny Qwen3 model match one rank: losses per step, validation loss,
and gradients after step 1 (read from Adam's first moment, exp_avg = (1 - beta1) * grad, stored
layout-independently in the checkpoint). All start from the same step-0 checkpoint."""
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

LAYOUTS = {
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "dp2": (2, []),
    "tp2_sp": (2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "pp2_vpp2": (2, ["parallel.pp=2", "parallel.vpp=2"]),
    "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "cp2": (2, ["parallel.cp=2"]),
    "cp2_pp2": (4, ["parallel.cp=2", "parallel.pp=2"]),
}


def _first_moments(run_dir):
    """Adam's exp_avg of every parameter after step 1, as full (unsharded) tensors."""
    flat = run_dir / "step1.pt"
    if not flat.exists():
        dcp_to_torch_save(run_dir / "iter_0000001", flat)
    tensors = torch.load(flat, weights_only=False)
    return {k: v for k, v in tensors.items() if k.startswith("optimizer.state.exp_avg.")}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_single_rank(runs, layout):
    ref, ref_dir = runs.get("single", 1, [])
    nproc, overrides = LAYOUTS[layout]
    got, got_dir = runs.get(layout, nproc, overrides)
    assert sorted(got["train"]) == ["1", "2", "3"]
    for step, loss in ref["train"].items():
        assert got["train"][step] == pytest.approx(loss, abs=1e-5), f"step {step}"
    assert got["valid"]["3"] == pytest.approx(ref["valid"]["3"], abs=1e-5)
    ref_m, got_m = _first_moments(ref_dir), _first_moments(got_dir)
    assert ref_m.keys() == got_m.keys() and len(ref_m) >= 9
    for key in ref_m:
        torch.testing.assert_close(got_m[key], ref_m[key], atol=1e-7, rtol=1e-4, msg=key)


def test_training_reduces_loss(runs):
    ref, _ = runs.get("single", 1, [])
    assert ref["train"]["3"] < ref["train"]["1"] - 0.1


def test_tensorboard_has_the_step_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ref, run_dir = runs.get("single", 1, [])
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s_per_gpu", "valid/loss"} <= tags
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({int(k): v for k, v in ref["train"].items()}, rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")][0] == pytest.approx(3e-3)
