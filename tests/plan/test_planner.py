"""The planner's verdicts: every example fits its world size on the plan's A100-80GB; the
launcher's --dry-run prints the per-rank table of a layout that fits and refuses one that cannot
(the 32B shape at tp=1 pp=1 without recompute on 8 GPUs) in one config error line naming the
fix; the ranked alternatives all fit and come fastest first; `python -m megatron_omni.plan`."""
import re
from pathlib import Path

import pytest
import yaml

from megatron_omni.config import load_config, validate
from megatron_omni.plan import Hardware, check_fits, estimate, ranked
from megatron_omni.plan.__main__ import main as plan_main
from megatron_omni.plan.memory import GIB

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BIG = str(ROOT / "examples/qwen3_32b_phase3_64gpu.yaml")
UNSHARDED = ["--set", "parallel.tp=1", "--set", "parallel.pp=1", "--set", "training.recompute=null",
             "--set", "parallel.sequence_parallel=false"]


def world_size(path: Path) -> int:
    return int(re.search(r"^#\s*world_size:\s*(\d+)", path.read_text(), re.MULTILINE).group(1))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_fits_its_world_size(path):
    cfg, world = load_config(path), world_size(path)
    table = check_fits(cfg, validate(cfg, world), world)
    assert len(table) == 2 + cfg.parallel.pp


def test_dry_run_prints_the_table_of_a_layout_that_fits(monkeypatch, capsys):
    from omni_launch.pretrain_omni import main

    monkeypatch.setenv("WORLD_SIZE", "64")
    assert main(["--phase", "3", "--config", BIG, "--dry-run", "--layout-only"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["derived"] == {"dp": 4}   # the table is YAML comments
    rows = [line for line in out.splitlines() if re.match(r"#\s+[01]\s", line)]
    assert len(rows) == 2 and "tp=8 pp=2" in out


def test_dry_run_refuses_a_layout_that_cannot_fit(monkeypatch, capsys):
    from omni_launch.pretrain_omni import main

    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["--phase", "3", "--config", BIG, "--dry-run", "--layout-only", *UNSHARDED]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: layout tp=1 pp=1"), lines
    needed = float(re.search(r"needs ([\d.]+) GiB", lines[0]).group(1))
    assert needed > 200 and "more than the GPU's 80 GiB" in lines[0]
    assert "raise tp/pp or turn on recompute, e.g. set parallel.tp=" in lines[0]
    # the same layout passes on a (hypothetical) GPU big enough for it
    big_gpu = ["--gpu-memory-gib", str(needed + 1)]
    assert main(["--phase", "3", "--config", BIG, "--dry-run", "--layout-only", *UNSHARDED, *big_gpu]) == 0


def test_alternatives_fit_and_come_fastest_first():
    cfg = load_config(BIG, ["parallel.tp=1", "parallel.pp=1", "training.recompute=null",
                            "parallel.sequence_parallel=false"])
    hw = Hardware()
    options = ranked(cfg, 8, hw)
    assert options and all(o.peak <= 80 * GIB for o in options)
    assert [o.step_s for o in options] == sorted(o.step_s for o in options)
    best = options[0]
    assert best.cfg.parallel.tp * best.cfg.parallel.pp > 1 or best.cfg.training.recompute
    assert not estimate(cfg, 8, hw).fits(hw)


def test_recompute_and_sharding_lower_the_estimate():
    cfg = load_config(BIG)
    layout = {mode: estimate(load_config(BIG, [f"training.recompute={mode}"]), 4, Hardware())
              for mode in ("null", "selective", "full")}
    assert layout["full"].memory[0].activations < layout["selective"].memory[0].activations
    assert layout["full"].step_s > layout["null"].step_s
    plain = estimate(load_config(BIG, ["parallel.distributed_optimizer=false"]), 4, Hardware())
    assert plain.memory[0].optimizer == 4 * estimate(cfg, 4, Hardware()).memory[0].optimizer


def test_omni_encoders_sit_on_stage_0():
    cfg = load_config(ROOT / "examples/qwen3_8b_phase3_32gpu.yaml", ["model.omni.preset=plan"])
    memory = estimate(cfg, 4, Hardware()).memory
    assert memory[0].encoders > 0 and memory[1].encoders == 0
    assert memory[0].params > memory[1].params


def test_cli_prints_table_and_alternatives(capsys):
    assert plan_main(["--config", str(ROOT / "examples/qwen3_8b_phase3_32gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "per rank (GiB; dp=4" in out and "layouts that fit, fastest first" in out
    assert plan_main(["--config", BIG, "--world-size", "8", *UNSHARDED]) == 1
    assert "does not fit: layout tp=1 pp=1" in capsys.readouterr().out


def test_cli_config_error_is_one_line(capsys):
    assert plan_main(["--config", BIG, "--world-size", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: world size 6")


def test_frozen_encoders_keep_only_their_outputs():
    """Phase 1 freezes both encoders: autograd saves nothing inside them, so the planner counts
    their outputs only; training them (phase 2) counts every layer's activations."""
    from megatron_omni.config.encoders import audio_config, vision_config
    from megatron_omni.plan.memory import dtype_bytes, encoder_activations, encoder_tokens

    path = ROOT / "examples/omni_8b_phase1_8gpu.yaml"
    frozen = load_config(path, ["training.micro_batch_size=1"])
    trained = load_config(path, ["training.micro_batch_size=1",
                                 "training.trainable=[vision_encoder,audio_encoder,projectors]"])
    vision, audio = vision_config(frozen.model.omni), audio_config(frozen.model.omni)
    tokens = encoder_tokens(frozen)
    outputs = dtype_bytes(frozen) * (tokens[0] * vision.hidden_size + tokens[1] * audio.hidden_size)
    assert encoder_activations(frozen, 8) == outputs
    assert encoder_activations(trained, 8) > vision.num_layers * outputs
