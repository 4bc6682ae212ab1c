"""TL106: a plain `loss.backward()` whose gradients `scaler.step(opt)` then unscales."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import libcst as cst

from trainlint.analysis.training_step import (
    STEP_KINDS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    in_helper,
)
from trainlint.analysis.training_step import (
    scale_text as _scale,
)
from trainlint.context import FileContext
from trainlint.findings import Applicability, Finding, Fix
from trainlint.rule import Example, Rule


@dataclass
class _Consumers:
    """The optimizer steps one backward feeds, over every path through it."""

    scaler_steps: dict[str, StepEvent] = field(default_factory=dict)  # known scaler -> a `scaler.step` it feeds
    other: bool = False  # it also feeds `opt.step()` or the step of an unknown scaler


class UnscaledBackwardWithScalerStep(Rule):
    """## What it does
    Finds a backward that does not go through the scaler (`loss.backward()`,
    `torch.autograd.backward(loss)`) whose gradients a `scaler.step(opt)` of the same step then
    applies: the backward and the step are on one path, with no `zero_grad` and no other
    optimizer step between them. This includes an auxiliary loss backpropagated unscaled next to
    a scaled main loss. Disabled scalers (`enabled=False`) and scalers of unknown origin are not
    reported.

    ## Why is this bad?
    `scaler.step(opt)` first unscales: it divides every gradient by the loss scale, 65536 (2**16)
    at the start. Gradients that were never multiplied come out 65536 times too small. With SGD
    at lr 0.1 the effective learning rate becomes 0.1 / 65536 = 1.5e-6: each step moves the
    weights 1.5e-5 of the intended distance, and the loss stays flat. It can get worse with
    time: unscaled gradients never overflow, so unless the scaled part of the step does, the
    scaler doubles its scale every 2000 steps, and after 20,000 steps the gradients are 6.7e7
    times too small. Adam is nearly blind to a constant factor, but once the shrunken
    gradients fall near its `eps` (1e-8) the updates shrink too, and AdamW's weight decay,
    which is not divided, dominates. This is silent
    whenever the scaler scales something else in the step (a main loss next to an unscaled
    auxiliary loss, a GAN's discriminator next to its unscaled generator). When nothing in the
    step is scaled, the first `scaler.step` raises `AssertionError: Attempted step but _scale is
    None` instead.

    The fix backpropagates `scaler.scale(loss)`. It is offered only when every path through the
    backward ends at a `scaler.step` of that scaler (or at no step, as in the accumulation
    iterations): when an fp32 branch feeds the same backward to `opt.step()`, scaling it there
    would break that branch, so the finding has no automatic fix. The rule is quiet for
    `if amp: scaler.scale(loss).backward() else: loss.backward()` with a scaler made with
    `enabled=amp`: the plain branch runs only when the scaler is off, and `scaler.step` is then
    a plain `opt.step()`.

    ## Evidence
    Measured on CPU (`tests/test_scaler_step_fixes_run.py`): two linear regressions share one
    scaler, the first scaled, the second backpropagated plainly; after 200 SGD steps at lr 0.1
    the second one's loss went from 17.64 to 17.62. As fixed, it fell to 8e-14.

    ## Fix safety
    Safe when nothing else in the step is scaled by that scaler: the original then fails at the
    first `scaler.step` (`_scale is None`) or applies every gradient divided by the loss scale, so
    no run trains as written. Unsafe when another backward of the same step is scaled (a main loss
    next to this auxiliary one, a discriminator next to this generator): the original trains with
    this loss's gradients divided by 65536, in effect switched off, and the fix switches it on at
    the weight written, which changes what the model learns.
    """

    code = "TL106"
    name = "unscaled-backward-with-scaler-step"
    summary = "Backward not scaled while `scaler.step(opt)` unscales the gradients"
    level = "error"
    fix_applicability = "safe"
    triggers = ("scale", "Scaler")  # a scaler is named like one or made by a GradScaler
    examples = [
        Example(
            code='''
            import torch

            def train(model, loader):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    optimizer.zero_grad()
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            expect=[(10, 9)],
            fixed='''
            import torch

            def train(model, loader):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    optimizer.zero_grad()
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.mse_loss(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.cuda.amp.GradScaler(enabled=False)
            for x, y in loader:
                optimizer.zero_grad()
                model(x).sub(y).pow(2).mean().backward()
                scaler.step(optimizer)
                scaler.update()
        ''',
        '''
        import torch

        def train(model, loader, use_amp):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                optimizer.zero_grad()
                loss = model(x).sub(y).pow(2).mean()
                if use_amp:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            yield from self._check_step(ctx, step)

    def _check_step(self, ctx: FileContext, step: TrainingStep) -> Iterator[Finding]:
        consumers = _consumers_of_plain_backwards(step)
        for backward in sorted(consumers, key=step.index):
            found = consumers[backward]
            if not found.scaler_steps:
                continue
            scaler, scaler_step = next(iter(found.scaler_steps.items()))
            if _fp32_alternative(step, backward, scaler):
                continue
            message = (
                f"this backward{in_helper(backward)} is not scaled, but `{scaler}.step({scaler_step.optimizer})` "
                f"divides its gradients by the loss scale ({_scale(step, scaler)}): the steps are that many times too small"
            )
            fix = None
            if not found.other and len(found.scaler_steps) == 1:
                fix = _scale_the_loss(ctx, backward, scaler, _fix_safety(step, scaler))
            yield ctx.report(self, backward.anchor, message, fix)


def _consumers_of_plain_backwards(step: TrainingStep) -> dict[StepEvent, _Consumers]:
    consumers: dict[StepEvent, _Consumers] = {}
    for step_event in step.of_kind(*STEP_KINDS):
        for feed in step.feeding.of(step_event):
            for backward in feed.backwards:
                if backward.kind is not EventKind.BACKWARD:
                    continue
                found = consumers.setdefault(backward, _Consumers())
                if step_event.kind is EventKind.SCALER_STEP and step.scaler_of(step_event) is not None:
                    found.scaler_steps.setdefault(step_event.scaler, step_event)  # type: ignore[arg-type]
                else:
                    found.other = True
    return consumers


def _fp32_alternative(step: TrainingStep, backward: StepEvent, scaler: str) -> bool:
    """True for `if amp: scaler.scale(loss).backward() else: loss.backward()` with a scaler whose
    `enabled` is decided at run time: the plain branch is the one that runs with the scaler off,
    where `scaler.step` is a plain `opt.step()`."""
    info = step.scalers.get(scaler)
    if info is None or info.enabled is not None:
        return False
    scaled = [e for e in step.events if e.kind is EventKind.SCALED_BACKWARD and e.scaler == scaler]
    after_plain = step.flow.after(backward).events
    return any(
        other not in after_plain and backward not in step.flow.after(other).events for other in scaled
    )


def _fix_safety(step: TrainingStep, scaler: str) -> Applicability:
    """Unsafe when the scaler scales another backward of the step: this loss then trained with its
    gradients divided by the scale, in effect switched off, and the fix switches it on."""
    scales_another = any(e.kind is EventKind.SCALED_BACKWARD and e.scaler == scaler for e in step.events)
    return "unsafe" if scales_another else "safe"


def _scale_the_loss(ctx: FileContext, backward: StepEvent, scaler: str, applicability: Applicability) -> Fix | None:
    """`loss.backward(...)` -> `scaler.scale(loss).backward(...)`; `torch.autograd.backward(loss)`
    -> `torch.autograd.backward(scaler.scale(loss))`."""
    call, loss = backward.node, backward.target
    if backward.via_helper is not None or not isinstance(call, cst.Call) or loss is None:
        return None  # the helper may serve other steps, and the scaler's name may not reach it
    scaled = cst.Call(func=cst.parse_expression(f"{scaler}.scale"), args=[cst.Arg(_without_parentheses(loss))])
    if ctx.qualified_name(call.func) == "torch.autograd.backward":
        if all(arg.value is not loss for arg in call.args):
            return None
        new_call = call.with_changes(args=[arg.with_changes(value=scaled) if arg.value is loss else arg for arg in call.args])
    elif isinstance(call.func, cst.Attribute) and call.func.value is loss:
        new_call = call.with_changes(func=call.func.with_changes(value=scaled))
    else:
        return None
    return ctx.fix([ctx.replace(call, new_call)], applicability, f"Backpropagate `{scaler}.scale(...)`")


def _without_parentheses(expr: cst.BaseExpression) -> cst.BaseExpression:
    if getattr(expr, "lpar", None):
        return expr.with_changes(lpar=[], rpar=[])
    return expr
