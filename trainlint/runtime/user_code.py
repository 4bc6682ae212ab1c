"""Telling the user's code from everything else on the stack.

The user's code is any Python file outside the interpreter, the installed packages and trainlint
itself. The monitor uses this to name an optimizer after the line that created it, to point
warnings and tracebacks at the user's line rather than at trainlint's wrappers, and to end a run
whose script catches every exception (only the user's frames are stopped).
"""

from __future__ import annotations

import functools
import linecache
import re
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

_TRAINLINT = Path(__file__).resolve().parents[1]
_RUNTIME = Path(__file__).resolve().parent
_ASSIGNED = re.compile(r"^\s*(?:self\.)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*(?::[^=]+)?=[^=]")


@functools.lru_cache(maxsize=None)
def environment_paths() -> tuple[Path, ...]:
    """Where the interpreter, the installed packages and trainlint itself live."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values()}
    resolved = {Path(p).resolve() for p in paths if p}
    return (*sorted(resolved), _TRAINLINT)


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    return not any(path.is_relative_to(p) for p in environment_paths())


@functools.lru_cache(maxsize=4096)
def is_runtime_file(filename: str) -> bool:
    return bool(filename) and not filename.startswith("<") and Path(filename).resolve().is_relative_to(_RUNTIME)


def user_frame(frame: FrameType | None, skip_self_of: Any = None) -> FrameType | None:
    """The first frame of the user's code, from ``frame`` outwards.

    ``skip_self_of``: also skip frames of methods of that object (an optimizer subclass's own
    ``__init__``), so that the frame found is where the object was created.
    """
    while frame is not None:
        if is_user_file(frame.f_code.co_filename) and not (
            skip_self_of is not None and frame.f_locals.get("self") is skip_self_of
        ):
            return frame
        frame = frame.f_back
    return None


def creation_site(obj: Any) -> tuple[str, str]:
    """(name, "file.py:LINE") of the user's line creating ``obj``, e.g. ``("opt_d", "gan.py:31")``.

    The name is the variable the line assigns to, when it assigns to one name; empty otherwise.
    """
    frame = user_frame(sys._getframe(1), skip_self_of=obj)
    if frame is None:
        return "", ""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    match = _ASSIGNED.match(line)
    return (match.group(1) if match else ""), f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"


def format_user_traceback(exc: BaseException) -> str:
    """The traceback without trainlint's own frames (its runner, its wrappers)."""
    summary = traceback.TracebackException.from_exception(exc)
    _drop_runtime_frames(summary)
    return "".join(summary.format())


def _drop_runtime_frames(summary: traceback.TracebackException) -> None:
    kept = [f for f in summary.stack if not is_runtime_file(f.filename)]
    summary.stack = traceback.StackSummary.from_list(kept)
    for linked in (summary.__cause__, summary.__context__):
        if linked is not None:
            _drop_runtime_frames(linked)


@contextmanager
def warnings_at_user_lines() -> Iterator[None]:
    """Warnings that Python attributes to trainlint's wrappers are shown at the user's line.

    A warning raised inside a torch call that goes through trainlint (the CPU mapping's
    TorchFunctionMode, the monitor's wrappers) names the innermost Python frame, which is
    trainlint's, as its place; the user wants the line of their script that made the call.
    """
    original = warnings._showwarnmsg  # type: ignore[attr-defined]

    def show(message: warnings.WarningMessage) -> None:
        if is_runtime_file(message.filename):
            frame = user_frame(sys._getframe(1))
            if frame is not None:
                message.filename, message.lineno, message.line = frame.f_code.co_filename, frame.f_lineno, None
        original(message)

    warnings._showwarnmsg = show  # type: ignore[attr-defined]
    try:
        yield
    finally:
        warnings._showwarnmsg = original  # type: ignore[attr-defined]
