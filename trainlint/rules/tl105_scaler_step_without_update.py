"""TL105: `scaler.step(opt)` with no `scaler.update()` after it in the step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    in_helper,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class ScalerStepWithoutUpdate(Rule):
    """## What it does
    Finds `scaler.step(opt)` on a path of a training step that never calls `scaler.update()`.
    Paths are followed through `if`/`else`: with gradient accumulation
    (`if (i + 1) % accum == 0: scaler.step(opt); scaler.update()`) the iterations that do not
    step need no update and are not reported, but an `if clip:` branch that steps without
    updating is. A step whose iteration ends early (`continue` before the update) is left to
    TL109. The rule is quiet when the scaler is updated elsewhere (another method of the same
    class, such as a per-batch hook, or another function using the same module-level scaler),
    when the scaler is disabled (`enabled=False`) or of unknown origin, in a helper that only
    steps (its caller's step is checked instead), and in a function called once per batch (no
    loop of its own) that receives the scaler as a parameter or belongs to a class derived from
    another module's class: the caller may update between two calls.

    ## Why is this bad?
    A GradScaler keeps, for each optimizer, the state of the current iteration: unscaled or
    not, stepped or not. `scaler.update()` closes the iteration: it adapts the loss scale
    (halves it, 65536 -> 32768, after an overflow; doubles it after 2000 clean steps) and
    resets that state. Without it the next `scaler.step(opt)` raises `RuntimeError: step() has
    already been called since the last update().` (measured, PyTorch 2.x: the first iteration
    runs, the second raises). With 8-step gradient accumulation that is the 16th batch, and with
    `GradScaler(enabled=args.fp16)` only fp16 runs crash, so the bug survives fp32 testing. A
    scaler re-created inside the loop does not crash, but its scale then never adapts.

    The fix inserts `scaler.update()` right after the last `scaler.step` of the path, inside the
    same branch, so accumulation and multi-optimizer steps (`scaler.step(opt_d)`,
    `scaler.step(opt_g)`, one update) stay correct. It is not offered when another path through
    that call already updates the scaler later: a second update would raise.

    ## Evidence
    Measured on CPU (`tests/test_scaler_step_fixes_run.py`): the loop as written raises the
    `RuntimeError` at its second batch; as fixed, it trains a linear regression from loss 19.3
    to 9e-14 in 200 SGD steps.

    ## Fix safety
    Safe: without `scaler.update()` the next `scaler.step()` raises `RuntimeError` (already called
    since the last update), so only runs that would have stopped there change; the update lets the
    loss scale back off after an overflow and grow again, as GradScaler intends.
    """

    code = "TL105"
    name = "scaler-step-without-update"
    summary = "`scaler.step(opt)` without `scaler.update()` in the step"
    level = "error"
    fix_applicability = "safe"
    triggers = ("scale", "Scaler")  # a scaler is named like one or made by a GradScaler
    examples = [
        Example(
            code='''
            import torch

            def train(model, loader, accum_steps=4):
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                scaler = torch.amp.GradScaler("cuda")
                for i, (x, y) in enumerate(loader):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.mse_loss(model(x), y) / accum_steps
                    scaler.scale(loss).backward()
                    if (i + 1) % accum_steps == 0:
                        scaler.step(optimizer)
                        optimizer.zero_grad()
            ''',
            expect=[(11, 13)],
            fixed='''
            import torch

            def train(model, loader, accum_steps=4):
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                scaler = torch.amp.GradScaler("cuda")
                for i, (x, y) in enumerate(loader):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.mse_loss(model(x), y) / accum_steps
                    scaler.scale(loss).backward()
                    if (i + 1) % accum_steps == 0:
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader, accum_steps=4):
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            scaler = torch.amp.GradScaler("cuda")
            for i, (x, y) in enumerate(loader):
                scaler.scale(model(x).sub(y).pow(2).mean() / accum_steps).backward()
                if (i + 1) % accum_steps == 0:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
        ''',
        '''
        import torch

        def train(model, loader):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            for x, y in loader:
                optimizer.zero_grad()
                scaler.scale(model(x).sub(y).pow(2).mean()).backward()
                scaler.step(optimizer)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            yield from self._check_step(ctx, step)

    def _check_step(self, ctx: FileContext, step: TrainingStep) -> Iterator[Finding]:
        flagged = _steps_never_updated(step)
        for event in sorted(flagged, key=step.index):
            scaler = flagged[event]
            if _updated_elsewhere(ctx, step, scaler):
                continue
            message = (
                f"`{scaler}.step({event.optimizer})`{in_helper(event)} is not followed by `{scaler}.update()` "
                f"on this path: the loss scale never adapts and the next `{scaler}.step()` raises "
                f"`RuntimeError: step() has already been called since the last update()`"
            )
            yield ctx.report(self, event.anchor, message, self._fix(ctx, step, event, scaler))

    @staticmethod
    def _fix(ctx: FileContext, step: TrainingStep, event: StepEvent, scaler: str) -> Fix | None:
        """Insert the update after this call, unless some path through it steps or updates the
        same scaler later (a second update there would raise)."""
        if any(
            e.scaler == scaler and e.kind in (EventKind.SCALER_STEP, EventKind.SCALER_UPDATE)
            for e in step.flow.after(event).events
        ):
            return None
        edit = ctx.insert_after(event.statement, f"{scaler}.update()")
        return ctx.fix([edit], "safe", f"Insert `{scaler}.update()` after `{scaler}.step(...)`")


@dataclass(frozen=True)
class _Stepped:
    """On one path: the last `scaler.step` of each known scaler run after a backward, the
    scalers updated anywhere on it, and whether it ended in a skip."""

    backward: bool = False
    last_steps: frozenset[StepEvent] = frozenset()
    updated: frozenset[str | None] = frozenset()
    skipped: bool = False


def _steps_never_updated(step: TrainingStep) -> dict[StepEvent, str]:
    """The last `scaler.step` of each known scaler on a path that runs a backward before it and
    ends (without a skip) never having updated that scaler."""

    def transfer(state: _Stepped, event: StepEvent) -> _Stepped:
        if event.kind in BACKWARD_KINDS:
            return replace(state, backward=True)
        if event.kind is EventKind.SCALER_STEP and step.scaler_of(event) is not None:
            others = frozenset(e for e in state.last_steps if e.scaler != event.scaler)
            return replace(state, last_steps=others | {event} if state.backward else others)
        if event.kind is EventKind.SCALER_UPDATE:
            return replace(state, updated=state.updated | {event.scaler})
        if event.kind is EventKind.SKIP and event.skip_keyword != "if":
            return replace(state, skipped=True)
        return state

    flagged: dict[StepEvent, str] = {}
    for state, _ in step.flow.fold(_Stepped(), transfer).ends:
        if not state.skipped:
            for event in state.last_steps:
                if event.scaler is not None and event.scaler not in state.updated:
                    flagged[event] = event.scaler
    return flagged


def _updated_elsewhere(ctx: FileContext, step: TrainingStep, scaler: str) -> bool:
    """True when the scaler may be updated outside this step's function: by another method of the
    class (`self.scaler`), by another function using the same module-level scaler (a training
    step's own update closes that step, not this one), or, for a step without its own loop, by
    whoever calls it (a caller can update between two calls, not between two iterations)."""
    head = scaler.split(".")[0]
    if head == "self":
        own_class = ctx.enclosing(step.function, cst.ClassDef)
        if step.loop is None and (own_class is None or _has_base_defined_elsewhere(ctx, own_class)):
            return True
        steps = {other.function for other in ctx.get(TrainingSteps).all_steps()}
        return any(
            dotted_name(receiver) == scaler and ctx.enclosing(call, cst.ClassDef) is own_class
            for call, receiver, function in _update_calls(ctx)
            if function not in steps  # another step's own update closes that step, not this one
        )
    if head in _parameter_names(step.function):
        return step.loop is None
    if "." in scaler or _binds(ctx, step.function, head):
        return False  # a local scaler is updated here or nowhere
    steps = {other.function for other in ctx.get(TrainingSteps).all_steps()}
    return any(  # a module-level scaler
        dotted_name(receiver) == scaler and function not in steps and not _binds(ctx, function, head)
        for _, receiver, function in _update_calls(ctx)
    )


_PLAIN_BASES = frozenset({"torch.nn.Module", "torch.nn.modules.module.Module"})


def _has_base_defined_elsewhere(ctx: FileContext, cls: cst.ClassDef) -> bool:
    """A base class of another module (a framework's trainer) may update the scaler itself."""
    local_classes = {s.name.value for s in ctx.module.body if isinstance(s, cst.ClassDef)}
    for base in cls.bases:
        if isinstance(base.value, cst.Name) and base.value.value in local_classes:
            continue
        if ctx.qualified_name(base.value) in _PLAIN_BASES or dotted_name(base.value) == "object":
            continue
        return True
    return False


def _update_calls(ctx: FileContext) -> Iterator[tuple[cst.Call, cst.BaseExpression, cst.FunctionDef | cst.Module]]:
    """Every `X.update()`, with its function (the Module for top-level script code)."""
    for call in ctx.nodes.of(cst.Call):
        if isinstance(call.func, cst.Attribute) and call.func.attr.value == "update" and not call.args:
            yield call, call.func.value, ctx.enclosing(call, cst.FunctionDef) or ctx.module


def _binds(ctx: FileContext, function: cst.FunctionDef | cst.Module, name: str) -> bool:
    """The function assigns the name or takes it as a parameter (so its `name` is its own);
    top-level script code binds only module-level names, which every function shares."""
    if isinstance(function, cst.Module):
        return False
    if name in _parameter_names(function):
        return True
    return any(
        dotted_name(target.target) == name and ctx.enclosing(assign, cst.FunctionDef) is function
        for assign in ctx.nodes.of(cst.Assign)
        for target in assign.targets
    )


def _parameter_names(function: cst.FunctionDef | cst.Module) -> set[str]:
    if isinstance(function, cst.Module):
        return set()
    params = function.params
    return {p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)}
