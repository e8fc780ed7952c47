"""Checkpoint manifests (training/integrity.py), the fallback to an older checkpoint that
verifies, and failures described by path and cause (training/ckpt_errors.py), in one process."""
import errno
import logging
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from megatron_omni.training import integrity
from megatron_omni.training.checkpoint import POINTER, latest_checkpoint
from megatron_omni.training.ckpt_errors import CheckpointError, describe, on_all_ranks


def _checkpoint(root, iteration: int):
    path = root / f"iter_{iteration:07d}"
    dcp.save({"w": torch.arange(1000.0) * iteration, "b": torch.ones(7)}, checkpoint_id=path, no_dist=True)
    integrity.write_manifest(path)
    (root / POINTER).write_text(f"{iteration}\n")
    return path


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_manifest_names_each_damaged_file(tmp_path):
    path = _checkpoint(tmp_path, 1)
    assert integrity.problems(path) == []
    shard = next(path.glob("*.distcp"))
    _flip(shard)
    [problem] = integrity.problems(path)
    assert problem.startswith(f"{shard}: checksum ") and problem.endswith("(corrupted)")
    shard.write_bytes(shard.read_bytes()[:10])
    [problem] = integrity.problems(path)
    assert problem.startswith(f"{shard}: 10 bytes, expected ") and "truncated" in problem
    shard.unlink()
    assert integrity.problems(path) == [f"{shard}: missing"]
    (path / integrity.MANIFEST).unlink()
    assert "integrity.json: missing" in integrity.problems(path)[0]


def test_manifest_refuses_a_shard_the_metadata_needs_but_lacks(tmp_path):
    path = tmp_path / "iter_0000001"
    dcp.save({"w": torch.ones(100)}, checkpoint_id=path, no_dist=True)
    next(path.glob("*.distcp")).unlink()
    with pytest.raises(FileNotFoundError, match="named in the checkpoint metadata"):
        integrity.write_manifest(path)
    assert not (path / integrity.MANIFEST).exists()


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    first, second, third = (_checkpoint(tmp_path, i) for i in (2, 4, 6))
    assert latest_checkpoint(tmp_path) == third
    _flip(next(third.glob("*.distcp")))
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path) == second
    assert "skipped: iter_0000006" in caplog.text and "corrupted" in caplog.text
    shutil.rmtree(second)  # the pointer names a corrupted folder, the next one is gone
    assert latest_checkpoint(tmp_path) == first
    _flip(next(first.glob("*.distcp")))
    with pytest.raises(CheckpointError, match="no checkpoint under .* verifies; tried: iter_0000006 .*iter_0000002"):
        latest_checkpoint(tmp_path)


def test_pointer_to_a_deleted_folder_falls_back(tmp_path):
    older = _checkpoint(tmp_path, 3)
    (tmp_path / POINTER).write_text("9\n")
    assert latest_checkpoint(tmp_path) == older


def test_failures_are_described_by_cause_and_path():
    full = OSError(errno.ENOSPC, "No space left on device", "/ck/iter_0000002.tmp/__1_0.distcp")
    assert describe(full) == "disk full at /ck/iter_0000002.tmp/__1_0.distcp (No space left on device)"
    # as torch reports a writer failure: per-rank exceptions that crossed a process boundary as text
    wrapped = CheckpointException("save", {1: (RuntimeError(f"Worker failure: {full}"), None)})
    assert describe(wrapped) == "disk full at /ck/iter_0000002.tmp/__1_0.distcp (No space left on device)"
    ro = OSError(errno.EROFS, "Read-only file system", "/ck/iter_0000001.tmp")
    assert describe(ro) == "read-only file system at /ck/iter_0000001.tmp (Read-only file system)"
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/ck")).startswith("permission denied at /ck")

    def fail():
        raise ro

    with pytest.raises(CheckpointError, match=r"^cannot save: read-only file system at /ck/iter_0000001.tmp .*; kept$"):
        on_all_ranks("cannot save", fail, after="; kept")
