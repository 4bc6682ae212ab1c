"""Applying fixes to text, and writing a fixed file without ever leaving it half-written."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trainlint.findings import Finding, Fix


def non_overlapping(findings: Sequence[Finding]) -> list[Finding]:
    """Findings whose fixes can be applied together: in order of position, a fix that touches
    or overlaps one already taken waits for the next pass."""
    chosen: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for finding in sorted(findings, key=lambda f: (f.fix.span, f.code)):  # type: ignore[union-attr]
        start, end = finding.fix.span  # type: ignore[union-attr]
        if any(start <= t_end and t_start <= end for t_start, t_end in taken):
            continue
        chosen.append(finding)
        taken.append((start, end))
    return chosen


def apply_fixes(text: str, fixes: Sequence[Fix]) -> str:
    """Splice every edit of the given (non-overlapping) fixes into the text, last first."""
    edits = sorted((edit for fix in fixes for edit in fix.edits), reverse=True)
    for edit in edits:
        text = text[: edit.start] + edit.content + text[edit.end :]
    return text


def write_atomic(path: Path, data: bytes) -> None:
    """Replace the file's content in one rename, keeping its permissions (and owner, where we
    may). Raises OSError when the file is not writable: a read-only file stays read-only and
    untouched, also for root, who could write it but should not (mode bits say "do not edit")."""
    status = os.stat(path)
    mode = stat.S_IMODE(status.st_mode)
    if not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(errno.EACCES, "the file is read-only")
    real = Path(os.path.realpath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".trainlint.tmp", dir=real.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        if hasattr(os, "chown") and (status.st_uid, status.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(temporary, status.st_uid, status.st_gid)
            except OSError:
                pass  # only root may give a file away; the content is what matters
        os.replace(temporary, real)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
