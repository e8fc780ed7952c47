"""Faults on 2 CPU ranks: preemption signals (to torchrun, to every process), corrupted data,
corrupted / missing checkpoints, and checkpoint folders that cannot be written. Each run has a
timeout, so a hang fails the test."""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil

from megatron_omni.data.index_check import HEADER_BYTES
from megatron_omni.training.checkpoint import latest_checkpoint

from .conftest import RUNNER, torchrun

FAULT_RUNNER = RUNNER.with_name("fault_runner.py")


def _start(overrides: list[str], out: Path, *flags: str, script: Path = RUNNER) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "--out", str(out), *flags]
    for o in overrides:
        cmd += ["--set", o]
    with open(out.with_suffix(".log"), "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen, timeout: int) -> int:
    """Wait for the run (a hang fails the test), then kill whatever it left behind."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _signal_after(proc, log: Path, step: int, everyone: bool) -> None:
    """SIGTERM once `step` is logged: to torchrun alone, or to torchrun, every rank and every
    helper process at once (Slurm's default)."""
    deadline = time.time() + 300
    while f"step {step:>6}/" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    targets = [proc.pid] + ([p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
                            if everyone else [])
    for pid in targets:
        os.kill(pid, signal.SIGTERM)


def _stopped_at(run_dir: Path, log: Path) -> int:
    text = log.read_text()
    # a rank that exits non-zero shows up as torchrun's ChildFailedError
    for failure in ("BrokenPipeError", "CheckpointException", "ChildFailedError"):
        assert failure not in text, text[-3000:]
    step = int(latest_checkpoint(run_dir).name.removeprefix("iter_"))
    assert f"stopped by signal after step {step}" in text, text[-3000:]
    return step


def test_preemption_saves_the_step_and_resume_is_exact(runs, tmp_path):
    """SIGTERM to torchrun (what a scheduler signals), then to every process at once: each time
    the step in flight is saved and the ranks exit cleanly; the resumed runs continue exactly
    like an uninterrupted one. Then the newest checkpoint gets a flipped byte: resuming detects
    it and continues from the one before."""
    # periodic saves before the signal: megatron's writer helper is already running then
    base = runs.base + ["training.train_steps=200", "checkpoint.save_interval=2",
                        "training.eval_interval=0", "model.hidden_dropout=0.1",
                        f"checkpoint.load={runs.init / 'iter_0000000'}"]
    run = base + [f"checkpoint.dir={tmp_path / 'run'}"]
    proc = _start(run, tmp_path / "a.json")
    _signal_after(proc, tmp_path / "a.log", 3, everyone=False)
    _finish(proc, 120)
    first = _stopped_at(tmp_path / "run", tmp_path / "a.log")
    proc = _start(run, tmp_path / "b.json")
    _signal_after(proc, tmp_path / "b.log", first + 2, everyone=True)
    _finish(proc, 120)
    second = _stopped_at(tmp_path / "run", tmp_path / "b.log")
    assert second > first
    between = json.loads((tmp_path / "b.json").read_text())["train"]
    after = torchrun(2, run, tmp_path / "c.json", "--max-steps", "1")["train"]
    straight = torchrun(2, base + [f"checkpoint.dir={tmp_path / 'straight'}"], tmp_path / "s.json",
                        "--max-steps", str(second + 1))["train"]
    assert sorted(map(int, between)) == list(range(first + 1, second + 1))
    for step, loss in {**between, **after}.items():
        assert loss == straight[step], f"step {step}"

    newest = latest_checkpoint(tmp_path / "run")  # the run after the second stop may have saved
    shard = sorted(newest.glob("*.distcp"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    older = max(int(p.name.removeprefix("iter_")) for p in (tmp_path / "run").glob("iter_*")
                if p.name < newest.name)
    fallback = torchrun(2, run, tmp_path / "d.json", "--max-steps", "1")["train"]
    log = (tmp_path / "d.log").read_text()
    assert f"{shard}: checksum" in log and f"resuming from {tmp_path / 'run' / f'iter_{older:07d}'}" in log
    assert fallback == {str(older + 1): straight[str(older + 1)]}


def test_corrupted_idx_fails_fast_naming_the_file(runs, tmp_path):
    prefix = Path(next(o for o in runs.base if o.startswith("data.train_blend=")).split("[")[1].rstrip("]"))
    bad = tmp_path / "bad"
    for ext in (".bin", ".idx"):
        (bad.parent / (bad.name + ext)).write_bytes(Path(f"{prefix}{ext}").read_bytes())
    with open(f"{bad}.idx", "r+b") as f:  # the sizes of the first sequences: hung rank 0 forever
        f.seek(HEADER_BYTES)
        f.write(struct.pack("<4i", -(2 ** 30), -(2 ** 30), -(2 ** 30), -(2 ** 30)))
    start = time.time()
    proc = _start(runs.base + [f"data.train_blend=[{bad}]", f"data.cache_dir={tmp_path / 'cache'}",
                               f"checkpoint.dir={tmp_path / 'run'}"], tmp_path / "idx.json")
    assert _finish(proc, 180) != 0
    log = (tmp_path / "idx.log").read_text()
    assert f"{bad}.idx: sequence 0 has a negative length" in log, log[-3000:]
    assert time.time() - start < 120


def test_disk_full_and_read_only_are_named_and_keep_the_previous_checkpoint(runs, tmp_path):
    """Rank 0's shards of step 2 hit a full disk (rank 1 writes none: its tensors are
    replicas); then the checkpoint folder is read-only (a rank-0-only step fails: rank 1 must not
    wait for it). Simulated in-process (tests run as root, which chmod does not stop):
    tests/parallel/fault_runner.py."""
    base = runs.base + [f"checkpoint.load={runs.init / 'iter_0000000'}", "training.eval_interval=0",
                        f"checkpoint.dir={tmp_path / 'run'}"]
    proc = _start(base, tmp_path / "full.json", "--fault", "enospc:2:0", script=FAULT_RUNNER)
    assert _finish(proc, 180) != 0
    log = (tmp_path / "full.log").read_text()
    # rank 0 writes its shards from several writers (__0_0.distcp, __0_1.distcp, ...): whichever
    # fails first is named
    shards = re.escape(str(tmp_path / "run" / "iter_0000002.tmp")) + r"/__0_\d+\.distcp"
    assert re.search(f"disk full at {shards} ", log), log[-3000:]
    assert "the previous checkpoint (step 1) is intact" in log, log[-3000:]
    assert latest_checkpoint(tmp_path / "run").name == "iter_0000001"
    assert not (tmp_path / "run" / "iter_0000002.tmp").exists()

    proc = _start(base, tmp_path / "ro.json", "--fault", "erofs", script=FAULT_RUNNER)
    assert _finish(proc, 180) != 0
    log = (tmp_path / "ro.log").read_text()
    assert f"read-only file system at {tmp_path / 'run' / 'iter_0000002.tmp'}" in log, log[-3000:]
    assert "the previous checkpoint (step 1) is intact" in log
    assert latest_checkpoint(tmp_path / "run").name == "iter_0000001"
