"""A forward dataflow over a function's statements, across loop iterations and into calls.

Small and structured (no graph is built): ``if``/``elif``/``else``, ``match``, ``try``/``except``/
``finally`` and ``with`` are walked as Python runs them, and a ``for``/``while`` loop is iterated
to a fixed point, so what the end of one iteration leaves reaches the top of the next (the
question the loop rules ask: "what does the previous iteration, or a validation at the end of
the previous epoch, leave behind?"). ``return``, ``break`` and ``continue`` carry the state to
where they jump.

A client gives the lattice (``join``) and what each call does to the state (``at_call``, called
for every call of a statement in evaluation order: arguments before the call); the walker gives
back the state at the end and the states seen at each call (``seen``), joined over every path and
iteration. Nested ``def``/``class``/``lambda`` bodies are other scopes and are not entered.

Used by :mod:`trainlint.analysis.model_modes`. Not the step's own dataflow
(``training_step.flow.StepFlow``): that one folds over a training step's events (backward,
``step``, ``zero_grad``...), while a model's mode is switched by calls that are no step event
(``model.eval()``, a ``validate(model)`` helper, ``model.train()``) and in functions that hold
no step at all (the epoch loop that calls ``train_one_epoch`` and ``evaluate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import libcst as cst

from trainlint.context import child_nodes

S = TypeVar("S")
_MAX_ROUNDS = 6  # a loop's fixed point: the lattices used are small and finite
_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)


@dataclass
class _Exits(Generic[S]):
    """States that leave a block other than by falling off its end."""

    breaks: list[S] = field(default_factory=list)
    continues: list[S] = field(default_factory=list)
    returns: list[S] = field(default_factory=list)


class StatementFlow(Generic[S]):
    """Walks one scope's body (a ``def``, or a module's top-level code)."""

    def __init__(
        self, join: Callable[[S, S], S], at_call: Callable[[cst.Call, S], S], decided: Mapping[str, bool] | None = None
    ) -> None:
        self.join = join
        self.at_call = at_call
        self.seen: dict[cst.Call, S] = {}  # the state just before each call, over every path
        # Names whose truth is known for this walk (a parameter the call passes `True` or `False`
        # and the function never rebinds): `if is_train:` then takes one side only.
        self.decided = decided or {}

    def run(self, scope: cst.FunctionDef | cst.Module, state: S) -> S:
        """The state when the scope ends (falling off its end or returning)."""
        body = scope.body.body if isinstance(scope, cst.FunctionDef) else scope.body
        exits: _Exits[S] = _Exits()
        end = self.block(body, state, exits)
        return self._join_all([*([end] if end is not None else []), *exits.returns]) or state

    # -- blocks and statements -----------------------------------------------------------------
    def block(self, statements: Sequence[cst.BaseStatement] | cst.BaseSuite, state: S | None, exits: _Exits[S]) -> S | None:
        """None: no path reaches the end of the block."""
        if isinstance(statements, cst.BaseSuite):
            statements = statements.body if isinstance(statements, cst.IndentedBlock) else [statements]  # type: ignore[list-item]
        for statement in statements:
            if state is None:
                return None
            state = self.statement(statement, state, exits)
        return state

    def statement(self, node: cst.CSTNode, state: S, exits: _Exits[S]) -> S | None:
        if isinstance(node, cst.SimpleStatementLine):
            return self.block(node.body, state, exits)  # type: ignore[arg-type]
        if isinstance(node, cst.SimpleStatementSuite):
            return self.block(node.body, state, exits)  # type: ignore[arg-type]
        if isinstance(node, (cst.Return, cst.Raise)):
            state = self.expression(node, state)
            if isinstance(node, cst.Return):
                exits.returns.append(state)
            return None
        if isinstance(node, cst.Break):
            exits.breaks.append(state)
            return None
        if isinstance(node, cst.Continue):
            exits.continues.append(state)
            return None
        if isinstance(node, cst.If):
            return self._if(node, state, exits)
        if isinstance(node, (cst.For, cst.While)):
            return self._loop(node, state, exits)
        if isinstance(node, cst.Try):
            return self._try(node, state, exits)
        if isinstance(node, cst.With):
            for item in node.items:
                state = self.expression(item.item, state)
            return self.block(node.body, state, exits)
        if isinstance(node, cst.Match):
            state = self.expression(node.subject, state)
            ends = [self.block(case.body, state, exits) for case in node.cases]
            return self._join_all([state, *[e for e in ends if e is not None]])
        if isinstance(node, _SCOPES):
            return state  # another scope: defining it runs nothing of its body
        return self.expression(node, state)

    def _if(self, node: cst.If, state: S, exits: _Exits[S]) -> S | None:
        state = self.expression(node.test, state)
        known = self._known(node.test)
        if known is not None:  # one side only
            if known:
                return self.block(node.body, state, exits)
            orelse = node.orelse
            if isinstance(orelse, cst.If):
                return self._if(orelse, state, exits)
            return self.block(orelse.body, state, exits) if isinstance(orelse, cst.Else) else state
        ends = [self.block(node.body, state, exits)]
        orelse = node.orelse
        if isinstance(orelse, cst.If):
            ends.append(self._if(orelse, state, exits))
        elif isinstance(orelse, cst.Else):
            ends.append(self.block(orelse.body, state, exits))
        else:
            ends.append(state)
        return self._join_all([e for e in ends if e is not None])

    def _loop(self, node: cst.For | cst.While, state: S, exits: _Exits[S]) -> S | None:
        header = node.iter if isinstance(node, cst.For) else node.test
        state = self.expression(header, state)
        head = state
        inner: _Exits[S] = _Exits()
        for _ in range(_MAX_ROUNDS):
            inner = _Exits()
            end = self.block(node.body, head, inner)
            back = self._join_all([head, *([end] if end is not None else []), *inner.continues])
            if back == head:
                break
            head = back  # type: ignore[assignment]
        exits.returns.extend(inner.returns)
        after = self._join_all([head, *inner.breaks])
        if node.orelse is not None:
            after = self.block(node.orelse.body, after, exits) if after is not None else None
        return after

    def _try(self, node: cst.Try, state: S, exits: _Exits[S]) -> S | None:
        end = self.block(node.body, state, exits)
        reached = self._join_all([state, *([end] if end is not None else [])])  # a handler may start anywhere
        ends = []
        if node.orelse is not None and end is not None:
            end = self.block(node.orelse.body, end, exits)
        ends.append(end)
        for handler in node.handlers:
            ends.append(self.block(handler.body, reached, exits) if reached is not None else None)
        result = self._join_all([e for e in ends if e is not None])
        if node.finalbody is not None:
            start = result if result is not None else reached
            after = self.block(node.finalbody.body, start, exits) if start is not None else None
            return after if result is not None else None
        return result

    def _known(self, test: cst.BaseExpression) -> bool | None:
        """The truth of ``flag`` or ``not flag`` for a decided name; None otherwise."""
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            inner = self._known(test.expression)
            return None if inner is None else not inner
        return self.decided.get(test.value) if isinstance(test, cst.Name) else None

    # -- expressions ----------------------------------------------------------------------------
    def expression(self, node: cst.CSTNode, state: S) -> S:
        """Every call under the node, arguments before the call they are passed to."""
        for call in _calls_in_order(node):
            previous = self.seen.get(call)
            self.seen[call] = state if previous is None else self.join(previous, state)
            state = self.at_call(call, state)
        return state

    def _join_all(self, states: Sequence[S | None]) -> S | None:
        present = [s for s in states if s is not None]
        if not present:
            return None
        result = present[0]
        for other in present[1:]:
            result = self.join(result, other)
        return result


def _calls_in_order(node: cst.CSTNode) -> Iterator[cst.Call]:
    """Calls under ``node`` in the order they run (post-order), other scopes left out."""
    if isinstance(node, _SCOPES):
        return
    for child in child_nodes(node):
        yield from _calls_in_order(child)
    if isinstance(node, cst.Call):
        yield node


__all__ = ["StatementFlow"]
