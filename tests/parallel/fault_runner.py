"""runner.py with a file-system fault injected in every rank, for the fault tests:

    torchrun ... tests/parallel/fault_runner.py --fault enospc:STEP:RANK  <runner.py arguments>
    torchrun ... tests/parallel/fault_runner.py --fault erofs             <runner.py arguments>

enospc: rank RANK's shard writes of the save of STEP fail as on a full disk (megatron's writer
processes are forked from the rank, so they inherit the patched ``open``). erofs: making any
checkpoint folder fails as on a read-only file system. (The tests run as root, whom chmod does
not stop, so the faults are injected in-process.)
"""
import builtins
import errno
import os
import sys
from pathlib import Path

import runner  # the script's folder is on sys.path


def _full_disk(step: int, rank: int) -> None:
    real_open = builtins.open
    target = f"iter_{step:07d}.tmp"

    def open_(file, mode="r", *args, **kwargs):
        name = str(file)
        if "w" in mode and target in name and name.endswith(".distcp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return real_open(file, mode, *args, **kwargs)

    if int(os.environ["RANK"]) == rank:
        builtins.open = open_


def _read_only() -> None:
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if "iter_" in Path(path).name:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    os.mkdir = mkdir


if __name__ == "__main__":
    kind, *params = sys.argv.pop(sys.argv.index("--fault") + 1).split(":")
    sys.argv.remove("--fault")
    if kind == "enospc":
        _full_disk(*map(int, params))
    else:
        _read_only()
    runner.main()
