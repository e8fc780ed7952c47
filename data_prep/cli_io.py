"""What every data_prep command shares: its common options, failing with one `error:` line,
writing outputs atomically, and the skipped-records line of its summary."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from megatron_omni.data.bad_samples import BadSampleError

TMP_TAG = ".tmp-"
"""Marks a file being written (`atomic_file`, `atomic_output`)."""


def add_input(parser: argparse.ArgumentParser, files: str) -> None:
    """`--input GLOB...`, required; `files` says which file types."""
    parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                        help=f"{files} or glob patterns (quote them), read in the order given")


def add_tokenizer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True,
                        help="SentencePiece .model or Hugging Face tokenizer.json")


def add_json_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json-key", default="text",
                        help="jsonl field (parquet: column) holding the text (default: text)")


def add_workers(parser: argparse.ArgumentParser, what: str) -> None:
    """`--workers N` (default 1); `what` the workers do."""
    parser.add_argument("--workers", type=int, default=1,
                        help=f"{what} processes (default: 1, in this process)")


def add_allow_empty(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-empty", action="store_true",
                        help="write an empty output when the input has no usable record "
                             "(default: fail with an error)")


def add_strict(parser: argparse.ArgumentParser, where: str = "file and line") -> None:
    """`--strict`: stop at the first bad record, naming `where` it is."""
    parser.add_argument("--strict", action="store_true",
                        help=f"stop with an error naming {where} at the first bad record "
                             f"instead of skipping it")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one `error:` line on stderr and exit status 1: a bad record
    under --strict (BadSampleError), bad inputs or options (ValueError), a missing or
    unreadable file (OSError)."""
    try:
        yield
    except BadSampleError as err:
        _fail(f"{err} (--strict)")
    except (ValueError, OSError) as err:
        _fail(str(err))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def check_not_empty(written: int, records: int, skipped: Mapping[str, int], what: str,
                    allow_empty: bool) -> None:
    """Raise ValueError when nothing was `written` (counted in `what`) and not `allow_empty`,
    saying whether the input held no record or every one of its `records` was skipped."""
    if written or allow_empty:
        return
    cause = (f"every one of its {records:,} records was skipped "
             f"({skipped_line({r: n for r, n in skipped.items() if n})})"
             if records else "the input holds no record")
    raise ValueError(f"no {what} to write: {cause}; pass --allow-empty to write an empty output")


def skipped_line(skipped: Mapping[str, int]) -> str:
    """`skipped: <reason> <n>, ...` (or `none`), in the order of `skipped`."""
    return "skipped: " + (", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "none")


def _tmp_name(path: Path | str) -> str:
    return f"{path}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temps(folder: Path, name_glob: str) -> list[Path]:
    """Delete the temporary files (`atomic_file`, `atomic_output`) of `folder/<name_glob>` left
    by runs that were killed, i.e. whose process no longer exists; returns them."""
    stale = [path for path in folder.glob(f"{name_glob}{TMP_TAG}*")
             if not _pid_alive(path.name.rpartition(TMP_TAG)[2].split("-")[0])]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` on success, delete it on
    failure."""
    tmp = Path(_tmp_name(path))
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(prefix: Path) -> Iterator[tuple[str, str]]:
    """Yield temporary .bin/.idx paths beside `prefix`. On success, move them to `<prefix>.bin`
    and then `<prefix>.idx`, removing an old `<prefix>.idx` first so that no index ever points
    into the wrong .bin; on failure, delete them and leave `<prefix>.*` as they were."""
    tmp = _tmp_name(prefix)
    bin_tmp, idx_tmp = f"{tmp}.bin.part", f"{tmp}.idx.part"
    try:
        yield bin_tmp, idx_tmp
    except BaseException:
        for path in (bin_tmp, idx_tmp):
            Path(path).unlink(missing_ok=True)
        raise
    Path(f"{prefix}.idx").unlink(missing_ok=True)
    os.replace(bin_tmp, f"{prefix}.bin")
    os.replace(idx_tmp, f"{prefix}.idx")
