"""Terminal output: aligned tables and a progress bar on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout
) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


class Progress:
    """A one-line bar that redraws in place on a terminal and logs sparsely otherwise."""

    def __init__(self, total: int, label: str, out: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.label = label
        self._out = out
        self._tty = out.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        finished = done >= self.total
        if not finished and now - self._last < (0.1 if self._tty else 5.0):
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {now - self._started:5.1f}s {note}"
        if self._tty:
            self._out.write("\r" + line.ljust(100)[:100])
            if finished:
                self._out.write("\n")
        else:
            self._out.write(line + "\n")
        self._out.flush()
