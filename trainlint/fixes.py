"""Applying fixes to text, and writing a fixed file without ever leaving it half-written."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from trainlint.findings import Edit, Finding, Fix
from trainlint.source import content_digest


def non_overlapping(findings: Sequence[Finding]) -> list[Finding]:
    """Findings whose fixes can be applied together: in order of position, a fix that touches
    or overlaps one already taken waits for the next pass. Every span taken starts at or before
    the current one, so it is enough to compare with the furthest end taken (linear, where a
    comparison with each taken span made thousands of fixes in one file cost seconds)."""
    chosen: list[Finding] = []
    furthest_end = -1
    for finding in sorted(findings, key=lambda f: (f.fix.span, f.code)):  # type: ignore[union-attr]
        start, end = finding.fix.span  # type: ignore[union-attr]
        if start <= furthest_end:
            continue
        chosen.append(finding)
        furthest_end = end
    return chosen


def apply_fixes(text: str, fixes: Sequence[Fix]) -> str:
    """Splice every edit of the given (non-overlapping) fixes into the text in one pass (copying
    the text once per edit, as splicing from the end does, is quadratic in a large file)."""
    edits = sorted(edit for fix in fixes for edit in fix.edits)
    pieces: list[str] = []
    position = 0
    for edit in edits:
        if edit.start < position:  # overlapping edits: splice from the end, as they always were
            return _apply_from_the_end(text, edits)
        pieces += (text[position : edit.start], edit.content)
        position = edit.end
    pieces.append(text[position:])
    return "".join(pieces)


def _apply_from_the_end(text: str, edits: Sequence[Edit]) -> str:
    for edit in sorted(edits, reverse=True):
        text = text[: edit.start] + edit.content + text[edit.end :]
    return text


class ChangedDuringRun(OSError):
    """The file no longer holds the content that was linted: it was edited meanwhile."""


def write_atomic(path: Path, data: bytes, expected_digest: str | None = None) -> None:
    """Replace the file's content in one rename, keeping its permissions (and owner, where we
    may). Raises OSError when the file is not writable: a read-only file stays read-only and
    untouched, also for root, who could write it but should not (mode bits say "do not edit").
    With ``expected_digest`` (the content digest of what was linted), raises ChangedDuringRun
    instead of replacing a file whose content has changed since: an editor saved it meanwhile."""
    status = os.stat(path)
    mode = stat.S_IMODE(status.st_mode)
    if not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(errno.EACCES, "the file is read-only")
    real = Path(os.path.realpath(path))
    with new_temporary_file(real.parent, f".{real.name}.", ".trainlint.tmp") as (handle, temporary):
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
        # Checked last, just before the rename, to leave the smallest window for an edit.
        if expected_digest is not None and content_digest(real.read_bytes()) != expected_digest:
            raise ChangedDuringRun(errno.EBUSY, "the file changed during the run")
        os.replace(temporary, real)


@contextmanager
def new_temporary_file(directory: Path, prefix: str, suffix: str) -> Iterator[tuple[int, str]]:
    """A new file in ``directory`` (``mkstemp``: created exclusively, never through a symbolic
    link, mode 0600) as a handle and a path; removed when the block fails (or is interrupted)."""
    import tempfile  # only where a file is written: a run from the cache writes nothing

    handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        yield handle, temporary
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
