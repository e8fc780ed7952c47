"""Progress of a long preprocessing run, one line on stderr every few seconds:

    progress: 1.2 GB of 4.8 GB (25%), 41,233 docs/s, 9,876,543 tokens/s, ETA 0:06:12, skipped: none

rewritten in place on a terminal, appended (a log line each) otherwise. The ETA appears when the
input size is known.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO

from omni_data_prep.cli_io import skipped_line


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts input bytes, documents and tokens; `update` prints at most every `interval`
    seconds, `close` once more at the end (when anything was printed before)."""

    def __init__(self, total_bytes: int | None, unit: str = "docs", enabled: bool = True,
                 interval: float = 5.0, stream: TextIO | None = None):
        self.total, self.unit, self.enabled, self.interval = total_bytes, unit, enabled, interval
        self.stream = stream or sys.stderr
        self.bytes = self.items = self.tokens = 0
        self.skipped: Mapping[str, int] = {}
        self.start = self.last = time.perf_counter()
        self.printed = False

    def update(self, nbytes: int, items: int, tokens: int, skipped: Mapping[str, int]) -> None:
        self.bytes += nbytes
        self.items += items
        self.tokens += tokens
        self.skipped = skipped
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._print(self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line as of `now` (default: the current time)."""
        seconds = max((now or time.perf_counter()) - self.start, 1e-9)
        done = _size(self.bytes)
        eta = ""
        if self.total:
            done += f" of {_size(self.total)} ({100 * self.bytes / self.total:.0f}%)"
            if self.bytes:
                eta = f", ETA {_clock(seconds * max(self.total - self.bytes, 0) / self.bytes)}"
        return (f"progress: {done}, {self.items / seconds:,.0f} {self.unit}/s, "
                f"{self.tokens / seconds:,.0f} tokens/s{eta}, "
                f"{skipped_line({r: n for r, n in self.skipped.items() if n})}")

    def _print(self, line: str) -> None:
        tty = self.stream.isatty()
        self.stream.write(f"\r{line}\033[K" if tty else f"{line}\n")
        self.stream.flush()
        self.printed = True

    def close(self) -> None:
        if self.printed:
            self._print(self.line())
            if self.stream.isatty():
                self.stream.write("\n")
