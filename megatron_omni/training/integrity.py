"""Checkpoint integrity: a CRC-32 and size for every file of a checkpoint folder, written at save
time (``integrity.json``) and checked before a checkpoint is loaded.

At save each rank hashes the shards it wrote itself (``__<rank>_<n>.distcp``, still in its page
cache), rank 0 also the common files; at load the files are shared out round-robin among the
ranks of the loading job, whatever its size. Without a process group (tests, tools) one process
does all. CRC-32 (zlib, ~2 GB/s on one core, GIL released) catches truncation, overwritten
bytes and lost files; it is not a defence against deliberate tampering.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

MANIFEST = "integrity.json"
_CHUNK = 8 << 20
_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_gather(item) -> list:
    rank, world = _rank_world()
    if world == 1:
        return [item]
    out = [None] * world
    torch.distributed.all_gather_object(out, item)
    return out


def _owner(name: str, world: int) -> int:
    """The rank that hashes file `name` at save: the one that wrote it."""
    match = _SHARD.search(name)
    return int(match.group(1)) % world if match else 0


def file_digest(path: Path) -> dict:
    """{"size": bytes, "crc32": hex} of one file."""
    crc, size = 0, 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return {"size": size, "crc32": f"{crc:08x}"}


def _digests(folder: Path, names: list[str]) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: file_digest(folder / n), names)))


def _referenced_sizes(folder: Path) -> dict[str, int]:
    """The files torch's checkpoint metadata refers to, with the bytes each must at least hold."""
    from torch.distributed.checkpoint import FileSystemReader

    need: dict[str, int] = {}
    for info in FileSystemReader(str(folder)).read_metadata().storage_data.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    return need


def write_manifest(folder: str | Path) -> None:
    """Hash a just-written checkpoint folder and write its manifest (collective: every rank
    hashes its own files; rank 0 checks that every file the metadata names is there and whole,
    then writes the manifest). Raises OSError/ValueError naming the file when it is not."""
    folder = Path(folder)
    rank, world = _rank_world()
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    mine = [n for n in names if _owner(n, world) == rank]
    try:  # every rank reaches the gather, also when its hashing fails
        part = _digests(folder, mine)
    except OSError as err:
        part = err
    gathered = _all_gather(part)
    if rank != 0:
        return
    if failed := next((p for p in gathered if isinstance(p, OSError)), None):
        raise failed
    files = {k: v for part in gathered for k, v in part.items()}
    late = [n for p in folder.iterdir() if p.is_file() and (n := p.name) not in files and n != MANIFEST]
    files.update(_digests(folder, late))
    for name, size in _referenced_sizes(folder).items():
        if name not in files:
            raise FileNotFoundError(f"{folder / name} (named in the checkpoint metadata) was not written")
        if files[name]["size"] < size:
            raise ValueError(f"{folder / name} holds {files[name]['size']} bytes, the metadata needs {size}")
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"algorithm": "crc32", "files": dict(sorted(files.items()))}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def _check_files(folder: Path, expected: dict[str, dict]) -> list[str]:
    problems = []
    for name, want in expected.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != want["size"]:
                problems.append(f"{path}: {size} bytes, expected {want['size']} (truncated or rewritten)")
            elif (got := file_digest(path)["crc32"]) != want["crc32"]:
                problems.append(f"{path}: checksum {got}, expected {want['crc32']} (corrupted)")
        except FileNotFoundError:
            problems.append(f"{path}: missing")
        except OSError as err:
            problems.append(f"{path}: cannot read ({err.strerror})")
    return problems


def _read_manifest(folder: Path) -> tuple[dict | None, list[str]]:
    if not folder.is_dir():
        return None, [f"{folder}: missing"]
    path = folder / MANIFEST
    try:
        files = json.loads(path.read_text())["files"]
    except FileNotFoundError:
        return None, [f"{path}: missing (the save did not finish, or it predates checksums)"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, [f"{path}: unreadable ({err})"]
    return files, []


def problems(folder: str | Path) -> list[str]:
    """What is wrong with a checkpoint folder (empty when every file matches its manifest).
    Collective under a process group: each rank checks its share, all get the full list."""
    folder = Path(folder)
    rank, world = _rank_world()
    files, found = _read_manifest(folder)
    if files is not None:
        share = sorted(files)[rank::world]  # at load any rank may read any file
        found = _check_files(folder, {n: files[n] for n in share})
    gathered = _all_gather(found)
    return sorted({p for part in gathered for p in part})
