"""The step as a dataflow: a state folded along every feasible path through the step's control
flow, within one iteration or across the training loop's back edge into the next, without
listing the paths.

A rule describes what it tracks as a hashable state and a transfer (``state, event -> state``,
or None once the path no longer matters to it); ``StepFlow.fold`` runs it over the step and
answers with the states each event can run in (``Fold.before``, ``Fold.before_next``) and the
states an iteration can end in. Paths that reach the same point in the same state with the same
decisions are one: twenty logging ``if``s that leave the state alone add no work, so no step is
too long to analyse and no rule has to give up on one.

Decisions: ``if self.use_amp:`` twice takes matching sides on one path (the builder gives both
branches the same key). Across the back edge only the decisions on values the loop does not
change survive: a config flag takes the same side on every iteration, ``(i + 1) % accum == 0``
is free on the next one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from trainlint.analysis.training_step.events import StepEvent
from trainlint.analysis.training_step.graph import _Branch, _Exit, _Inline, _Item

if TYPE_CHECKING:
    from trainlint.analysis.training_step.graph import TrainingStep

S = TypeVar("S", bound=Hashable)
Transfer = Callable[[S, StepEvent], "S | None"]

# Past this many distinct (state, decisions) pairs at one point, decisions are dropped: the fold
# stays polynomial and becomes path-insensitive about ``if``s (it may see a path whose two ifs on
# one flag disagree). Real steps stay far below it; ``Fold.merged`` says when it happened.
MAX_CONFIGURATIONS = 2048

_Decisions = frozenset[tuple[str, bool]]


@dataclass(frozen=True)
class _Config(Generic[S]):
    state: S
    decisions: _Decisions = frozenset()
    exit: _Exit | None = None


@dataclass
class Fold(Generic[S]):
    """What a fold saw: the states each event runs in, on this iteration and on the next one, and
    the states an iteration ends in with how it ended (None: it ran to the end of the body;
    "continue", "return", "break")."""

    _before: dict[int, set[S]] = field(default_factory=dict)
    _before_next: dict[int, set[S]] = field(default_factory=dict)
    ends: set[tuple[S, str | None]] = field(default_factory=set)
    merged: bool = False  # decisions were dropped somewhere (see MAX_CONFIGURATIONS)

    def before(self, event: StepEvent) -> set[S]:
        """The states the event can run in, on the iteration the fold started."""
        return self._before.get(id(event), set())

    def before_next(self, event: StepEvent) -> set[S]:
        """The states the event can run in on the next iteration (folds with ``next_iteration``)."""
        return self._before_next.get(id(event), set())

    def reached(self, event: StepEvent) -> bool:
        return id(event) in self._before or id(event) in self._before_next


@dataclass(frozen=True)
class Reach:
    """What ``StepFlow.after`` found."""

    events: list[StepEvent]  # in the step's order
    escapes: bool  # some path from the start ends the iteration without meeting ``until``
    fold: Fold[bool] = field(repr=False)

    def without_start(self, event: StepEvent) -> bool:
        """Some path reaches the event without running the start first."""
        return False in self.fold.before(event)


class StepFlow:
    """Folds over one step's control flow (``step.flow``)."""

    def __init__(self, step: TrainingStep, items: list[_Item], invariant: Callable[[str], bool]) -> None:
        self.step = step
        self._items = items
        self._invariant = invariant  # whether a decision key keeps its value across iterations

    def fold(
        self,
        initial: S,
        transfer: Transfer[S],
        *,
        next_iteration: bool = False,
        carry: Callable[[S], S | None] | None = None,
    ) -> Fold[S]:
        """Run ``transfer`` along every feasible path from the start of the step. With
        ``next_iteration``, every iteration that goes on to the next one (it ran to the end of
        the loop body, or a ``continue`` of the step's loop; for a step without a loop, any
        ``return``: the function is called again) carries its state, through ``carry`` when
        given (None drops it), into a second pass."""
        result: Fold[S] = Fold()
        walker = _Walker(transfer, result._before, result)
        ended = walker.run(self._items, [_Config(initial)])
        carried: list[_Config[S]] = []
        for config in ended:
            how = self._ending(config.exit)
            if how == "raise":
                continue
            result.ends.add((config.state, how))
            if next_iteration and self._goes_on(how):
                state = carry(config.state) if carry is not None else config.state
                if state is not None:
                    kept = frozenset(d for d in config.decisions if self._invariant(d[0]))
                    carried.append(_Config(state, kept))
        if carried:
            _Walker(transfer, result._before_next, result).run(self._items, carried)
        return result

    def after(
        self, start: StepEvent, until: Callable[[StepEvent], bool] | None = None, *, next_iteration: bool = False
    ) -> Reach:
        """What can run after ``start``: each path followed from it up to and including its first
        event for which ``until`` holds (to the end of the iteration when none does, and on into
        the next one with ``next_iteration``)."""
        reached: dict[int, StepEvent] = {}

        def transfer(started: bool, event: StepEvent) -> bool | None:
            if not started:
                return event is start
            reached.setdefault(id(event), event)
            return None if until is not None and until(event) else True

        fold = self.fold(False, transfer, next_iteration=next_iteration)
        escapes = any(started for started, _ in fold.ends)
        return Reach(self.step.in_order(reached.values()), escapes, fold)

    def _ending(self, exit_: _Exit | None) -> str | None:
        if exit_ is None:
            return None
        if exit_.keyword in ("continue", "break") and exit_.loop is not self.step.loop:
            return "break"  # leaves a loop around the step's loop: the training ends here
        return exit_.keyword

    def _goes_on(self, how: str | None) -> bool:
        if how in (None, "continue"):
            return True
        return how == "return" and self.step.loop is None


class _Walker(Generic[S]):
    def __init__(self, transfer: Transfer[S], before: dict[int, set[S]], fold: Fold[S]) -> None:
        self.transfer = transfer
        self.before = before
        self.fold = fold

    def run(self, items: Iterable[_Item], configs: list[_Config[S]]) -> list[_Config[S]]:
        for item in items:
            following: dict[_Config[S], None] = {}
            for config in configs:
                if config.exit is not None:
                    following[config] = None
                    continue
                following.update(dict.fromkeys(self.item(item, config)))
            configs = self._bounded(list(following))
            if not configs:
                break
        return configs

    def _bounded(self, configs: list[_Config[S]]) -> list[_Config[S]]:
        if len(configs) <= MAX_CONFIGURATIONS:
            return configs
        self.fold.merged = True
        return list(dict.fromkeys(dataclasses.replace(c, decisions=frozenset()) for c in configs))

    def item(self, item: _Item, config: _Config[S]) -> list[_Config[S]]:
        if isinstance(item, StepEvent):
            return self.event(item, config)
        if isinstance(item, _Exit):
            configs = self.event(item.event, config) if item.event is not None else [config]
            return [dataclasses.replace(c, exit=item) for c in configs]
        if isinstance(item, _Branch):
            return self.branch(item, config)
        if isinstance(item, _Inline):  # the helper's return ends the helper, not the step
            return [
                dataclasses.replace(c, exit=None) if c.exit is not None and c.exit.keyword == "return" else c
                for c in self.run(item.body, [config])
            ]
        # a loop inside the step: skipped, or its body once; its own continue/break fall through
        through = [
            dataclasses.replace(c, exit=None)
            if c.exit is not None and c.exit.keyword in ("continue", "break") and c.exit.loop is item.node
            else c
            for c in self.run(item.body, [config])
        ]
        return through if item.at_least_once else [config, *through]

    def event(self, event: StepEvent, config: _Config[S]) -> list[_Config[S]]:
        self.before.setdefault(id(event), set()).add(config.state)
        state = self.transfer(config.state, event)
        return [] if state is None else [dataclasses.replace(config, state=state)]

    def branch(self, branch: _Branch, config: _Config[S]) -> list[_Config[S]]:
        decided = dict(config.decisions)
        outcomes: list[tuple[int, _Config[S]]] = []
        added: set[str] = set()
        for index, alternative in enumerate(branch.alternatives):
            known = branch.known[index] if branch.known else frozenset()
            if any(decided.get(key, value) != value for key, value in known):
                continue  # this path already took the other side of the same test
            new = {(key, value) for key, value in known if key not in decided}
            added |= {key for key, _ in new}
            start = dataclasses.replace(config, decisions=config.decisions | new) if new else config
            outcomes.extend((index, c) for c in self.run(alternative, [start]))
        if not added:
            return [c for _, c in outcomes]
        return _forget_irrelevant(added, outcomes)


def _forget_irrelevant(keys: set[str], outcomes: list[tuple[int, _Config[S]]]) -> list[_Config[S]]:
    """Decisions of a branch all of whose sides end in the same place are forgotten: they cannot
    make two later ``if``s disagree in a way that matters, and keeping them would double the work."""

    def without(config: _Config[S]) -> _Config[S]:
        return dataclasses.replace(config, decisions=frozenset(d for d in config.decisions if d[0] not in keys))

    sides: dict[_Config[S], set[int]] = {}
    for index, config in outcomes:
        sides.setdefault(without(config), set()).add(index)
    kept: dict[_Config[S], None] = {}
    for _, config in outcomes:
        kept[without(config) if len(sides[without(config)]) > 1 else config] = None
    return list(kept)
