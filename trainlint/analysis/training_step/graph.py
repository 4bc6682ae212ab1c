"""The control flow of a step (alternatives, loops, inlined helpers and exits) and the step
itself: its events, optimizers and scalers, and the analyses asked of it (``flow``, ``states``,
``feeding``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING
import weakref

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step.events import (
    EventKind,
    OptimizerInfo,
    ScalerInfo,
    StepEvent,
)
from trainlint.analysis.training_step.syntax import _descendants, _is_none

if TYPE_CHECKING:
    from trainlint.analysis.training_step.dataflow import Feeding, StepStates
    from trainlint.analysis.training_step.flow import StepFlow


# ---------------------------------------------------------------------------------------------
# The step's control flow: a small tree of items, folded over by flow.py.


@dataclass(eq=False)
class _Branch:
    """Exactly one alternative runs (if/else, try body/handlers, match cases)."""

    alternatives: list[list[_Item]]
    # For an ``if``: the decisions each alternative knows, as (key, value) pairs (the test itself,
    # and the parts an ``and`` or ``or`` implies). Two ifs that share a key take matching branches
    # on one path (a flag such as `self.use_amp` does not change inside a step). Empty when the
    # test calls or assigns anything.
    known: tuple[frozenset[tuple[str, bool]], ...] = ()
    # The names and attribute chains the test reads, as the step's function spells them: the
    # decision holds across iterations when the loop assigns none of them.
    reads: frozenset[str] = frozenset()
    # The `if` statement, when it is written in the step's own function (not in a helper).
    own_if: cst.If | None = None


@dataclass(eq=False)
class _Loop:
    """A loop inside the step: its body runs zero times or once (for path purposes), or once."""

    body: list[_Item]
    node: cst.CSTNode
    # The body surely runs: a loop over the optimizers that it unscales or steps, or over a
    # literal non-empty list (`for opt in [opt_g, opt_d]:`).
    at_least_once: bool = False


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


def runs_a_closure(event: StepEvent) -> bool:
    """``opt.step(closure)`` (LBFGS and friends): the closure zeroes and recomputes the gradients
    itself, so nothing placed before the step in the loop body acts on the gradients it uses."""
    call = event.node
    return event.kind is EventKind.OPT_STEP and isinstance(call, cst.Call) and bool(call.args)


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
    # Which decision keys keep their value from one iteration to the next (see flow.py).
    invariant_keys: frozenset[str] = field(default=frozenset(), repr=False)
    _paths: list[list[StepEvent]] | None = field(default=None, repr=False)

    def paths(self) -> list[list[StepEvent]]:
        """Every feasible path through one iteration of the step (if/else, try, inner loops
        run zero times or once), each as its list of events; a SKIP exit ends its path; paths that
        raise are left out. Two ``if``s that test the same thing take matching sides.

        For tests and debugging: their number doubles with each independent ``if`` that holds
        an event. Rules ask ``states``, ``feeding`` or ``flow``, which never list paths."""
        if self._paths is None:

            def extend(path: tuple[StepEvent, ...], event: StepEvent) -> tuple[StepEvent, ...]:
                return (*path, event)

            ends = self.flow.fold((), extend).ends
            self._paths = sorted((list(path) for path, _ in ends), key=lambda p: [self.index(e) for e in p])
        return self._paths

    @cached_property
    def states(self) -> StepStates:
        """What holds before each event, on every path, this iteration and the next."""
        from trainlint.analysis.training_step.dataflow import (
            StepStates,  # built on this module
        )

        return StepStates(self._weak_self())

    @cached_property
    def feeding(self) -> Feeding:
        """The backwards each optimizer step applies, on every path."""
        from trainlint.analysis.training_step.dataflow import Feeding  # built on this module

        return Feeding(self._weak_self())

    @cached_property
    def flow(self) -> StepFlow:
        """The step as a dataflow: fold a state along every path, this iteration and the next."""
        from trainlint.analysis.training_step.flow import (
            StepFlow,  # flow.py builds on this module
        )

        return StepFlow(self._weak_self(), self._items, self.invariant_keys.__contains__)

    def _weak_self(self) -> TrainingStep:
        # The views cached on a step refer to it weakly: a step and its views would otherwise be
        # a cycle holding the file's tree (a script's step is its whole module), left to Python's
        # cyclic collector to scan and free instead of being freed with its file's analyses.
        return weakref.proxy(self)  # type: ignore[return-value]

    def scaler_of(self, event: StepEvent) -> ScalerInfo | None:
        """The known GradScaler of a scaler event (None when unknown, uncertain or disabled)."""
        return self.scalers.get(event.scaler) if event.scaler is not None else None

    def of_kind(self, *kinds: EventKind) -> list[StepEvent]:
        return [e for e in self.events if e.kind in kinds]

    def in_order(self, events: Iterable[StepEvent]) -> list[StepEvent]:
        """The events sorted in the step's source order (``events``)."""
        order = {id(e): i for i, e in enumerate(self.events)}
        return sorted(events, key=lambda e: order.get(id(e), len(order)))

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


def _implied(test: cst.BaseExpression) -> tuple[list[tuple[cst.BaseExpression, _Decision]], ...]:
    """What the body and the ``else`` of ``if test:`` each know, with the expression each
    decision is about: the test, and for ``a and b`` in the body (``a or b`` in the ``else``)
    every part of it, so ``if ok and not skip:`` agrees with a later ``if not skip:``. A part
    that calls something decides nothing; the others still do."""
    sides: tuple[list[tuple[cst.BaseExpression, _Decision]], ...] = ([], [])
    whole = _decision(test)
    if whole is not None:
        sides[0].append((test, whole))
        sides[1].append((test, dataclasses.replace(whole, value=not whole.value)))
    inner, truth = test, 0  # the side on which ``inner`` is true
    while isinstance(inner, cst.UnaryOperation) and isinstance(inner.operator, cst.Not):
        inner, truth = inner.expression, 1 - truth
    if isinstance(inner, cst.BooleanOperation):
        conjunction = isinstance(inner.operator, cst.And)
        side = truth if conjunction else 1 - truth  # where every part has the operator's identity
        for part in _operands(inner, type(inner.operator)):
            decision = _decision(part)
            if decision is not None:
                sides[side].append((part, decision if conjunction else dataclasses.replace(decision, value=not decision.value)))
    return sides


def _operands(expr: cst.BaseExpression, operator: type) -> Iterator[cst.BaseExpression]:
    """The operands of a chain of one boolean operator: ``a``, ``b``, ``c`` of ``a and b and c``."""
    if isinstance(expr, cst.BooleanOperation) and isinstance(expr.operator, operator):
        yield from _operands(expr.left, operator)
        yield from _operands(expr.right, operator)
    else:
        yield expr


def _free_names(expr: cst.BaseExpression) -> set[str]:
    """The names an expression reads (``self`` and ``x`` in ``self.a == x``, not ``a``)."""
    attributes = {id(n.attr) for n in (expr, *_descendants(expr)) if isinstance(n, cst.Attribute)}
    return {n.value for n in (expr, *_descendants(expr)) if isinstance(n, cst.Name) and id(n) not in attributes}


def _dotted_reads(expr: cst.BaseExpression) -> set[str]:
    """The names and attribute chains an expression reads, longest first: ``self.cfg.amp`` and
    ``i`` in ``self.cfg.amp and i % 2``."""
    chains = {
        text
        for n in (expr, *_descendants(expr))
        if isinstance(n, (cst.Name, cst.Attribute)) and (text := dotted_name(n)) is not None
    }
    return {c for c in chains if not any(other.startswith(c + ".") for other in chains)}


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
