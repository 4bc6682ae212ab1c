"""Running deeply recursive work on a thread with a deep stack.

LibCST's native parser recurses once per level of nesting, and so do its code generation and the
analyses that walk its trees. The main thread has 8 MiB of stack: an ``and`` chain of 10,000
operands (valid Python, which Python's own parser keeps flat) overflows it and the process dies of
SIGSEGV, taking the report of every other file with it. A thread can be given a larger stack; its
pages are only reserved, so an ordinary file touches a few of them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

STACK_BYTES = 512 * 1024 * 1024
# Python frames allowed on the deep stack: LibCST's position and code generation take about five
# frames per level of nesting (measured), so this covers DEEP_NESTING_LIMIT with room to spare.
RECURSION_LIMIT = 150_000
# Levels of nesting in LibCST's tree that trainlint parses and checks: on the deep stack (an `and`
# chain of 20,000 operands touches about 140 MiB of it), and where no such thread can be made.
DEEP_NESTING_LIMIT = 20_000
SHALLOW_NESTING_LIMIT = 1_000

_state = threading.local()
_lock = threading.Lock()
_raised = 0
_saved_limit = 0


def on_deep_stack() -> bool:
    return getattr(_state, "deep", False)


def nesting_limit() -> int:
    """How deep a tree the calling thread may build and walk."""
    return DEEP_NESTING_LIMIT if on_deep_stack() else SHALLOW_NESTING_LIMIT


def call_with_deep_stack(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a thread with a STACK_BYTES stack (in the calling thread when it
    already is one, or when no such thread can be started); its exception is re-raised here."""
    if on_deep_stack():
        return function(*args)
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        _state.deep = True
        try:
            outcome.append((True, function(*args)))
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            outcome.append((False, exc))

    # A daemon: Ctrl-C in the waiting thread ends the process without waiting for a long parse.
    thread = threading.Thread(target=run, name="trainlint-deep-stack", daemon=True)
    try:
        with _lock:  # the stack size is a process-wide setting, read when a thread starts
            previous = threading.stack_size(STACK_BYTES)
            try:
                thread.start()
            finally:
                threading.stack_size(previous)
    except (RuntimeError, ValueError, MemoryError):  # no such stack here: a capped address space
        return function(*args)
    thread.join()
    succeeded, value = outcome[0]
    if not succeeded:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


@contextmanager
def deep_recursion() -> Iterator[None]:
    """Python's recursion limit raised to RECURSION_LIMIT while the block runs on a deep stack
    (the limit is process-wide: it is restored when the last such block ends). Elsewhere the
    limit stays as it is, since a raised limit on a small stack trades an error for a crash."""
    global _raised, _saved_limit
    if not on_deep_stack():
        yield
        return
    with _lock:
        if _raised == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, RECURSION_LIMIT))
        _raised += 1
    try:
        yield
    finally:
        with _lock:
            _raised -= 1
            if _raised == 0:
                sys.setrecursionlimit(_saved_limit)
