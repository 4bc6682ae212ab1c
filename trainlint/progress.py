"""Progress on stderr for a cold run that takes a while: ``trainlint: 120/1000 files``.

Shown only on a terminal, never in a pipe, a file or a CI log (``CI`` set, as every CI service
sets it), and only once the run has taken ``TRAINLINT_PROGRESS_AFTER`` seconds (2 by default):
a run that ends before then prints nothing extra. The line is rewritten in place and erased at
the end, so the report that follows starts on a clean line.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

DEFAULT_DELAY_SECONDS = 2.0
_MIN_INTERVAL_SECONDS = 0.1  # at most ten redraws a second
_ERASE_LINE = "\r\x1b[K"


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get("TRAINLINT_PROGRESS_AFTER", DEFAULT_DELAY_SECONDS)))
    except ValueError:
        return DEFAULT_DELAY_SECONDS


def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


class Progress:
    def __init__(self, stream: TextIO, total: int, delay: float) -> None:
        self.stream = stream
        self.total = total
        self.delay = delay
        self.started = time.monotonic()
        self.last_drawn = 0.0
        self.shown = False

    @classmethod
    def on_terminal(cls, stream: TextIO, total: int) -> Progress | None:
        """A progress line for ``stream``, or None where one must not appear."""
        try:
            terminal = stream.isatty()
        except (AttributeError, ValueError):
            terminal = False
        if not terminal or _ci() or os.environ.get("TERM") == "dumb" or total == 0:
            return None
        return cls(stream, total, _delay())

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.started < self.delay or (self.shown and now - self.last_drawn < _MIN_INTERVAL_SECONDS):
            return
        self.last_drawn = now
        self.shown = True
        self.stream.write(f"{_ERASE_LINE}trainlint: {done}/{self.total} files")
        self.stream.flush()

    def finish(self) -> None:
        if self.shown:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
