"""launch/phaseN.sh and launch/slurm/pretrain.sbatch in DRY_RUN mode: the world size comes from
GPUS_PER_NODE x NNODES (Slurm's when inside a job), or, on a machine without GPUs, from the
config's `# world_size: N` header; pretrain_omni.py --dry-run prints the config with the derived
dp (--layout-only: the examples' data is not here). Phases 5 and 6 stop with the config error
naming what this build lacks."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_cpu.yaml")
_LAUNCH_VARS = ("GPUS_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_BACKEND",
                "CONFIG", "LOG_RANK", "WORLD_SIZE", "PHASE")
PHASE_LAYOUT = {1: (1, 8), 2: (1, 8), 3: (4, 4), 4: (2, 2), 5: (4, None), 6: (4, None)}
"""phase -> (Slurm nodes of 8 GPUs for its default config, derived dp; None: the phase stops)."""


def launch(command: list[str], tmp_path=None, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _LAUNCH_VARS}
    if tmp_path is not None:  # fake Slurm tools: scontrol lists two hosts, srun runs its command
        for name, body in (("scontrol", "echo gpu07\necho gpu08\n"),
                           ("srun", 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')):
            (tmp_path / name).write_text(f"#!/bin/sh\n{body}")
            (tmp_path / name).chmod(0o755)
        base["PATH"] = f"{tmp_path}:{base['PATH']}"
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**base, "DRY_RUN": "1", **env}, timeout=120)


def dry_run(script: str, args: list[str], tmp_path=None, **env) -> tuple[dict, str]:
    done = launch(["bash", str(ROOT / "launch" / script), "--layout-only", *args], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout), done.stderr


def test_without_gpus_the_config_header_gives_the_world_size():
    printed, err = dry_run("phase4.sh", [], CUDA_VISIBLE_DEVICES="")  # its 16-rank default config
    assert printed["derived"] == {"dp": 2} and printed["phase"] == 4
    assert "validating for the config's world_size 16" in err
    printed, err = dry_run("phase3.sh", ["--set", "parallel.tp=1", "--set", "parallel.sequence_parallel=false"],
                           CUDA_VISIBLE_DEVICES="", GPUS_PER_NODE="1", CONFIG=TINY)
    assert printed["derived"] == {"dp": 1}  # GPUS_PER_NODE given: that, not the header's 2
    assert "1 node(s) x 1 ranks = 1, node rank 0, static rendezvous at localhost:29500" in err
    assert "would run: torchrun --nproc-per-node 1 --nnodes 1 --node-rank 0" in err


def test_slurm_job_sets_nodes_master_and_c10d(tmp_path):
    printed, err = dry_run(
        "phase4.sh", ["--set", "training.micro_batch_size=2"], tmp_path, CONFIG=TINY,
        SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_ID="42",
        GPUS_PER_NODE="2")
    assert printed["derived"] == {"dp": 2}  # 2 nodes x 2 ranks / tp 2
    assert printed["phase"] == 4 and printed["training"]["micro_batch_size"] == 2
    assert "2 node(s) x 2 ranks = 4, node rank 1, c10d rendezvous at gpu07:29500" in err
    assert "--rdzv-backend c10d --rdzv-endpoint gpu07:29500 --rdzv-id 42" in err


@pytest.mark.parametrize("phase", sorted(PHASE_LAYOUT))
def test_slurm_script_runs_every_phase_with_its_default_config(tmp_path, phase):
    nodes, dp = PHASE_LAYOUT[phase]
    done = launch(["bash", str(ROOT / "launch" / "slurm" / "pretrain.sbatch"), "--layout-only"], tmp_path,
                  PHASE=str(phase), SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES=str(nodes),
                  SLURM_NODEID="0", SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="64", SLURM_GPUS_ON_NODE="8")
    assert f"phase {phase}: {nodes} node(s) x 8 ranks = {nodes * 8}" in done.stderr
    if dp is None:
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
            f"config error: phase={phase} ("), done.stderr
        assert "needs data and losses this build does not have yet" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        printed = yaml.safe_load(done.stdout)
        assert printed["phase"] == phase and printed["derived"] == {"dp": dp}
        assert (printed["model"]["omni"] is not None) == (phase != 4)


def test_slurm_script_refuses_an_unknown_phase(tmp_path):
    done = launch(["bash", str(ROOT / "launch" / "slurm" / "pretrain.sbatch")], tmp_path, PHASE="7",
                  SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="64")
    assert done.returncode == 2 and done.stderr.startswith("error: PHASE=7 is not a phase"), done.stderr
