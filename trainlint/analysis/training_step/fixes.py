"""Edits that rules fixing a step share: removing a statement, where to insert in the step,
whether an `unscale_` may be inserted."""

from __future__ import annotations

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
    if any(state.unscaled_of(scaler, optimizer) for state in step.states.before(at)):
        return None

    def updates_or_skips(event: StepEvent) -> bool:
        return (event.kind is EventKind.SCALER_UPDATE and event.scaler == scaler) or event.kind is EventKind.SKIP

    until_update = step.flow.after(at, updates_or_skips)
    if until_update.escapes or any(e.kind is EventKind.SKIP and not _checked(e) for e in until_update.events):
        return None
    everything_after = step.flow.after(at)
    removals = [e for e in everything_after.events if _unscales(e, scaler, optimizer)]
    if any(everything_after.without_start(e) for e in removals):
        return None  # a removed call must never run without ``at`` before it
    return removals


def _unscales(event: StepEvent, scaler: str, optimizer: str) -> bool:
    return event.kind is EventKind.UNSCALE and event.scaler == scaler and event.optimizer == optimizer


def _checked(skip: StepEvent) -> bool:
    """A skip on a gradient or NaN/Inf test (TL109 adds the scaler's update there)."""
    return skip.guard is not None and (skip.guard.checks_finiteness or skip.guard.reads_grads)


def skip_insertion(ctx: FileContext, skip: StepEvent, code: str) -> Edit | None:
    """Insert ``code`` where a skip is taken: before its ``continue``/``return``, or at the start
    of the side of an ``if`` that leaves the step out (an ``else:`` is added when there is none).
    None when the skip is in a helper or there is no place to write it."""
    if skip.kind is not EventKind.SKIP or skip.via_helper is not None:
        return None
    statement = skip.statement
    if skip.skip_keyword != "if" or not isinstance(statement, cst.If):
        return ctx.insert_before(statement, code)
    bypassed = {id(e.statement) for e in skip.bypassed}
    body_runs_the_step = any(id(s) in bypassed for s in (statement.body, *_descendants(statement.body)))
    if not body_runs_the_step:
        return _at_block_start(ctx, statement.body, code)
    orelse = statement.orelse
    if isinstance(orelse, cst.Else):
        return _at_block_start(ctx, orelse.body, code)
    if orelse is not None or not isinstance(statement.body, cst.IndentedBlock) or not statement.body.body:
        return None  # an `elif` chain, or a one-line `if x: y()`
    outer, inner = ctx.statement_indent(statement), ctx.statement_indent(statement.body.body[0])
    if outer is None or inner is None or not inner.startswith(outer):
        return None
    unit = inner[len(outer) :]
    return ctx.insert_after(statement, "else:\n" + "\n".join(unit + line for line in code.splitlines()))


def _at_block_start(ctx: FileContext, block: cst.BaseSuite, code: str) -> Edit | None:
    if not isinstance(block, cst.IndentedBlock) or not block.body:
        return None
    return ctx.insert_before(block.body[0], code)
