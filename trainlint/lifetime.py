"""How a run ends: SIGTERM and Ctrl-C stop it with a message, and pool workers die with the main
process instead of writing fixes for a run nobody waits for.

A worker asks the kernel to send it SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``;
elsewhere a thread watches the parent), turns SIGTERM into ``SystemExit`` so that a fix being
written removes its temporary file on the way out, and ignores SIGINT: Ctrl-C reaches the whole
process group, and the main process is the one that decides to stop and terminates its workers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import NoReturn

_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None  # set in a pool worker


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; the command line exits 128 + the signal's number."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def exit_status(interruption: KeyboardInterrupt) -> int:
    return 128 + (interruption.signal_number if isinstance(interruption, Interrupted) else signal.SIGINT)


def signal_name(interruption: KeyboardInterrupt) -> str:
    number = interruption.signal_number if isinstance(interruption, Interrupted) else signal.SIGINT
    return signal.Signals(number).name


def _raise_interrupted(signal_number: int, frame: FrameType | None) -> None:
    raise Interrupted(signal_number)


def stop_on_termination() -> None:
    """In the main process: SIGTERM (and SIGHUP, a closed terminal) raise ``Interrupted`` in the
    main thread, as Ctrl-C raises KeyboardInterrupt, so the run can stop its workers and say so."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, _raise_interrupted)


def leave(status: int) -> NoReturn:
    """Exit now with the output flushed, without running interpreter shutdown: after an
    interruption the process pool's exit hooks can write to pipes of workers already stopped
    and print a traceback after the one line the user was promised."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


# -- in a pool worker ------------------------------------------------------------------------------
def become_worker(parent_pid: int) -> None:
    """Called first in each pool worker: die with the parent, stop cleanly on SIGTERM, leave
    Ctrl-C to the parent."""
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if not _die_with_parent_linux():
        threading.Thread(target=_watch_parent, name="trainlint-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told to tell us
        os._exit(1)


def parent_is_gone() -> bool:
    """In a worker whose parent has died (it was killed with SIGKILL): nothing may be written."""
    return _parent_pid is not None and os.getppid() != _parent_pid


def _exit_on_signal(signal_number: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signal_number)


def _die_with_parent_linux() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only in workers: the command line's start-up does not pay for it
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent() -> None:
    while not parent_is_gone():
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)


# -- in the main process ---------------------------------------------------------------------------
def terminate(processes: Iterable[object]) -> None:
    """SIGTERM to each live worker (each removes a half-written temporary file and exits), then
    SIGKILL to any still alive after a second."""
    alive = [p for p in processes if getattr(p, "is_alive", lambda: False)()]
    for process in alive:
        process.terminate()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 1.0
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))  # type: ignore[attr-defined]
        if process.is_alive():  # type: ignore[attr-defined]
            process.kill()  # type: ignore[attr-defined]
            process.join()  # type: ignore[attr-defined]
