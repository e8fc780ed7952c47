"""Context parallelism of the tiny omni model (fp32, CPU, gloo; docs/omni_long_context.md): long
mixed micro-batches (a 16-frame video spanning CP chunks, a video with its audio track, a
full-window audio clip, images, text), one sample per row and packed (several samples per row,
TMRoPE ids restarting per sample), give one rank's losses (overall and per modality) and every
parameter's gradient at CP=2, CP=4, TP=2×CP=2 and PP=2×CP=2, for an all-dense and a hybrid
(sparse NoPE, Lightning and dense rotary layers) pattern; also TP=2×CP=2 with sequence
parallelism and PP=2×CP=2 with modality-decoupled encoders.

Three launches (tests/parallel/omni_cp_runner.py): one rank (the step-0 weights and both
references), two ranks (CP=2), four ranks (every other layout in turn)."""
from pathlib import Path

import pytest

from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun

RUNNER = Path(__file__).with_name("omni_cp_runner.py")
BASE = TINY + ["phase=4", "model.omni.preset=tiny", "model.omni.max_video_frames=16", "model.backend=local",
               "training.precision=fp32", "data.seq_length=128", "training.micro_batch_size=2",
               "training.global_batch_size=4", "training.eval_interval=0", "checkpoint.save_interval=0",
               "parallel.distributed_optimizer=false"]
"""Phase 4 (long context) of the tiny omni model; no distributed optimizer (its reduce-scatter
over data x context parallel ranks leaves only each rank's shard of main_grad reduced)."""
LAYOUTS = {  # name: (ranks, pattern, overrides)
    "cp2": (2, "dense", ["parallel.cp=2"]),
    "cp2_hybrid": (2, "hybrid", ["parallel.cp=2"]),
    "cp4": (4, "dense", ["parallel.cp=4"]),
    "tp2cp2": (4, "dense", ["parallel.tp=2", "parallel.cp=2"]),
    "tp2cp2_sp": (4, "dense", ["parallel.tp=2", "parallel.cp=2", "parallel.sequence_parallel=true"]),
    "pp2cp2": (4, "dense", ["parallel.pp=2", "parallel.cp=2"]),
    "pp2cp2_decoupled": (4, "dense", ["parallel.pp=2", "parallel.cp=2", "parallel.modality_decoupled=true"]),
    "cp4_hybrid": (4, "hybrid", ["parallel.cp=4"]),
    "tp2cp2_hybrid": (4, "hybrid", ["parallel.tp=2", "parallel.cp=2"]),
    "pp2cp2_hybrid": (4, "hybrid", ["parallel.pp=2", "parallel.cp=2"]),
}


def _layouts(nproc: int) -> list[str]:
    return [f"--layout={n}={','.join([pattern, *o])}" for n, (ranks, pattern, o) in LAYOUTS.items() if ranks == nproc]


@pytest.fixture(scope="module")
def cp_runs(tmp_path_factory, text_data):
    """{layout: {step kind: report}} of the three launches (run folders under "dir")."""
    out = tmp_path_factory.mktemp("omni_cp")
    base = BASE + text_data
    results = torchrun(1, base, out / "one.json", "--save-init", "--layout=one=dense",
                       "--layout=one_hybrid=hybrid", runner=RUNNER)
    results.update(torchrun(2, base, out / "two.json", *_layouts(2), runner=RUNNER))
    results.update(torchrun(4, base, out / "four.json", *_layouts(4), timeout=900, runner=RUNNER))
    return {**results, "dir": out}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_context_parallel_matches_one_rank(cp_runs, name):
    pattern = LAYOUTS[name][1]
    reference = "one" if pattern == "dense" else "one_hybrid"
    for kind in ("rows", "packed"):
        ref, got = cp_runs[reference][kind], cp_runs[name][kind]
        assert got.keys() == ref.keys()
        assert ref["loss"][1] > 0 and ref["loss/video"][1] > 0 and ref["loss/audio"][1] > 0
        for key, (total, tokens) in ref.items():
            assert got[key][1] == tokens, (kind, key)
            if tokens:
                assert got[key][0] / tokens == pytest.approx(total / tokens, abs=1e-5), (kind, key)
        ref_grads = checkpoint_tensors(cp_runs["dir"] / reference / f"grads_{kind}" / "iter_0000000")
        grads = checkpoint_tensors(cp_runs["dir"] / name / f"grads_{kind}" / "iter_0000000")
        assert grads.keys() == ref_grads.keys()
        nonzero = [k for k, g in ref_grads.items() if g.abs().max() > 0]
        assert any(k.startswith("vision_encoder.") for k in nonzero)
        assert any(k.startswith("audio_encoder.") for k in nonzero)
        for key, ref_grad in ref_grads.items():
            err = (grads[key] - ref_grad).abs().max().item()
            assert err <= 1e-5 * max(ref_grad.abs().max().item(), 1e-3), (kind, key, err)


@pytest.mark.parametrize("reference", ["one", "one_hybrid"])
def test_packed_samples_see_only_themselves(cp_runs, reference):
    """One rank: the packed rows (several samples each, TMRoPE ids restarting per sample, the
    Lightning state reset at each sample start) give the losses and gradients of the same samples
    one per row."""
    packed, apart = cp_runs[reference]["packed"], cp_runs[reference]["apart"]
    assert packed.keys() == apart.keys()
    for key, (total, tokens) in apart.items():
        assert packed[key][1] == tokens and (tokens == 0 or packed[key][0] / tokens == pytest.approx(
            total / tokens, abs=1e-5)), key
    grads = {kind: checkpoint_tensors(cp_runs["dir"] / reference / f"grads_{kind}" / "iter_0000000")
             for kind in ("packed", "apart")}
    for key, ref_grad in grads["apart"].items():
        err = (grads["packed"][key] - ref_grad).abs().max().item()
        assert err <= 1e-5 * max(ref_grad.abs().max().item(), 1e-3), (key, err)
