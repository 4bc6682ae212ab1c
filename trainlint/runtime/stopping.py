"""A stop that holds: end the watched code after N steps, N backward passes or N seconds.

The stop is an exception (``StopRun``) raised from the monitor's hooks. A BaseException, so that
``except Exception`` does not catch it; a bare ``except:`` or ``except BaseException`` still
does, and the loop goes on. The monitor notices (one of its hooks is called again after the
stop), stops again at that hook, and when the script has caught the stop SWALLOWS_BEFORE_END
times, ends the run for good: from then on every line of the user's code raises the stop (a line
tracer that re-arms itself), so no handler in the user's code can resume the loop. Frames of
torch and of the standard library are left alone, so their context managers still clean up.

Wall time is checked at every hook, and on the main thread also by an alarm signal, so a loop
that stops calling backward() (an evaluation loop, a hung data loader) ends too.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from trainlint.runtime.records import Ending
from trainlint.runtime.user_code import is_runtime_file, is_user_file

SWALLOWS_BEFORE_END = 2


class StopRun(BaseException):
    """Raised from a hook to end the watched code once a limit is reached."""


class _RelentlessStop:
    """Raises StopRun at every line of the user's code until disarmed.

    A trace function that raises is switched off by Python, so a profile function (which never
    raises) switches it back on at the next call or return.
    """

    def __init__(self) -> None:
        self.armed = False
        self._saved: tuple[Any, Any] = (None, None)

    def arm(self, frame: FrameType | None) -> None:
        if not self.armed:
            self._saved = (sys.gettrace(), sys.getprofile())
            self.armed = True
        self._trace_user_frames(frame)
        sys.setprofile(self._rearm)

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            sys.settrace(self._saved[0])
            sys.setprofile(self._saved[1])

    def _trace_user_frames(self, frame: FrameType | None) -> None:
        while frame is not None:
            if is_user_file(frame.f_code.co_filename):
                frame.f_trace = self._trace
                frame.f_trace_lines = True
            frame = frame.f_back
        sys.settrace(self._trace)

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not self.armed or not is_user_file(frame.f_code.co_filename):
            return None
        if event == "line":
            raise StopRun("the script caught trainlint's stop; ending it at its next line")
        return self._trace

    def _rearm(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.armed and sys.gettrace() is None:
            self._trace_user_frames(frame)


class Stopper:
    """Limits of one run, and how it ended."""

    def __init__(self, *, steps: int | None, seconds: float | None) -> None:
        self.seconds = seconds
        self.ending = Ending(steps_wanted=steps)
        self._deadline: float | None = None
        self._raised = False
        self._relentless = _RelentlessStop()
        self._saved_alarm: Any = None

    def start(self) -> None:
        if self.seconds is not None:
            self._deadline = time.monotonic() + self.seconds
            self._start_alarm(self.seconds)

    def finish(self) -> None:
        self._relentless.disarm()
        self._stop_alarm()

    def stop(self, by: str, limit: float) -> None:
        """End the run now: ``by`` names the limit reached ("steps", "backward passes", "seconds")."""
        self.ending.stopped_by, self.ending.limit = by, limit
        self._raised = True
        raise StopRun(f"stopped after {limit:g} {by}")

    def at_hook(self) -> None:
        """Called when a hook starts: a stop raised earlier was caught by the script, or time is up."""
        if self._raised:
            self.ending.swallowed_stops += 1
            if self.ending.swallowed_stops >= SWALLOWS_BEFORE_END:
                self._relentless.arm(sys._getframe(1))
            raise StopRun(f"the script caught trainlint's stop ({self.ending.swallowed_stops}x); stopping again")
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.stop("seconds", self.seconds or 0.0)

    # -- the alarm: wall time for code that no longer reaches a hook -------------------------

    def _start_alarm(self, seconds: float) -> None:
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return  # checked at every hook instead
        self._saved_alarm = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # again every 0.5 s, if it had to wait

    def _stop_alarm(self) -> None:
        if self._saved_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._saved_alarm)
            self._saved_alarm = None

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._raised or _in_monitor_bookkeeping(frame):
            return  # stopped already (hooks catch a swallowed stop), or the next tick will
        self.stop("seconds", self.seconds or 0.0)


def _in_monitor_bookkeeping(frame: FrameType | None) -> bool:
    """Interrupted inside trainlint's hooks (called from the user's code), not in the user's code."""
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return False
        if is_runtime_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False
