"""The engine's bound: one stack of the questions being answered, shared by the engines of every
module of a project, so that recursion and cycles (across functions, classes and files) end.

A question met again while it is being answered (``self.model = self.model.cuda()``, a loop that
rebinds ``h = f(h)``, two functions that call each other) contributes nothing new on that path:
the engine treats it as no value, and everything that transforms no value gives "unknown". The
answers computed under such a cut, or past the depth limit, are partial: they are not cached, so
asking them directly later gives the full answer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping
from typing import TypeVar

from trainlint.analysis.values.domain import UNKNOWN, Values

MAX_DEPTH = 48
K = TypeVar("K")


class EvaluationGuard:
    def __init__(self) -> None:
        self._stack: list[Hashable] = []
        self._positions: dict[Hashable, int] = {}
        self._partial: list[bool] = []

    def answer(
        self,
        key: Hashable,
        cache: MutableMapping[K, Values],
        cache_key: K,
        compute: Callable[[], Values],
        on_cycle: Values,
    ) -> Values:
        """``cache[cache_key]``, or ``compute()`` under this guard (cached when complete);
        ``on_cycle`` when the question is already being answered, unknown past the depth limit."""
        found = cache.get(cache_key)
        if found is not None:
            return found
        state = self.enter(key)
        if state == "cycle":
            return on_cycle
        if state == "deep":
            return UNKNOWN
        try:
            result = compute()
        finally:
            complete = self.leave()
        if complete:
            cache[cache_key] = result
        return result

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
