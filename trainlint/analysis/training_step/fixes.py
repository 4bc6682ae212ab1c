"""Edits that rules fixing a step share: removing a statement, where to insert in the step,
whether an `unscale_` may be inserted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.training_step.events import EventKind, StepEvent
from trainlint.analysis.training_step.graph import TrainingStep
from trainlint.analysis.training_step.syntax import _descendants

if TYPE_CHECKING:
    from trainlint.context import FileContext
    from trainlint.findings import Edit


# ---------------------------------------------------------------------------------------------
# Shared fix helpers (rules that insert or remove scaler calls).


def removal_edit(ctx: FileContext, statement: cst.CSTNode) -> Edit | None:
    """Delete a one-call statement line; when it is the only statement of an ``if`` without
    ``else`` whose test calls nothing, delete that ``if`` instead. None when neither is safe."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    block = ctx.parent(statement)
    owner = ctx.parent(block) if block is not None else None
    if isinstance(block, cst.IndentedBlock) and len(block.body) == 1:
        if isinstance(owner, cst.If) and owner.orelse is None and not _calls_anything(owner.test):
            parent = ctx.parent(owner)
            if isinstance(parent, cst.IndentedBlock) and len(parent.body) > 1:
                return ctx.remove(owner)
        return None
    return ctx.remove(statement)


def statement_in_step(ctx: FileContext, step: TrainingStep, event: StepEvent) -> cst.CSTNode:
    """The statement of the step's own block that holds the event: a line inside a loop of the
    step (``for p in model.parameters():``) gives that loop, so code inserted before it runs
    once per step, not once per parameter."""
    outermost = event.statement
    for ancestor in ctx.ancestors(event.statement):
        if ancestor is step.loop or ancestor is step.function:
            break
        if isinstance(ancestor, (cst.For, cst.While)):
            outermost = ancestor
    return outermost


def _calls_anything(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Call) or any(isinstance(n, cst.Call) for n in _descendants(expr))


def unscale_insertion(step: TrainingStep, at: StepEvent, scaler: str, optimizer: str) -> list[StepEvent] | None:
    """Whether ``scaler.unscale_(optimizer)`` may be run right at ``at`` (after a backward, or
    before a clip), and which later ``unscale_`` calls of the same optimizer it makes redundant.

    Safe when, on every path through ``at``: no ``unscale_`` of that optimizer already ran since
    the last update; after ``at`` the path reaches ``scaler.update()`` or a skip on a gradient or
    NaN/Inf test (TL109 adds the update there), so the next step does not unscale twice; and each
    later ``unscale_`` to remove is reached only through ``at``. Returns the calls to remove, or
    None when it is not safe (gradient accumulation that skips the update, for example)."""
    removals: dict[int, StepEvent] = {}
    for path in step.paths():
        position = next((i for i, e in enumerate(path) if e is at), None)
        if position is None:
            continue
        later = path[position + 1 :]
        if any(_unscales(e, scaler, optimizer) for e in _since_update(path[:position], scaler)):
            return None
        if not _reaches_update_or_checked_skip(later, scaler):
            return None
        for event in later:
            if _unscales(event, scaler, optimizer):
                removals[id(event)] = event
    for path in step.paths():  # a removed call must never run without ``at`` before it
        seen_at = False
        for event in path:
            seen_at = seen_at or event is at
            if id(event) in removals and not seen_at:
                return None
    return list(removals.values())


def _unscales(event: StepEvent, scaler: str, optimizer: str) -> bool:
    return event.kind is EventKind.UNSCALE and event.scaler == scaler and event.optimizer == optimizer


def _since_update(events: Sequence[StepEvent], scaler: str) -> Sequence[StepEvent]:
    for index in range(len(events) - 1, -1, -1):
        if events[index].kind is EventKind.SCALER_UPDATE and events[index].scaler == scaler:
            return events[index + 1 :]
    return events


def _reaches_update_or_checked_skip(events: Sequence[StepEvent], scaler: str) -> bool:
    for event in events:
        if event.kind is EventKind.SCALER_UPDATE and event.scaler == scaler:
            return True
        if event.kind is EventKind.SKIP:
            guard = event.guard
            return guard is not None and (guard.checks_finiteness or guard.reads_grads)
    return False
