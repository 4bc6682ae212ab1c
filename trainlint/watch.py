"""``--watch``: lint, then lint again whenever a linted file or the configuration changes, until
Ctrl-C (exit status 0).

Changes are found by polling modification times and sizes twice a second, which needs no
dependency and works on every file system (network mounts and containers included). On a
terminal the screen is cleared before each run, so the report on screen is always the current
one; in a pipe the runs follow one another. The cache makes each run after the first cost only
the files that changed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from trainlint.config import ConfigError, Settings

POLL_SECONDS = 0.5
_CLEAR_SCREEN = "\x1b[2J\x1b[3J\x1b[H"

Snapshot = dict[str, tuple[int, int]]


def watch(
    lint_once: Callable[[], int],
    settings_for_run: Callable[[], Settings],
    paths: Sequence[str],
    stream: TextIO | None = None,
) -> int:
    """Run ``lint_once`` now and after every change under ``paths`` until interrupted."""
    stream = stream or sys.stdout
    try:
        snapshot = _lint(lint_once, settings_for_run, paths, stream, "Starting trainlint in watch mode...")
        while True:
            time.sleep(POLL_SECONDS)
            current = _snapshot(settings_for_run, paths)
            if current != snapshot:
                snapshot = _lint(lint_once, settings_for_run, paths, stream, "File change detected...")
    except KeyboardInterrupt:
        return 0


def _lint(
    lint_once: Callable[[], int], settings_for_run: Callable[[], Settings], paths: Sequence[str], stream: TextIO, why: str
) -> Snapshot:
    """One run under a header; the snapshot taken before it, so an edit made while it runs is
    seen at the next poll."""
    snapshot = _snapshot(settings_for_run, paths)
    if _is_terminal(stream):
        stream.write(_CLEAR_SCREEN)
    stream.write(f"[{time.strftime('%H:%M:%S')}] {why}\n\n")
    stream.flush()
    try:
        lint_once()
    except ConfigError as exc:  # a configuration being edited: say so and keep watching
        print(f"trainlint: error: {exc}", file=sys.stderr)
    stream.flush()
    return snapshot


def _snapshot(settings_for_run: Callable[[], Settings], paths: Sequence[str]) -> Snapshot:
    """Modification time and size of every file a run would lint, and of the configuration."""
    from trainlint.discovery import discover

    try:
        settings = settings_for_run()
    except ConfigError:
        settings = None
    files: list[Path] = []
    if settings is not None:
        files = [t.path for t in discover(paths, settings) if not t.missing and not t.problem]
        if settings.config_path is not None:
            files.append(settings.config_path)
    files += [Path(p).resolve() / "pyproject.toml" for p in paths if Path(p).is_dir()]
    stamps: Snapshot = {}
    for path in files:
        try:
            status = os.stat(path)
        except OSError:
            continue
        stamps[str(path)] = (status.st_mtime_ns, status.st_size)
    return stamps


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
