"""At the plan's 8B and 32B shapes (and the omni model with its plan encoders) the planner's
per-rank parameter counts equal those of the model megatron builds for that rank, built on the
meta device in a subprocess (tests/plan/meta_counts.py): stage 0 (embedding, encoders,
projectors) and stage 1 (output layer; a tied embedding's second copy) of each layout."""
import json
import subprocess
import sys
from pathlib import Path

from megatron_omni.config import load_config
from megatron_omni.plan.params import rank_parameters

SCRIPT = Path(__file__).with_name("meta_counts.py")
LAYOUTS = [
    ["model.preset=qwen3-8b", "parallel.tp=4", "parallel.pp=2"],
    ["model.preset=qwen3-32b", "parallel.tp=8", "parallel.pp=2"],
    ["model.preset=qwen3-8b", "parallel.tp=2", "parallel.pp=4", "parallel.vpp=3", "model.num_layers=24"],
    # TMRoPE off: megatron's mrope embedding asks for a CUDA device (it has no parameters)
    ["model.preset=qwen3-8b", "model.omni.preset=plan", "model.omni.tmrope=false", "parallel.tp=4",
     "parallel.pp=2"],
    ["model.preset=qwen3-8b", "model.omni.preset=plan", "model.omni.tmrope=false",
     "model.omni.vision_projector=mlp", "model.omni.audio_projector=mlp", "parallel.tp=4", "parallel.pp=2"],
    ["model.preset=qwen3-1.7b", "model.layer_pattern=hybrid", "parallel.tp=2", "parallel.pp=2"],
]
CASES = [(layout + ["training.precision=bf16", "parallel.sequence_parallel=true"], stage)
         for layout in LAYOUTS for stage in (0, 1)]


def test_full_scale_ranks_match_the_meta_built_model():
    run = subprocess.run([sys.executable, str(SCRIPT), json.dumps(CASES)], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    for (overrides, stage), counts in zip(CASES, built):
        assert rank_parameters(load_config(None, overrides), stage) == counts, (overrides, stage)
