"""The control flow of a step: alternatives, loops, inlined helpers and exits, and the paths
through one iteration of it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step.events import (
    BACKWARD_KINDS,
    MAX_PATHS,
    STEP_KINDS,
    EventKind,
    OptimizerInfo,
    ScalerInfo,
    StepEvent,
)
from trainlint.analysis.training_step.syntax import _descendants, _is_none

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------------------------------------
# The step's control flow: a small tree of items, walked by paths().


@dataclass(eq=False)
class _Branch:
    """Exactly one alternative runs (if/else, try body/handlers, match cases)."""

    alternatives: list[list[_Item]]
    # For `if flag:` / `if not flag:` on a plain name or attribute: the flag, and its value in
    # each alternative. Two ifs on the same flag take matching branches on one path (a flag such
    # as `self.use_amp` does not change inside a step).
    flag: str | None = None
    flag_values: tuple[bool, ...] = ()


@dataclass(eq=False)
class _Loop:
    """A loop inside the step: its body runs zero times or once (for path purposes)."""

    body: list[_Item]
    node: cst.CSTNode


@dataclass(eq=False)
class _Inline:
    """A helper's body at its call site: its ``return`` ends the helper, not the step."""

    body: list[_Item]


@dataclass(eq=False)
class _Exit:
    keyword: str  # "return" | "continue" | "break" | "raise"
    node: cst.CSTNode
    loop: cst.CSTNode | None  # the loop a continue/break leaves
    statement: cst.CSTNode
    event: StepEvent | None = None  # set when it is a SKIP of the step


_Item = StepEvent | _Branch | _Loop | _Inline | _Exit
_Flags = tuple[tuple[str, bool], ...]  # the flags a path has decided, in order


@dataclass(frozen=True)
class _Outcome:
    events: tuple[StepEvent, ...]
    exit: _Exit | None  # what ended it; None: it fell off the end
    flags: _Flags = ()

    def key(self) -> tuple[int, ...]:
        return (*(id(e) for e in self.events), id(self.exit), hash(self.flags))


def _run(items: Sequence[_Item], limit: int, flags: _Flags = ()) -> list[_Outcome]:
    """Every way through ``items``: the events met and the exit that ended it."""
    outcomes = [_Outcome((), None, flags)]
    for item in items:
        following: dict[tuple[int, ...], _Outcome] = {}
        for outcome in outcomes:
            if outcome.exit is not None:
                following.setdefault(outcome.key(), outcome)
                continue
            for more in _item_outcomes(item, limit, outcome.flags):
                joined = _Outcome(outcome.events + more.events, more.exit, more.flags)
                following.setdefault(joined.key(), joined)
            if len(following) > limit:
                break
        outcomes = list(following.values())[: limit + 1]
    return outcomes


def _item_outcomes(item: _Item, limit: int, flags: _Flags) -> list[_Outcome]:
    if isinstance(item, StepEvent):
        return [_Outcome((item,), None, flags)]
    if isinstance(item, _Exit):
        return [_Outcome((item.event,) if item.event is not None else (), item, flags)]
    if isinstance(item, _Branch):
        return _branch_outcomes(item, limit, flags)
    if isinstance(item, _Inline):
        return [
            _Outcome(o.events, None if o.exit is not None and o.exit.keyword == "return" else o.exit, o.flags)
            for o in _run(item.body, limit, flags)
        ]
    # a loop: skipped, or its body once; its own continue/break fall through to after the loop
    outcomes = [_Outcome((), None, flags)]
    for o in _run(item.body, limit, flags):
        own = o.exit is not None and o.exit.keyword in ("continue", "break") and o.exit.loop is item.node
        outcomes.append(_Outcome(o.events, None if own else o.exit, o.flags))
    return outcomes


def _branch_outcomes(branch: _Branch, limit: int, flags: _Flags) -> list[_Outcome]:
    decided = dict(flags).get(branch.flag) if branch.flag is not None else None
    outcomes = []
    for index, alternative in enumerate(branch.alternatives):
        taken = flags
        if branch.flag is not None:
            value = branch.flag_values[index]
            if decided is not None and decided != value:
                continue  # this path already took the other side of the same flag
            if decided is None:
                taken = (*flags, (branch.flag, value))
        outcomes.extend(_run(alternative, limit, taken))
    return outcomes


def _flatten(items: Iterable[_Item]) -> Iterator[StepEvent]:
    for item in items:
        if isinstance(item, StepEvent):
            yield item
        elif isinstance(item, _Exit):
            if item.event is not None:
                yield item.event
        elif isinstance(item, _Branch):
            for alternative in item.alternatives:
                yield from _flatten(alternative)
        else:
            yield from _flatten(item.body)


def clears_gradients_of(event: StepEvent, optimizer: str | None) -> bool:
    """A zero_grad that clears this optimizer's gradients. One of unknown reach
    (``model.zero_grad()``, ``p.grad = None``) counts too: rules relying on it then stay quiet."""
    return event.kind is EventKind.ZERO_GRAD and (event.optimizer is None or event.optimizer == optimizer)


def backwards_feeding(path: Sequence[StepEvent]) -> dict[StepEvent, list[StepEvent]]:
    """For each optimizer step on the path (``opt.step()`` or ``scaler.step(opt)``), the
    backwards whose gradients it applies.

    Steps that follow each other share the backwards before them (``scaler.step(opt_d)``,
    ``scaler.step(opt_g)`` after two backwards); a backward that an earlier group of steps already
    applied does not feed a later one; a zero_grad of the optimizer drops the backwards before it.
    """
    feeding: dict[StepEvent, list[StepEvent]] = {}
    pending: list[int] = []  # backwards since the last group of steps, by index on the path
    group: list[int] = []  # backwards feeding the current group of steps
    in_group = False
    for index, event in enumerate(path):
        if event.kind in BACKWARD_KINDS:
            pending.append(index)
            in_group = False
        elif event.kind in STEP_KINDS:
            if not in_group:
                group, pending, in_group = pending, [], True
            feeding[event] = [
                path[b]
                for b in group
                if not any(clears_gradients_of(e, event.optimizer) for e in path[b + 1 : index])
            ]
    return feeding


def runs_a_closure(event: StepEvent) -> bool:
    """``opt.step(closure)`` (LBFGS and friends): the closure zeroes and recomputes the gradients
    itself, so nothing placed before the step in the loop body acts on the gradients it uses."""
    call = event.node
    return event.kind is EventKind.OPT_STEP and isinstance(call, cst.Call) and bool(call.args)


def events_after(path: Sequence[StepEvent], event: StepEvent) -> Sequence[StepEvent]:
    """The events that follow ``event`` on the path (nothing when it is not on it)."""
    for index, candidate in enumerate(path):
        if candidate is event:
            return path[index + 1 :]
    return ()


def scale_text(step: TrainingStep, scaler: str) -> str:
    """``65536x at start`` for a scaler of the step, ``1024x`` when it is built with
    ``init_scale=1024``: the scale the code sets, for messages."""
    info = step.scalers.get(scaler)
    return info.scale_text() if info is not None else ScalerInfo(scaler, None, None).scale_text()


def in_helper(event: StepEvent) -> str:
    """`` (in `_optimizer_step()`)`` for an event found in a helper, else nothing (for messages)."""
    return f" (in `{event.via_helper.name.value}()`)" if event.via_helper is not None else ""


@dataclass
class TrainingStep:
    """A function whose body (or whose loop body, when a loop repeats the step) is one step."""

    function: cst.FunctionDef  # the cst.Module for TrainingSteps.script_step (top-level script code)
    events: list[StepEvent]  # source order, helpers inlined at their call sites
    scalers: dict[str, ScalerInfo]  # the known (enabled or maybe-enabled) GradScalers used in the step
    optimizers: dict[str, OptimizerInfo]  # the optimizers the step uses
    loop: cst.For | cst.While | None  # the loop that repeats the step, when there is one
    uncertain_scalers: frozenset[str] = frozenset()  # used like scalers but of unknown origin: stay quiet
    helpers: frozenset[cst.FunctionDef] = frozenset()  # functions inlined into this step
    _items: list[_Item] = field(default_factory=list, repr=False)
    _paths: list[list[StepEvent]] | None = field(default=None, repr=False)
    _truncated: bool = field(default=False, repr=False)

    def paths(self) -> Iterator[list[StepEvent]]:
        """Every feasible path through one execution of the step (if/else, try, loop bodies run
        zero or once); a SKIP (early continue/return/break) ends its path; paths that raise are
        left out. Two ``if``s whose tests call nothing and read the same thing (``if
        self.use_amp:`` twice; ``if x is None:`` then ``if x is not None:``; ``==`` then ``!=``)
        take matching sides on every path. Bounded: at most MAX_PATHS paths (see ``truncated``)."""
        yield from (list(path) for path in self._walked_paths())

    @property
    def truncated(self) -> bool:
        """The step has more than MAX_PATHS paths and ``paths()`` lists only some: unsure."""
        self._walked_paths()
        return self._truncated

    def _walked_paths(self) -> list[list[StepEvent]]:
        if self._paths is None:
            outcomes = _run(self._items, MAX_PATHS)
            self._truncated = len(outcomes) > MAX_PATHS
            distinct: dict[tuple[int, ...], list[StepEvent]] = {}
            for outcome in outcomes[:MAX_PATHS]:
                if outcome.exit is None or outcome.exit.keyword != "raise":
                    distinct.setdefault(tuple(id(e) for e in outcome.events), list(outcome.events))
            self._paths = list(distinct.values())
        return self._paths

    def paths_through(self, event: StepEvent) -> list[list[StepEvent]]:
        """The paths on which the event runs."""
        return [path for path in self.paths() if any(e is event for e in path)]

    def scaler_of(self, event: StepEvent) -> ScalerInfo | None:
        """The known GradScaler of a scaler event (None when unknown, uncertain or disabled)."""
        return self.scalers.get(event.scaler) if event.scaler is not None else None

    def of_kind(self, *kinds: EventKind) -> list[StepEvent]:
        return [e for e in self.events if e.kind in kinds]

    def index(self, event: StepEvent) -> int:
        """The event's position in source order (``events``)."""
        for position, candidate in enumerate(self.events):
            if candidate is event:
                return position
        raise ValueError("event is not in this step")


_NEGATED_COMPARISONS: dict[type, type] = {cst.IsNot: cst.Is, cst.NotEqual: cst.Equal, cst.NotIn: cst.In}
_SIDE_EFFECTS = (cst.Call, cst.Await, cst.NamedExpr, cst.Yield, cst.Lambda)


@dataclass(frozen=True)
class _Decision:
    """What an ``if`` test decides, as a key that two tests share when they cannot differ."""

    key: str  # "self.use_amp"; "x == 0"; "(i + 1) % accum == 0"
    value: bool  # the key's truth inside the ``if`` body
    dotted: bool  # the key is a name or attribute chain (a helper's parameter can be renamed)


def _decision(test: cst.BaseExpression) -> _Decision | None:
    """``self.use_amp`` True for ``if self.use_amp:``, False for ``if not self.use_amp:``;
    ``if scaler is not None:`` tests ``scaler`` like ``if scaler:``; ``a != b`` is ``a == b``
    negated and ``x not in s`` is ``x in s`` negated. None for a test that calls, assigns or
    awaits anything: its value may change between two ``if``s."""
    if isinstance(test, _SIDE_EFFECTS) or any(isinstance(n, _SIDE_EFFECTS) for n in _descendants(test)):
        return None
    value = True
    while isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test, value = test.expression, not value
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        target = test.comparisons[0]
        negated = _NEGATED_COMPARISONS.get(type(target.operator))
        if negated is not None:
            value = not value
            target = target.with_changes(operator=negated())
        subject = dotted_name(test.left)
        if subject is not None and _is_none(target.comparator) and isinstance(target.operator, cst.Is):
            return _Decision(subject, not value, True)  # `x is None` is `not x` for a scaler or a flag
        test = test.with_changes(comparisons=[target])
    text = dotted_name(test)
    if text is not None:
        return _Decision(text, value, True)
    return _Decision(_canonical_code(test), value, False)


def _free_names(expr: cst.BaseExpression) -> set[str]:
    """The names an expression reads (``self`` and ``x`` in ``self.a == x``, not ``a``)."""
    attributes = {id(n.attr) for n in (expr, *_descendants(expr)) if isinstance(n, cst.Attribute)}
    return {n.value for n in (expr, *_descendants(expr)) if isinstance(n, cst.Name) and id(n) not in attributes}


def _canonical_code(expr: cst.CSTNode) -> str:
    """The expression's code, whitespace collapsed and outer parentheses dropped."""
    if getattr(expr, "lpar", None):
        expr = expr.with_changes(lpar=[], rpar=[])
    return " ".join(cst.Module(body=[]).code_for_node(expr).split())


def _exits(items: Iterable[_Item]) -> Iterator[_Exit]:
    for item in items:
        if isinstance(item, _Exit):
            yield item
        elif isinstance(item, _Branch):
            for alternative in item.alternatives:
                yield from _exits(alternative)
        elif isinstance(item, _Loop):
            yield from _exits(item.body)


def _exclusive(first: tuple[tuple[int, int], ...], second: tuple[tuple[int, int], ...]) -> bool:
    """Whether two places lie in different alternatives of one branch."""
    alternatives = dict(first)
    return any(node in alternatives and alternatives[node] != index for node, index in second)


def _find_loop_body(items: Iterable[_Item], loop: cst.CSTNode) -> list[_Item] | None:
    for item in items:
        if isinstance(item, _Loop):
            if item.node is loop:
                return item.body
            found = _find_loop_body(item.body, loop)
        elif isinstance(item, _Branch):
            found = next((f for a in item.alternatives if (f := _find_loop_body(a, loop)) is not None), None)
        else:
            continue
        if found is not None:
            return found
    return None
