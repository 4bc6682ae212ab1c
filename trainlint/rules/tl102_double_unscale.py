"""TL102: ``scaler.unscale_(opt)`` twice for one optimizer before ``scaler.update()``."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.training_step import (
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    removal_edit,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class DoubleUnscale(Rule):
    """## What it does
    Finds a second `scaler.unscale_(optimizer)` for the same optimizer on a path through the step
    with no `scaler.update()` in between, including one hidden in a helper of the same module
    (`self._clip_gradients()` that unscales again). Two `unscale_` calls in exclusive branches
    (`if`/`else`) are one per path and are not reported.

    ## Why is this bad?
    `GradScaler` records per optimizer that its gradients were unscaled, and the record lasts
    until `update()`. The second call raises
    `RuntimeError: unscale_() has already been called on this optimizer since the last update()`,
    so the step that reaches it crashes the run (typically only on the path that logs or clips,
    hours into training). Were it allowed, it would divide the gradients by the scale a second
    time: 65536 (2**16) times too small at the start.

    The fix removes the later call (and an `if` around it that would be left empty). It is
    offered when the earlier call runs on every path that reaches the later one, so no path loses
    its only `unscale_`.

    ## Fix safety
    Safe: the removed call raises `RuntimeError` whenever it runs (the fix is offered only where it
    is a second `unscale_` on every path that reaches it), so only runs that would have stopped
    there change; the first `unscale_` still unscales the gradients once.
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
                yield self._finding(ctx, step, event, always=repeated[event])

    def _finding(self, ctx: FileContext, step: TrainingStep, event: StepEvent, always: bool) -> Finding:
        call = f"{event.scaler}.unscale_({event.optimizer})"
        shown = ctx.code(event.anchor) if event.via_helper is not None else call
        message = (
            f"`{shown}` unscales `{event.optimizer}` a second time before `{event.scaler}.update()`: "
            f"PyTorch raises `RuntimeError: unscale_() has already been called on this optimizer since the last update()`"
        )
        fix = self._fix(ctx, event, call) if always else None
        return ctx.report(self, event.anchor, message, fix)

    @staticmethod
    def _fix(ctx: FileContext, event: StepEvent, call: str) -> Fix | None:
        statement = event.statement
        if event.via_helper is not None or not _is_only_call(statement, event.node):
            return None
        return ctx.fix([removal_edit(ctx, statement)], "safe", f"Remove the second `{call}`")


def _repeated_unscales(step: TrainingStep) -> dict[StepEvent, bool]:
    """Each `unscale_` that follows another of the same scaler and optimizer since the last
    update on some path -> whether it does so on every path that reaches it."""
    repeated: dict[StepEvent, bool] = {}
    single: set[StepEvent] = set()
    for path in step.paths():
        unscaled: set[tuple[str | None, str | None]] = set()
        for event in path:
            if event.kind is EventKind.SCALER_UPDATE:
                unscaled = {key for key in unscaled if key[0] != event.scaler}
            elif event.kind is EventKind.UNSCALE and step.scaler_of(event) is not None and event.optimizer:
                key = (event.scaler, event.optimizer)
                if key in unscaled:
                    repeated[event] = True
                else:
                    unscaled.add(key)
                    single.add(event)
    return {event: event not in single for event in repeated}


def _is_only_call(statement: cst.CSTNode, call: cst.CSTNode) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and statement.body[0].value is call
    )
