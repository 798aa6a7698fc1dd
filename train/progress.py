"""A dependency-free progress bar and a JSON-lines metrics log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TextIO


class ProgressBar:
    """Shows step, loss and tokens per second.

    On a terminal it redraws one line in place; elsewhere (CI, a log file) it
    prints a plain line about every 5% of the run so logs stay short.
    """

    def __init__(self, total: int, *, start: int = 0, stream: TextIO, width: int = 24):
        self.total, self.start, self.stream, self.width = total, start, stream, width
        self.interactive = hasattr(stream, "isatty") and stream.isatty()
        self.every = max(1, (total - start) // 20)
        self.started = time.perf_counter()

    def update(self, step: int, *, loss: float, tokens_per_s: float) -> None:
        done = step - self.start
        if not self.interactive and step != self.total and done % self.every:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - step)
        filled = int(self.width * step / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"step {step:>6}/{self.total} [{bar}] loss {loss:7.4f} | "
                f"{tokens_per_s / 1000:7.1f}k tok/s | {elapsed:6.0f}s elapsed, eta {eta:5.0f}s")
        if self.interactive:
            self.stream.write("\r" + line)
            if step == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own that does not clobber the bar."""
        self.stream.write(("\n" if self.interactive else "") + text + "\n")
        self.stream.flush()


def append_metrics(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Appends one JSON object as a line (the file is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
