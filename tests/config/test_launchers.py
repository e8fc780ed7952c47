"""launch/phaseN.sh in DRY_RUN mode: the world size comes from GPUS_PER_NODE x NNODES (Slurm's
when inside a job), and pretrain_omni.py --dry-run prints the config with the derived dp (with
--layout-only: the tiny example names no tokenizer or data)."""
import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_cpu.yaml")
_LAUNCH_VARS = ("GPUS_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_BACKEND",
                "CONFIG", "LOG_RANK", "WORLD_SIZE")


def dry_run(script: str, args: list[str], **env) -> tuple[dict, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _LAUNCH_VARS}
    done = subprocess.run(["bash", str(ROOT / "launch" / script), "--layout-only", *args],
                          capture_output=True, text=True,
                          env={**base, "DRY_RUN": "1", "CONFIG": TINY, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout), done.stderr


def test_single_node_without_gpus_runs_one_rank():
    printed, err = dry_run("phase3.sh", ["--set", "parallel.tp=1", "--set", "parallel.sequence_parallel=false"],
                           CUDA_VISIBLE_DEVICES="")
    assert printed["derived"] == {"dp": 1}
    assert "1 node(s) x 1 ranks = 1, node rank 0, static rendezvous at localhost:29500" in err
    assert "would run: torchrun --nproc-per-node 1 --nnodes 1 --node-rank 0" in err


def test_slurm_job_sets_nodes_master_and_c10d(tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\necho gpu07\necho gpu08\n")
    scontrol.chmod(0o755)
    printed, err = dry_run(
        "phase4.sh", ["--set", "training.micro_batch_size=2"], PATH=f"{tmp_path}:{os.environ['PATH']}",
        SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2", SLURM_NODEID="1", SLURM_JOB_ID="42",
        GPUS_PER_NODE="2")
    assert printed["derived"] == {"dp": 2}  # 2 nodes x 2 ranks / tp 2
    assert printed["phase"] == 4 and printed["training"]["micro_batch_size"] == 2
    assert "2 node(s) x 2 ranks = 4, node rank 1, c10d rendezvous at gpu07:29500" in err
    assert "--rdzv-backend c10d --rdzv-endpoint gpu07:29500 --rdzv-id 42" in err
