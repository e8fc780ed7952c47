"""The tiny omni model trained 3 steps on mixed micro-batches (text-only, image, video, audio,
audio+video samples; tests/omni_batches.py) gives the same losses at TP=2, PP=2 and DP=2 as on
one rank (fp32, CPU), from the same step-0 weights; a phase-1 run keeps every parameter outside
the projectors bit-identical."""
import pytest
import torch

from tests.parallel.conftest import TINY, Runs, checkpoint_tensors, torchrun

OMNI = ["model.omni.preset=tiny", "training.eval_interval=0", "checkpoint.save_interval=0"]


@pytest.fixture(scope="module")
def omni_runs(tmp_path_factory, text_data):
    return OmniRuns(tmp_path_factory.mktemp("omni_runs"), TINY + text_data + OMNI)


class OmniRuns(Runs):
    """Runs with the synthetic omni micro-batches."""

    def __init__(self, root, base):
        self.root, self.base, self.cache = root, base, {}
        self.init = root / "init"
        torchrun(1, base + [f"checkpoint.dir={self.init}"], root / "init.json", "--save-init", "--synthetic-omni")

    def get(self, name, nproc, overrides):
        if name not in self.cache:
            run_dir = self.root / name
            result = torchrun(nproc, self.base + overrides + [
                f"checkpoint.dir={run_dir}", f"checkpoint.load={self.init / 'iter_0000000'}"],
                self.root / f"{name}.json", "--synthetic-omni")
            self.cache[name] = (result, run_dir)
        return self.cache[name]


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"], ["parallel.tp=1"]],
                         ids=["tp2", "pp2", "dp2"])
def test_omni_layouts_match_one_rank(omni_runs, layout):
    reference, _ = omni_runs.get("one_rank", 1, [])
    result, _ = omni_runs.get("_".join(layout), 2, layout)
    assert len(reference["train"]) == 3
    for step, loss in reference["train"].items():
        assert result["train"][step] == pytest.approx(loss, abs=1e-5), (step, result["train"], reference["train"])


def test_phase1_keeps_everything_but_the_projectors_bit_identical(omni_runs):
    _, run_dir = omni_runs.get("phase1_tp2", 2, ["phase=1", "parallel.tp=2"])
    before = checkpoint_tensors(omni_runs.init / "iter_0000000")
    after = checkpoint_tensors(run_dir / "iter_0000003")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    projectors = sorted(k for k in before if k.startswith(("vision_projector.", "audio_projector.")))
    assert projectors and changed == projectors, changed
