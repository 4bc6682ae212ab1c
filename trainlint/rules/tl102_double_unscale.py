"""TL102: ``scaler.unscale_(opt)`` twice for one optimizer before ``scaler.update()``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.training_step import (
    CLIP_FUNCTIONS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    removal_edit,
)
from trainlint.analysis.values import Scopes
from trainlint.context import FileContext, descendants
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class DoubleUnscale(Rule):
    """## What it does
    Finds a second `scaler.unscale_(optimizer)` for the same optimizer on a path through the step
    with no `scaler.update()` in between, including one hidden in a helper of the same module
    (`self._clip_gradients()` that unscales again). Two `unscale_` calls in exclusive branches
    (`if`/`else`) are one per path and are not reported. It also follows the loop to the next
    iteration: with gradient accumulation, an `unscale_` on every micro-batch while
    `scaler.update()` runs only on the one that steps (`if (i + 1) % accum == 0:`) unscales again
    on the next micro-batch. (An iteration that skips its update on a check is TL109's finding.)

    ## Why is this bad?
    `GradScaler` records per optimizer that its gradients were unscaled, and the record lasts
    until `update()`. The second call raises
    `RuntimeError: unscale_() has already been called on this optimizer since the last update()`,
    so the step that reaches it crashes the run (typically only on the path that logs or clips,
    hours into training). Were it allowed, it would divide the gradients by the scale a second
    time: 65536 (2**16) times too small at the start.

    The fix removes the later call (and an `if` around it that would be left empty). It is
    offered when the earlier call runs on every path that reaches the later one, so no path loses
    its only `unscale_`. Under accumulation the fix moves the `unscale_`, and the clip right after
    it, into the `if` that steps and updates, so they run once per update on the accumulated
    gradients; it is offered when nothing they assign is read outside that `if`.

    ## Fix safety
    Safe: the removed call raises `RuntimeError` whenever it runs (the fix is offered only where it
    is a second `unscale_` on every path that reaches it), so only runs that would have stopped
    there change; the first `unscale_` still unscales the gradients once. Under accumulation the
    original raises on its second micro-batch (with one micro-batch per step the condition is
    always true and the moved lines run as before), so no run that trains is changed.
    """

    code = "TL102"
    name = "double-unscale"
    summary = "`scaler.unscale_()` called twice for one optimizer before `scaler.update()`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("unscale_",)
    examples = [
        Example(
            code='''
            import torch

            class Trainer:
                def __init__(self, model):
                    self.model = model
                    self.optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
                    self.scaler = torch.cuda.amp.GradScaler()

                def train_step(self, batch):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = self.model(**batch).loss
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    self.scaler.unscale_(self.optimizer)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    return grad_norm
            ''',
            expect=[(15, 9)],
            fixed='''
            import torch

            class Trainer:
                def __init__(self, model):
                    self.model = model
                    self.optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
                    self.scaler = torch.cuda.amp.GradScaler()

                def train_step(self, batch):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = self.model(**batch).loss
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    return grad_norm
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader, optimizer, clip):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                scaler.scale(model(x, y)).backward()
                if clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                else:
                    scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
        ''',
        '''
        import torch

        def train(model, loader, opt_g, opt_d):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                scaler.scale(model(x, y)).backward()
                scaler.unscale_(opt_g)
                scaler.unscale_(opt_d)
                scaler.step(opt_g)
                scaler.step(opt_d)
                scaler.update()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            repeated = _repeated_unscales(step)
            for event in sorted(repeated, key=step.index):
                yield self._finding(ctx, step, event, repeated[event])

    def _finding(self, ctx: FileContext, step: TrainingStep, event: StepEvent, repeat: _Repeat) -> Finding:
        call = f"{event.scaler}.unscale_({event.optimizer})"
        shown = ctx.code(event.anchor) if event.via_helper is not None else call
        error = "`RuntimeError: unscale_() has already been called on this optimizer since the last update()`"
        if repeat.next_iteration:
            message = (
                f"`{shown}` runs on iterations that do not reach `{event.scaler}.update()`, "
                f"so the next iteration unscales `{event.optimizer}` again before any update: PyTorch raises {error}"
            )
            fix = _accumulation_fix(ctx, step, event)
        else:
            message = (
                f"`{shown}` unscales `{event.optimizer}` a second time before `{event.scaler}.update()`: "
                f"PyTorch raises {error}"
            )
            fix = self._fix(ctx, event, call) if repeat.always else None
        return ctx.report(self, event.anchor, message, fix)

    @staticmethod
    def _fix(ctx: FileContext, event: StepEvent, call: str) -> Fix | None:
        statement = event.statement
        if event.via_helper is not None or not _is_only_call(statement, event.node):
            return None
        return ctx.fix([removal_edit(ctx, statement)], "safe", f"Remove the second `{call}`")


@dataclass(frozen=True)
class _Repeat:
    always: bool  # it follows another unscale_ of the optimizer on every path that reaches it
    next_iteration: bool  # it repeats only on the next iteration, which this one left unupdated


def _repeated_unscales(step: TrainingStep) -> dict[StepEvent, _Repeat]:
    """Each `unscale_` that follows another of the same scaler and optimizer since the last
    update: on some path of one iteration, or else on the next iteration after one that ran to
    its end without updating (accumulation; an iteration that skipped is TL109's finding)."""
    repeated: dict[StepEvent, _Repeat] = {}
    updated = {e.scaler for e in step.of_kind(EventKind.SCALER_UPDATE)}
    for event in step.of_kind(EventKind.UNSCALE):
        if step.scaler_of(event) is None or not event.optimizer:
            continue
        now = step.states.before(event)
        again = [s for s in now if s.unscaled_of(event.scaler, event.optimizer)]
        if again:
            repeated[event] = _Repeat(always=len(again) == len(now), next_iteration=False)
        elif event.scaler in updated and any(
            s.unscaled_of(event.scaler, event.optimizer) and not s.after_skip for s in step.states.before_next(event)
        ):
            repeated[event] = _Repeat(always=False, next_iteration=True)
    return repeated


def _accumulation_fix(ctx: FileContext, step: TrainingStep, unscale: StepEvent) -> Fix | None:
    """Move the `unscale_` (and the clips right after it) into the `if` that follows them and
    steps and updates the scaler: they then run on the micro-batch that steps, once per update."""
    statement = unscale.statement
    block = ctx.parent(statement)
    if unscale.via_helper is not None or not _is_only_call(statement, unscale.node):
        return None
    if not isinstance(block, (cst.IndentedBlock, cst.Module)):
        return None
    siblings = list(block.body)
    index = next(i for i, s in enumerate(siblings) if s is statement)
    moved = [statement]
    while index + len(moved) < len(siblings) and _is_clip_statement(ctx, siblings[index + len(moved)]):
        moved.append(siblings[index + len(moved)])
    if index + len(moved) >= len(siblings):
        return None
    target = siblings[index + len(moved)]
    if not isinstance(target, cst.If) or target.orelse is not None or not isinstance(target.body, cst.IndentedBlock):
        return None
    inside = {id(n) for n in descendants(target.body)}
    finishing = [
        e for e in step.events if e.scaler == unscale.scaler and e.kind in (EventKind.SCALER_STEP, EventKind.SCALER_UPDATE)
    ]
    if not finishing or not all(id(e.statement) in inside and e.via_helper is None for e in finishing):
        return None
    if _read_outside(ctx, step, moved, target):
        return None
    code = "\n".join(ctx.code(s.body[0]) for s in moved)  # type: ignore[attr-defined]
    edits = [ctx.remove(s) for s in moved] + [ctx.insert_before(target.body.body[0], code)]
    condition = " ".join(ctx.code(target.test).split())
    what = "and the clip " if len(moved) > 1 else ""
    return ctx.fix(edits, "safe", f"Move `{unscale.scaler}.unscale_({unscale.optimizer})` {what}under `if {condition}:`")


def _is_clip_statement(ctx: FileContext, statement: cst.CSTNode) -> bool:
    """``clip_grad_norm_(...)`` alone on its line, or ``norm = clip_grad_norm_(...)``."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    value = small.value if isinstance(small, (cst.Expr, cst.Assign)) else None
    if isinstance(small, cst.Assign) and not all(isinstance(t.target, cst.Name) for t in small.targets):
        return False
    return isinstance(value, cst.Call) and ctx.qualified_name(value.func) in CLIP_FUNCTIONS


def _read_outside(ctx: FileContext, step: TrainingStep, moved: list[cst.CSTNode], target: cst.If) -> bool:
    """A name the moved lines assign is read outside the `if` they move into (it would be unset
    on the micro-batches that do not step)."""
    assigned = {
        t.target.value
        for s in moved
        for small in s.body  # type: ignore[attr-defined]
        if isinstance(small, cst.Assign)
        for t in small.targets
        if isinstance(t.target, cst.Name)
    }
    if not assigned:
        return False
    allowed = {id(n) for s in (*moved, target.body) for n in descendants(s)}
    scopes = ctx.get(Scopes)
    return any(id(use) not in allowed for name in assigned for use in scopes.uses(name, step.function))


def _is_only_call(statement: cst.CSTNode, call: cst.CSTNode) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and statement.body[0].value is call
    )
