"""launch/phaseN.sh and launch/slurm/pretrain.sbatch in DRY_RUN mode: the world size comes from
GPUS_PER_NODE x NNODES (Slurm's when inside a job), or, on a machine without GPUs, from the
config's `# world_size: N` header; pretrain_omni.py --dry-run prints the config with the derived
dp (--layout-only: the examples' data is not here). Phases 1-3 also run for real through their
launchers, chained as the plan chains them (each starts from the previous run's checkpoint), with
the tiny omni model on 2 CPU ranks, and phase 4 with the tiny text model (the omni model at phase 4:
tests/parallel/test_omni_cp.py); phase 5 runs for real in
tests/parallel/test_sft.py and phase 6 in tests/parallel/test_dpo.py."""
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "examples" / "tiny_cpu.yaml")
OMNI_TINY = str(ROOT / "examples" / "omni_tiny_cpu.yaml")
_LAUNCH_VARS = ("GPUS_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_BACKEND",
                "CONFIG", "LOG_RANK", "WORLD_SIZE", "PHASE")
PHASE_LAYOUT = {1: (1, 8), 2: (1, 8), 3: (4, 4), 4: (2, 2), 5: (1, 2), 6: (1, 2)}
"""phase -> (Slurm nodes of 8 GPUs for its default config, derived dp)."""


def launch(command: list[str], tmp_path=None, dry_run: bool = True, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in _LAUNCH_VARS}
    if tmp_path is not None:  # fake Slurm tools: scontrol lists two hosts, srun runs its command
        for name, body in (("scontrol", "echo gpu07\necho gpu08\n"),
                           ("srun", 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')):
            (tmp_path / name).write_text(f"#!/bin/sh\n{body}")
            (tmp_path / name).chmod(0o755)
        base["PATH"] = f"{tmp_path}:{base['PATH']}"
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**base, "DRY_RUN": "1" if dry_run else "0", **env}, timeout=600)


def dry_run(script: str, args: list[str], tmp_path=None, **env) -> tuple[dict, str]:
    done = launch(["bash", str(ROOT / "launch" / script), "--layout-only", *args], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout), done.stderr


def test_without_gpus_the_config_header_gives_the_world_size():
    printed, err = dry_run("phase4.sh", [], CUDA_VISIBLE_DEVICES="")  # its 16-rank default config
    assert printed["derived"] == {"dp": 2} and printed["phase"] == 4
    assert "validating for the config's world_size 16" in err
    one_rank = ["--set", "parallel.tp=1", "--set", "parallel.sequence_parallel=false"]
    printed, err = dry_run("phase3.sh", one_rank, CUDA_VISIBLE_DEVICES="", GPUS_PER_NODE="1", CONFIG=TINY)
    assert printed["derived"] == {"dp": 1}  # GPUS_PER_NODE given: that, not the header's 2
    assert "1 node(s) x 1 ranks = 1, node rank 0, static rendezvous at localhost:29500" in err
    assert "would run: torchrun --nproc-per-node 1 --nnodes 1 --node-rank 0" in err


def test_phase6_launcher_validates_the_tiny_dpo_config():
    printed, err = dry_run("phase6.sh", [], CUDA_VISIBLE_DEVICES="", CONFIG=str(ROOT / "examples" / "omni_tiny_dpo_cpu.yaml"))
    assert printed["phase"] == 6 and printed["derived"] == {"dp": 1}  # its 2 ranks at tp 2
    assert printed["dpo"]["reference"] == printed["checkpoint"]["load"] == "runs/omni_tiny"
    assert "validating for the config's world_size 2" in err


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
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["phase"] == phase and printed["derived"] == {"dp": dp}
    assert printed["model"]["omni"] is not None  # phase 4's default is the omni long-context config


def test_slurm_script_refuses_an_unknown_phase(tmp_path):
    done = launch(["bash", str(ROOT / "launch" / "slurm" / "pretrain.sbatch")], tmp_path, PHASE="7",
                  SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="64")
    assert done.returncode == 2 and done.stderr.startswith("error: PHASE=7 is not a phase"), done.stderr


def test_phases_1_to_4_run_on_two_cpu_ranks(tmp_path):
    from omni_data_prep.multimodal.demo import prepare_omni_demo

    demo = prepare_omni_demo(tmp_path / "demo", num_images=12, num_audio=6, num_videos=3,
                             num_conversations=4, num_docs=100)
    sets = [f"data.tokenizer={demo['tokenizer']}", "training.train_steps=2", "training.warmup_steps=1",
            "training.global_batch_size=4"]
    sets += [f"data.multimodal.{m}=[{','.join(paths)}]" for m, paths in demo["multimodal"].items()]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    for phase in (1, 2, 3):
        run = tmp_path / f"run{phase}"
        args = [f"checkpoint.dir={run}"]
        if phase > 1:
            args.append(f"checkpoint.load={tmp_path / f'run{phase - 1}'}")
        done = launch(["bash", str(ROOT / "launch" / f"phase{phase}.sh"),
                       *[a for s in sets + args for a in ("--set", s)]], dry_run=False,
                      CONFIG=OMNI_TINY, GPUS_PER_NODE="2", CUDA_VISIBLE_DEVICES="", MASTER_PORT=port,
                      LOG_DIR=str(tmp_path / f"logs{phase}"), OMP_NUM_THREADS="1")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        steps = [line for line in done.stdout.splitlines() if "step      " in line]
        assert [line.split("|")[0].split()[-1] for line in steps] == ["1/2", "2/2"], done.stdout[-2000:]
        assert ("loss/text " in steps[0]) == (phase == 3) and "loss/audio " in steps[0], steps
        assert (run / "iter_0000002").is_dir()
        if phase > 1:
            assert f"initialised weights from {tmp_path / f'run{phase - 1}' / 'iter_0000002'}" in done.stdout
        assert len(list((tmp_path / f"logs{phase}").glob("*/attempt_0/*/stdout.log"))) == 2
    # phase 4 continues the text LLM at long context: the tiny text model on the demo's documents
    run = tmp_path / "run4"
    text = [f"data.tokenizer={demo['tokenizer']}", f"data.train_blend=[{demo['multimodal']['text'][0]}]",
            "training.train_steps=2", "training.warmup_steps=1", "training.eval_interval=0",
            f"checkpoint.dir={run}"]
    done = launch(["bash", str(ROOT / "launch" / "phase4.sh"), *[a for s in text for a in ("--set", s)]],
                  dry_run=False, CONFIG=TINY, GPUS_PER_NODE="2", CUDA_VISIBLE_DEVICES="", MASTER_PORT=port,
                  LOG_DIR=str(tmp_path / "logs4"), OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (run / "iter_0000002").is_dir() and "phase 4" in done.stderr + done.stdout
