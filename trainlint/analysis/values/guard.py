"""The engine's bound and memory: one stack of the questions being answered, shared by the engines
of every module of a project, so that recursion and cycles (across functions, classes and files)
end, and every answer is computed once per run with the files it was read from.

A question met again while it is being answered (``self.model = self.model.cuda()``, a loop that
rebinds ``h = f(h)``, two functions that call each other) contributes nothing new on that path:
the engine treats it as no value, and everything that transforms no value gives "unknown". The
answers computed under such a cut (below the question that was cut), or past the depth limit, are
partial: they are not cached, so asking them directly later gives the full answer. A cached
answer is therefore the same whichever file asked it first.

Each answer remembers the project files it read (path and digest). Asked again, for another
linted file, it reports them again: that file's cached result must depend on them too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, MutableMapping
from typing import TypeVar

from trainlint.analysis.values.domain import UNKNOWN

MAX_DEPTH = 48
# Questions computed afresh for one linted file, past which the rest are answered "unknown" (and
# not cached). Answers cut by a cycle are not cached, so a name rebound many times in a loop
# (`pointer = getattr(pointer, name)` in twenty branches) can ask the same questions again and
# again: the budget keeps that file to seconds. Ordinary files stay far below it.
MAX_QUESTIONS_PER_FILE = 200_000
K = TypeVar("K")
T = TypeVar("T")
Dependency = tuple[str, str]  # (path, digest) of a file an answer was read from


class EvaluationGuard:
    def __init__(self) -> None:
        self._stack: list[Hashable] = []
        self._positions: dict[Hashable, int] = {}
        self._partial: list[bool] = []
        self._read: list[set[Dependency]] = []  # per question on the stack: the files it read
        self.consulted: dict[str, str] = {}  # every file read for the current linted file
        self.computed = 0  # questions computed afresh for the current linted file

    def answer(
        self,
        key: Hashable,
        cache: MutableMapping[K, tuple[T, frozenset[Dependency]]],
        cache_key: K,
        compute: Callable[[], T],
        on_cycle: T,
        on_deep: T = UNKNOWN,  # type: ignore[assignment]
    ) -> T:
        """``cache[cache_key]``, or ``compute()`` under this guard (cached when complete, with the
        files it read); ``on_cycle`` when the question is already being answered, ``on_deep``
        past the depth limit."""
        found = cache.get(cache_key)
        if found is not None:
            value, read = found
            self.note(read)
            return value
        self.computed += 1
        if self.computed > MAX_QUESTIONS_PER_FILE:
            self._mark_partial(0)  # what depends on this answer is not cached either
            return on_deep
        state = self.enter(key)
        if state == "cycle":
            return on_cycle
        if state == "deep":
            return on_deep
        self._read.append(set())
        try:
            result = compute()
        finally:
            read = self._read.pop()
            complete = self.leave()
        self.note(read)
        if complete:
            cache[cache_key] = (result, frozenset(read))
        return result

    def note(self, read: Iterable[Dependency]) -> None:
        """Files read: recorded for the linted file, and for every question being answered."""
        read = list(read)
        self.consulted.update(read)
        if self._read:
            self._read[-1].update(read)

    def enter(self, key: Hashable) -> str:
        """"entered", "cycle" (the key is already being answered) or "deep" (past the limit).
        Only "entered" must be followed by :meth:`leave`."""
        position = self._positions.get(key)
        if position is not None:
            self._mark_partial(position + 1)
            return "cycle"
        if len(self._stack) >= MAX_DEPTH:
            self._mark_partial(0)
            return "deep"
        self._positions[key] = len(self._stack)
        self._stack.append(key)
        self._partial.append(False)
        return "entered"

    def leave(self) -> bool:
        """Pop the innermost question; True when its answer is complete (may be cached)."""
        key = self._stack.pop()
        del self._positions[key]
        return not self._partial.pop()

    def _mark_partial(self, start: int) -> None:
        for index in range(start, len(self._partial)):
            self._partial[index] = True

    @property
    def depth(self) -> int:
        return len(self._stack)
