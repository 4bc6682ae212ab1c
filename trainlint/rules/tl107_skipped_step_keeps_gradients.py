"""TL107: a step skipped after its backward without clearing the gradients it leaves behind."""

from __future__ import annotations

from collections.abc import Iterator

from trainlint.analysis.training_step import (
    STEP_KINDS,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    clears_gradients_of,
    skip_insertion,
)
from trainlint.context import FileContext
from trainlint.findings import Finding
from trainlint.rule import Example, Rule


class SkippedStepKeepsGradients(Rule):
    """## What it does
    Finds a `continue` (or, in a function that is one step, a `return`) that skips the optimizer
    step after the backward because of a NaN/Inf check or a gradient check (`torch.isnan(loss)`,
    `torch.isfinite(grad_norm)`, a `found_inf` flag, a helper that inspects `.grad`), when that
    path does not clear the optimizer's gradients and the next iteration does not clear them
    before stepping either. It stays quiet when the gradients are cleared at the start of every
    iteration (`opt.zero_grad()` before the backward: the skipped gradients are then discarded),
    when the step never clears them itself (the caller does), for `break` and for a `return` that
    ends the training loop, and for skips that are not checks (`if (i + 1) % accum != 0: continue`
    is gradient accumulation). A skip may be written as a branch: `if not skip_step:` around the
    step, with `skip_step` set on a NaN/Inf or gradient test (or the test itself in the `if`); the
    side that leaves the step out is the skip.

    ## Why is this bad?
    `backward()` adds into `.grad`. A batch skipped for a NaN loss or an infinite gradient leaves
    its NaN/Inf gradients in `.grad`, and when the `zero_grad()` sits after `opt.step()` the skip
    jumps over it too: the next batch's backward adds its gradients to them, and NaN + x is NaN.
    The check meant to protect the model hands the poison to the next step, and from then on
    every loss is NaN, so every later batch is skipped too. A finite but huge gradient (a norm
    guard) is likewise added into the next step instead of being dropped.

    The fix clears the gradients of each skipped optimizer with `opt.zero_grad(set_to_none=True)`
    right before the skip (for a branch, at the start of the side that skips, adding an `else:`
    when there is none). Under gradient accumulation this also drops the micro-batches already
    accumulated in that window, which a NaN had made unusable anyway. With a GradScaler, TL109
    adds the `scaler.update()` the same skip needs; the two fixes are applied together.

    ## Evidence
    Measured on CPU (`tests/test_scaler_step_fixes_run.py`): a two-layer MLP (3,152 weights)
    trained for 50 batches with SGD, one sample of batch 10 set to NaN and
    `if torch.isnan(loss): continue` after the backward: at the next step all 3,152 weights
    became NaN, and every batch after it was skipped (39 of 50 in all). As fixed, one batch was
    skipped and no weight became NaN. (On another model, issue #3 measured 1,153 NaN weights after one
    NaN batch.)

    ## Fix safety
    Safe: only the iterations that the code already skips change. Their gradients are cleared
    instead of being added to the next batch's, so the skipped step is really skipped and its NaN
    does not reach the next step; every other iteration computes exactly as before.
    """

    code = "TL107"
    name = "skipped-step-keeps-gradients"
    summary = "Step skipped after the backward without clearing its gradients"
    level = "error"
    fix_applicability = "safe"
    triggers = ("backward",)
    examples = [
        Example(
            code='''
            import torch

            def train(model, loader):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                for x, y in loader:
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    if torch.isnan(loss):
                        continue
                    optimizer.step()
                    optimizer.zero_grad()
            ''',
            expect=[(9, 13)],
            fixed='''
            import torch

            def train(model, loader):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                for x, y in loader:
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    if torch.isnan(loss):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    optimizer.step()
                    optimizer.zero_grad()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                optimizer.zero_grad()  # every iteration starts from clean gradients
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                if torch.isnan(loss):
                    continue
                optimizer.step()
        ''',
        '''
        import torch

        def train(model, loader, accum_steps):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for i, (x, y) in enumerate(loader):
                (torch.nn.functional.mse_loss(model(x), y) / accum_steps).backward()
                if (i + 1) % accum_steps != 0:
                    continue
                optimizer.step()
                optimizer.zero_grad()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            yield from self._check_step(ctx, step)

    def _check_step(self, ctx: FileContext, step: TrainingStep) -> Iterator[Finding]:
        leaked = _leaks(step)
        for skip in sorted(leaked, key=step.index):
            optimizers = leaked[skip]
            names = ", ".join(f"`{o}`" for o in optimizers)
            poison = " (NaN + x is NaN)" if skip.guard is not None and skip.guard.checks_finiteness else ""
            message = (
                f"{skip.skip_text} skips the step of {names} after the backward without "
                f"clearing the gradients, so the next batch's gradients are added to these{poison}"
            )
            calls = [f"{o}.zero_grad(set_to_none=True)" for o in optimizers]
            where = f"before the `{skip.skip_keyword}`" if skip.skip_keyword != "if" else "in the branch that skips the step"
            description = "Insert " + ", ".join(f"`{c}`" for c in calls) + f" {where}"
            fix = ctx.fix([skip_insertion(ctx, skip, "\n".join(calls))], "safe", description)
            yield ctx.report(self, skip.node, message, fix)


def _leaks(step: TrainingStep) -> dict[StepEvent, list[str]]:
    """Skips on a check after which some path goes on to the next iteration with an optimizer's
    gradients neither applied nor cleared, and steps that optimizer before clearing them ->
    those optimizers, in the step's order."""
    leaked: dict[StepEvent, list[str]] = {}
    states = step.states
    for event in step.of_kind(*STEP_KINDS):
        for state in states.before_next(event):
            for optimizer, skip in state.left_by_skip:
                if optimizer == event.optimizer and _skips_a_step_on_a_check(step, skip) and _step_clears(step, optimizer):
                    names = leaked.setdefault(skip, [])
                    if optimizer not in names:
                        names.append(optimizer)
    order = list(step.optimizers)
    return {skip: sorted(names, key=lambda o: order.index(o) if o in order else len(order)) for skip, names in leaked.items()}


def _skips_a_step_on_a_check(step: TrainingStep, event: StepEvent) -> bool:
    """A `continue` of the step's loop, a `return` of a step without a loop, or a branch that
    leaves the step out, taken on a finiteness or gradient check. `break` and a `return` out of
    the loop end the training."""
    if event.via_helper is not None or event.guard is None:
        return False
    if not (event.guard.checks_finiteness or event.guard.reads_grads):
        return False
    if event.skip_keyword == "continue":
        return step.loop is not None
    if event.skip_keyword == "return":
        return step.loop is None
    return event.skip_keyword == "if"


def _step_clears(step: TrainingStep, optimizer: str) -> bool:
    """The step clears the optimizer's gradients somewhere; when it never does, its caller does."""
    return any(clears_gradients_of(e, optimizer) for e in step.events)
