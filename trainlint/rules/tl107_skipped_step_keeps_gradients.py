"""TL107: a step skipped after its backward without clearing the gradients it leaves behind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    STEP_KINDS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    clears_gradients_of,
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
    is gradient accumulation).

    ## Why is this bad?
    `backward()` adds into `.grad`. A batch skipped for a NaN loss or an infinite gradient leaves
    its NaN/Inf gradients in `.grad`, and when the `zero_grad()` sits after `opt.step()` the skip
    jumps over it too: the next batch's backward adds its gradients to them, and NaN + x is NaN.
    The check meant to protect the model hands the poison to the next step, and from then on
    every loss is NaN, so every later batch is skipped too. A finite but huge gradient (a norm
    guard) is likewise added into the next step instead of being dropped.

    The fix clears the gradients of each skipped optimizer with `opt.zero_grad(set_to_none=True)`
    right before the skip. Under gradient accumulation this also drops the micro-batches already
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
        if step.truncated:
            return  # too many paths to be sure of any
        paths = list(step.paths())
        skipped: dict[StepEvent, list[str]] = {}  # skip -> optimizers whose gradients it leaves
        for path in paths:
            if not path or not _skips_a_step_on_a_check(step, path[-1]):
                continue
            for optimizer in _optimizers_left_dirty(step, path):
                if not _cleared_before_every_step(paths, optimizer) and _step_clears(step, optimizer):
                    names = skipped.setdefault(path[-1], [])
                    if optimizer not in names:
                        names.append(optimizer)
        for skip in sorted(skipped, key=step.index):
            optimizers = skipped[skip]
            names = ", ".join(f"`{o}`" for o in optimizers)
            poison = " (NaN + x is NaN)" if skip.guard is not None and skip.guard.checks_finiteness else ""
            message = (
                f"this `{skip.skip_keyword}` skips the step of {names} after the backward without "
                f"clearing the gradients, so the next batch's gradients are added to these{poison}"
            )
            calls = [f"{o}.zero_grad(set_to_none=True)" for o in optimizers]
            description = "Insert " + ", ".join(f"`{c}`" for c in calls) + f" before the `{skip.skip_keyword}`"
            fix = ctx.fix([ctx.insert_before(skip.statement, "\n".join(calls))], "safe", description)
            yield ctx.report(self, skip.node, message, fix)


def _skips_a_step_on_a_check(step: TrainingStep, event: StepEvent) -> bool:
    """A `continue` of the step's loop, or a `return` of a step without a loop, taken on a
    finiteness or gradient check. `break` and a `return` out of the loop end the training."""
    if event.kind is not EventKind.SKIP or event.via_helper is not None or event.guard is None:
        return False
    if not (event.guard.checks_finiteness or event.guard.reads_grads):
        return False
    if event.skip_keyword == "continue":
        return step.loop is not None
    return event.skip_keyword == "return" and step.loop is None


def _optimizers_left_dirty(step: TrainingStep, path: Sequence[StepEvent]) -> Iterator[str]:
    """Known optimizers whose step comes after the skip, which this path reaches after a backward
    without stepping them or clearing their gradients."""
    skip = path[-1]
    backwards = [i for i, e in enumerate(path) if e.kind in BACKWARD_KINDS]
    if not backwards:
        return
    since_backward = path[backwards[-1] + 1 : -1]
    skip_index = step.index(skip)
    for optimizer in step.optimizers:
        skipped_steps = [
            e for e in step.events[skip_index + 1 :] if e.kind in STEP_KINDS and e.optimizer == optimizer
        ]
        if not skipped_steps:
            continue
        if any(e.kind in STEP_KINDS and e.optimizer == optimizer for e in since_backward):
            continue
        if any(clears_gradients_of(e, optimizer) for e in since_backward):
            continue
        yield optimizer


def _cleared_before_every_step(paths: Sequence[Sequence[StepEvent]], optimizer: str) -> bool:
    """True when every path clears the optimizer's gradients before stepping it: the gradients a
    skip leaves behind are then discarded at the next iteration, before they are applied."""
    for path in paths:
        cleared = False
        for event in path:
            if clears_gradients_of(event, optimizer):
                cleared = True
            elif event.kind in STEP_KINDS and event.optimizer == optimizer and not cleared:
                return False
    return True


def _step_clears(step: TrainingStep, optimizer: str) -> bool:
    """The step clears the optimizer's gradients somewhere; when it never does, its caller does."""
    return any(clears_gradients_of(e, optimizer) for e in step.events)
