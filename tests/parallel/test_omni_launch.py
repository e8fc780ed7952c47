"""`launch/pretrain_omni.py --phase 1|2|3` with examples/omni_tiny_cpu.yaml on 2 CPU ranks, on the
synthetic media corpus the data path makes (data_prep/multimodal/demo.py), read by the omni
loader: each phase trains, logging the loss of every modality in its mix."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_data_prep.multimodal.demo import prepare_omni_demo

ROOT = Path(__file__).resolve().parents[2]
MIX = {1: ("image", "audio"), 2: ("image", "audio"), 3: ("text", "image", "video")}
"""Modalities each phase's mix surely draws in 2 steps of 8 samples (phase 3 samples audio and
cross-modal at 10 % each)."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("omni_demo")
    values = prepare_omni_demo(out, num_images=12, num_audio=6, num_videos=3, num_conversations=4,
                               num_docs=100)
    mm = values["multimodal"]
    return [f"data.tokenizer={values['tokenizer']}"] + [
        f"data.multimodal.{name}=[{','.join(paths)}]" for name, paths in mm.items()]


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_pretrain_omni_phase_on_two_ranks(demo, tmp_path, phase):
    sets = demo + ["training.train_steps=2", "training.warmup_steps=1", f"checkpoint.dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", str(phase),
           "--config", str(ROOT / "examples" / "omni_tiny_cpu.yaml")]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split("|")[0].split()[1] for line in lines] == ["1/2", "2/2"], done.stdout[-2000:]
    for modality in MIX[phase]:
        assert any(f"loss/{modality} " in line for line in lines), (modality, lines)
    assert (tmp_path / "run" / "iter_0000002").is_dir()
