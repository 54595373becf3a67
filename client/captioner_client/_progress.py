"""A one-line progress bar on stderr, redrawn in place (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class ProgressBar:
    """`done/total` with a bar and the seconds so far; `update(done)` redraws it."""

    def __init__(self, total: int, label: str = "jobs", out: TextIO | None = None) -> None:
        self.total, self.label, self.out = total, label, out or sys.stderr
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        """Redraw with `done` items finished."""
        filled = WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "." * (WIDTH - filled)
        seconds = time.monotonic() - self.started
        self.out.write(f"\r{self.label} [{bar}] {done}/{self.total} {seconds:.0f}s")
        self.out.flush()

    def close(self) -> None:
        """End the line."""
        self.out.write("\n")
        self.out.flush()
