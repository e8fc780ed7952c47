"""parallel.modality_decoupled on the tiny omni model (fp32, CPU, gloo): mixed micro-batches (one
without media, image, audio, video, audio+video; tests/parallel/mdp_runner.py STEP_MIX) give the
one-rank losses and every parameter's first-step gradient at PP=2×DP=2, TP=2×DP=2, TP=2×PP=2
and PP=4, in phase 3 (all trains) and phase 1 (frozen encoders and LLM), with the vision-audio
contrastive loss on, and the one-rank losses with the distributed optimizer at PP=2×DP=2;
checkpoints switch between coupled and decoupled runs; the step's media split evenly over the
stages.

Two launches: one rank (the step-0 weights and both references), then four ranks running every
layout in turn."""
from pathlib import Path

import pytest

from megatron_omni.config import encoders, load_config
from megatron_omni.contract.balance import balance
from megatron_omni.parallel.modality_decoupled import MediaItem, media_items, work_per_rank
from tests.omni_batches import micro_batch
from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun

RUNNER = Path(__file__).with_name("mdp_runner.py")
BASE = TINY + ["model.omni.preset=tiny", "model.omni.contrastive_weight=0.1", "training.eval_interval=0",
               "checkpoint.save_interval=0"]
D, NO_DISTOPT = "parallel.modality_decoupled=true", "parallel.distributed_optimizer=false"
LAYOUTS = {  # name: (overrides, reference); DP > 1 without the distributed optimizer, whose
    # reduce-scatter leaves only each rank's shard of main_grad reduced
    "pp2dp2": (["parallel.pp=2", D, NO_DISTOPT], "one"),
    "tp2dp2": (["parallel.tp=2", D, NO_DISTOPT], "one"),
    "tp2pp2": (["parallel.tp=2", "parallel.pp=2", D], "one"),
    "pp4_coupled": (["parallel.pp=4", "checkpoint.save_interval=2"], "one"),
    "pp4": (["parallel.pp=4", D, "checkpoint.save_interval=2"], "one"),
    "pp2dp2_phase1": (["phase=1", "parallel.pp=2", D, NO_DISTOPT], "one_phase1"),
    "tp2pp2_phase1": (["phase=1", "parallel.tp=2", "parallel.pp=2", D], "one_phase1"),
}
DISTOPT = {"pp2dp2_distopt": ["parallel.pp=2", D]}
"""Losses only: the distributed optimizer over DP=2 with the decoupled encoders."""
RESUMES = {  # name: (step-2 checkpoint of, overrides)
    "coupled_to_decoupled": ("pp4_coupled", ["parallel.pp=4", D]),
    "decoupled_to_coupled": ("pp4", ["parallel.tp=2", "parallel.pp=2"]),
}


@pytest.fixture(scope="module")
def mdp_runs(tmp_path_factory, text_data):
    """{layout: result} of both launches (run folders beside them under "dir")."""
    out = tmp_path_factory.mktemp("mdp")
    results = torchrun(1, BASE + text_data, out / "one.json", "--save-init", "--layout=one=",
                       "--layout=one_phase1=phase=1", runner=RUNNER)
    layouts = [f"--layout={n}={','.join(o)}" for n, (o, _) in LAYOUTS.items()]
    layouts += [f"--layout={n}={','.join(o)}" for n, o in DISTOPT.items()]
    layouts += [f"--layout={n}={','.join([f'from:{src}', *o])}" for n, (src, o) in RESUMES.items()]
    results.update(torchrun(4, BASE + text_data, out / "four.json", *layouts, timeout=900, runner=RUNNER))
    return {**results, "dir": out}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_decoupled_matches_one_rank(mdp_runs, name):
    reference = LAYOUTS[name][1]
    ref, got = mdp_runs[reference], mdp_runs[name]
    for step, loss in ref["train"].items():
        assert got["train"][step] == pytest.approx(loss, abs=1e-5), (step, got["train"], ref["train"])
    ref_grads = checkpoint_tensors(mdp_runs["dir"] / reference / "grads" / "iter_0000000")
    grads = checkpoint_tensors(mdp_runs["dir"] / name / "grads" / "iter_0000000")
    assert grads.keys() == ref_grads.keys()
    nonzero = [k for k, g in ref_grads.items() if g.abs().max() > 0]
    assert any(k.startswith("vision_projector.") for k in nonzero)
    if "phase1" not in name:
        assert any(k.startswith("vision_encoder.") for k in nonzero)
        assert any(k.startswith("audio_encoder.") for k in nonzero)
    for key, ref_grad in ref_grads.items():
        err = (grads[key] - ref_grad).abs().max().item()
        assert err <= 1e-5 * max(ref_grad.abs().max().item(), 1e-3), (key, err)


def test_distributed_optimizer_matches_one_rank(mdp_runs):
    ref, got = mdp_runs["one"]["train"], mdp_runs["pp2dp2_distopt"]["train"]
    assert got == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("name", list(RESUMES))
def test_checkpoints_switch_between_coupled_and_decoupled(mdp_runs, name):
    ref, got = mdp_runs["one"], mdp_runs[name]
    assert list(got["train"]) == ["3"]
    assert got["train"]["3"] == pytest.approx(ref["train"]["3"], abs=1e-5)


def test_decoupled_checkpoint_holds_one_copy_of_the_encoders(mdp_runs):
    coupled = checkpoint_tensors(mdp_runs["dir"] / "pp4_coupled" / "iter_0000003")
    decoupled = checkpoint_tensors(mdp_runs["dir"] / "pp4" / "iter_0000003")
    assert coupled.keys() == decoupled.keys()
    assert any(k.startswith("vision_encoder.") for k in decoupled)


def test_every_stage_encodes_a_share(mdp_runs):
    items, cost = mdp_runs["pp4"]["work"]
    # step 1 (STEP_MIX): an image and a clip; two videos with their audio tracks; a video. The
    # 3 videos (the largest cost) go one per stage, the clips to the fourth, the image to stage 0
    video, clip, image = (16 * 3 * 2 * 64 ** 2, 20 * 2 * 64 ** 2, 16 * 2 * 64 ** 2)  # positions × layers × hidden²
    assert items == [2, 1, 1, 3]
    assert cost == [video + image, video, video, 3 * clip]
    assert mdp_runs["tp2pp2"]["work"] == [[3, 4], [2 * video + image, video + 3 * clip]]
    assert mdp_runs["pp4_coupled"]["work"] is None


def test_skewed_media_split_within_one_item_of_even():
    omni = load_config(None, ["model.omni.preset=tiny"]).model.omni
    shapes = (encoders.media_tokens(omni), encoders.vision_config(omni), encoders.audio_config(omni))
    step = [micro_batch(omni, ["video"] * 7, 96, 400, seed=1)] + [micro_batch(omni, ["text"] * 2, 96, 400, seed=s)
                                                                    for s in range(2, 5)]
    items = [MediaItem(m, *it) for m, b in enumerate(step) for it in media_items(b, *shapes)]
    assert [it.micro for it in items] == [0] * 7
    for ways in (2, 3, 4):
        counts, costs = work_per_rank(items, balance([it.cost for it in items], ways), ways)
        assert max(counts) - min(counts) <= 1, (ways, counts)


def test_balance_bounds_the_largest_load():
    costs = [9.0, 1.0, 1.0, 1.0, 5.0, 4.0, 3.0, 2.0, 2.0]
    for ways in (2, 3, 4):
        owner = balance(costs, ways)
        load = [sum(c for c, w in zip(costs, owner) if w == way) for way in range(ways)]
        assert max(load) <= sum(costs) / ways + max(costs), (ways, load)
        assert owner == balance(costs, ways)  # deterministic: every rank computes the same split
    assert balance([3.0, 3.0, 3.0, 3.0, 3.0], 2) == [0, 1, 0, 1, 0]
    assert balance([], 4) == []


def test_step_report_shows_the_encoder_work_per_stage():
    from megatron_omni.training.metrics import step_report

    m = {"loss": 2.0, "grad_norm": 1.0, "skipped": False, "encoder_items": [2, 4],
         "encoder_cost": [786432.0, 851968.0]}
    line, scalars = step_report(1, 3, m, {"lr": 1e-3}, 0.5)
    assert "encoder items 2/4 cost 7.86e+05/8.52e+05" in line
    assert scalars["encoder/items/stage1"] == 4 and scalars["encoder/cost/stage0"] == 786432.0


@pytest.mark.parametrize("overrides, message", [
    (["parallel.modality_decoupled=true"], "parallel.modality_decoupled=true needs model.omni"),
    (["parallel.modality_decoupled=true", "model.omni.preset=tiny", "parallel.pp=2", "parallel.vpp=2"],
     "parallel.modality_decoupled=true with parallel.vpp=2 is not implemented"),
])
def test_config_errors_name_the_field(overrides, message):
    from megatron_omni.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, TINY + overrides), 4)
