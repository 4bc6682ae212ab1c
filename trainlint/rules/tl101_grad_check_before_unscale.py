"""TL101: gradients inspected between ``scaler.scale(loss).backward()`` and ``scaler.unscale_()``."""

from __future__ import annotations

from collections.abc import Iterator

from trainlint.analysis.training_step import (
    scale_text as _scale,
    EventKind,
    FrameworkSteps,
    ScaledHook,
    move_to_optimizer_step_hook,
    scaling_owner,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    removal_edit,
    statement_in_step,
    unscale_insertion,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule

# Events after which the gradients are no longer the scaled ones of this backward.
_WINDOW_ENDS = frozenset({EventKind.UNSCALE, EventKind.SCALER_STEP, EventKind.ZERO_GRAD, EventKind.SKIP})


class GradCheckBeforeUnscale(Rule):
    """## What it does
    Finds code that reads gradient values (a NaN/Inf check such as `torch.isnan(p.grad)`, a
    gradient norm, a threshold on it, logging of gradient values, a helper of the same module
    that does any of these) after `scaler.scale(loss).backward()` and before
    `scaler.unscale_(optimizer)` on some path through the step. A NaN/Inf test there is reported
    only when the step is skipped (`continue`, `return`) or its gradients zeroed before the
    `unscale_`: a test that only warns gives the same verdict at any scale. A loop over the
    optimizers (`for opt in optimizers: scaler.unscale_(opt)`) unscales each of them.

    Frameworks scale the loss for you under float16 mixed precision: the rule also reads
    gradient inspections after `accelerator.backward(loss)` before `accelerator.clip_grad_norm_`
    or the optimizer's step, in a LightningModule's `on_after_backward` (Lightning unscales only
    after it; the base class may be defined in another module of the project), and in a Hugging
    Face `Trainer` subclass's `training_step` after `super().training_step(...)` (the Trainer
    unscales when it clips, after `training_step` returns). These are reported only where the
    code shows float16 (`Trainer(precision="16-mixed")` anywhere in the project,
    `TrainingArguments(fp16=True)`, `Accelerator(mixed_precision="fp16")`). Where a config file
    or the launcher decides, the rule cannot see it and stays quiet (the frameworks default to
    float32); where the code shows bf16 or float32 there is nothing to report.

    ## Why is this bad?
    `scaler.scale(loss)` multiplies the loss by the current scale, 65536 (2**16) at the start, so
    until `unscale_` runs every gradient is 65536 times its true value. A gradient norm of 3.0
    reads 196608: a guard such as `if grad_norm > 1000: continue` fires on healthy steps, and a
    logged norm is meaningless. A NaN/Inf check reads the same verdict before and after
    unscaling, but when it skips or zeroes the step it does so behind the scaler's back:
    `scaler.step()` never sees the overflow and `scaler.update()` never lowers the scale, so an
    overflowing run keeps overflowing (see TL109).

    The fix calls `scaler.unscale_(optimizer)` right after the backward and removes the later
    `unscale_` of the same optimizer in that step, so everything after the backward sees true
    gradients; `scaler.step()` then knows the gradients are already unscaled. That is safe only
    when every path through the backward goes on to `scaler.update()` or to a skip on a NaN/Inf
    or gradient check (which TL109 completes with `scaler.update()`). Under gradient
    accumulation an `unscale_` on every micro-batch would raise at the second one, so there the
    fix unscales right before the inspection instead, when the inspection runs only on the
    micro-batch that steps; otherwise the finding comes without a fix.

    ## Evidence
    Measured on CPU with float16 autocast and a GradScaler: a norm guard on still-scaled
    gradients wrongly skipped 198 of 200 steps, and the model never trained. A reproduction (a
    small MLP, the default scale 65536, `if grad_norm > 1000: continue`) skipped 200 of 200 steps
    and the loss stayed at 14.0; with the guard after `unscale_` (and `scaler.update()` before its
    `continue`) it skipped 2 of 200, the two whose gradients really overflowed while the scale
    backed off, and the loss fell to 0.035.

    ## Fix safety
    Safe: the optimizer receives the same gradients as before, unscaled once. What changes is what
    the code between the backward and the old `unscale_` reads: true gradients instead of gradients
    times the loss scale, so a NaN/Inf test gives the same verdict and a norm guard compares the
    norm it was written for. When the check skips the step, the skip also needs `scaler.update()`
    and cleared gradients, which TL109 and TL107 add in the same `--fix` run; with those rules
    disabled, the next `unscale_` after a skip raises `RuntimeError` (a loud failure, never a
    silent one). In `on_after_backward`, the fix renames the hook to
    `on_before_optimizer_step(self, optimizer)`, which Lightning runs after unscaling: unsafe,
    since it moves all the hook's code to another point of the step. Framework findings outside
    Lightning hooks come without a fix.
    """

    code = "TL101"
    name = "grad-check-before-unscale"
    summary = "Gradients inspected before `scaler.unscale_()`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("scale(", "on_after_backward", ".backward(", "training_step")
    examples = [
        Example(
            code='''
            import torch

            def train(model, loader, optimizer, writer):
                scaler = torch.amp.GradScaler("cuda")
                for step, (x, y) in enumerate(loader):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
                    writer.add_scalar("grad_norm", grad_norm, step)
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            ''',
            expect=[(9, 45)],
            fixed='''
            import torch

            def train(model, loader, optimizer, writer):
                scaler = torch.amp.GradScaler("cuda")
                for step, (x, y) in enumerate(loader):
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
                    writer.add_scalar("grad_norm", grad_norm, step)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader, optimizer):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                scaler.scale(model(x, y)).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
                print(grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
        ''',
        '''
        import torch

        def train(model, loader, optimizer):
            scaler = torch.cuda.amp.GradScaler(enabled=False)
            for x, y in loader:
                scaler.scale(model(x, y)).backward()
                if any(torch.isnan(p.grad).any() for p in model.parameters()):
                    continue
                scaler.step(optimizer)
                scaler.update()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            for backward in step.of_kind(EventKind.SCALED_BACKWARD):
                if step.scaler_of(backward) is None:
                    continue  # no scaler, or one of unknown origin: stay quiet
                inspections = _inspections_while_scaled(step, backward)
                if inspections:
                    first = min(inspections, key=step.index)
                    yield self._finding(ctx, step, backward, first)
            for backward in step.of_kind(EventKind.FRAMEWORK_BACKWARD):
                inspections = _inspections_while_scaled(step, backward) if backward.framework is not None else []
                if inspections:
                    yield self._framework_finding(ctx, backward, min(inspections, key=step.index))
        for hook in ctx.get(FrameworkSteps).scaled_hooks:
            inspections = [e for e in hook.events if e.kind is EventKind.GRAD_INSPECT]
            if inspections:
                yield self._hook_finding(ctx, hook, inspections[0])

    def _framework_finding(self, ctx: FileContext, backward: StepEvent, inspection: StepEvent) -> Finding:
        framework = backward.framework
        assert framework is not None
        message = (
            f"{_shown(ctx, inspection)} reads gradients that `{framework.backward_call}(...)` left multiplied by "
            f"the loss scale {framework.condition()}: they are unscaled only by `{framework.clip_call}(...)` "
            f"or the optimizer's step, so a norm or NaN/Inf verdict acted on here is wrong"
        )
        return ctx.report(self, inspection.anchor, message)

    def _hook_finding(self, ctx: FileContext, hook: ScaledHook, inspection: StepEvent) -> Finding:
        message = (
            f"{_shown(ctx, inspection)} reads gradients in `{hook.hook.name.value}`, which {hook.framework} runs "
            f"before it unscales them {hook.condition()}: they carry the loss scale (65536x at start); "
            f"read them in {hook.right_place}"
        )
        return ctx.report(self, inspection.anchor, message, move_to_optimizer_step_hook(ctx, hook))

    def _finding(self, ctx: FileContext, step: TrainingStep, backward: StepEvent, inspection: StepEvent) -> Finding:
        scaler = backward.scaler or "scaler"
        optimizer = _optimizer_unscaled_next(step, backward)
        call = f"{scaler}.unscale_({optimizer or '...'})"
        shown = _shown(ctx, inspection)
        if inspection.scale_invariant:
            message = (
                f"{shown} tests gradients for NaN/Inf before `{call}` and the step is skipped or zeroed on its verdict "
                f"behind the scaler's back, so the scale never backs off and an overflowing run keeps overflowing"
            )
        else:
            message = (
                f"{shown} reads gradients before `{call}`: they still carry the loss scale "
                f"({_scale(step, scaler)}), "
                f"so a norm or threshold read here is that much too large"
            )
        fix = self._fix(ctx, step, backward, inspection, scaler, optimizer) if optimizer is not None else None
        return ctx.report(self, inspection.anchor, message, fix)

    @staticmethod
    def _fix(
        ctx: FileContext, step: TrainingStep, backward: StepEvent, inspection: StepEvent, scaler: str, optimizer: str
    ) -> Fix | None:
        """Unscale right after the backward; where that is not safe (gradient accumulation, whose
        micro-batches must not unscale), right before the inspection when it is a statement of
        the step itself and that is safe."""
        call = f"{scaler}.unscale_({optimizer})"
        redundant = unscale_insertion(step, backward, scaler, optimizer)
        if redundant is not None:
            insertion = ctx.insert_after(backward.statement, call)
            where = "right after the backward"
        elif statement_in_step(ctx, step, inspection) is inspection.statement:  # not inside a loop of the step
            redundant = unscale_insertion(step, inspection, scaler, optimizer)
            insertion = ctx.insert_before(inspection.statement, call)
            where = "before the gradients are read"
        else:
            return None
        if redundant is None or any(e.via_helper is not None for e in redundant):
            return None
        edits = [insertion, *(removal_edit(ctx, e.statement) for e in redundant)]
        return ctx.fix(edits, "safe", f"Call `{call}` {where}")


def _shown(ctx: FileContext, inspection: StepEvent) -> str:
    what = ctx.code(inspection.anchor)
    return f"`{what}`" if len(what) <= 60 and "\n" not in what else "this check"


def _inspections_while_scaled(step: TrainingStep, backward: StepEvent) -> list[StepEvent]:
    """Gradient inspections after this backward, before its gradients are unscaled or cleared.
    A NaN/Inf test counts only when the step is skipped or zeroed before the unscale: its
    verdict alone is the same on scaled gradients."""
    found = []
    for inspection in step.of_kind(EventKind.GRAD_INSPECT):
        if not any(backward in state.scaled for state in step.states.before(inspection)):
            continue
        if inspection.scale_invariant and not _acted_on(step, inspection, backward):
            continue
        found.append(inspection)
    return found


def _acted_on(step: TrainingStep, test: StepEvent, backward: StepEvent) -> bool:
    """A skip or a zero_grad follows the test before the scaler unscales the gradients (for a
    framework's backward, before its wrapped optimizer's step, which unscales)."""
    scaler = scaling_owner(backward)

    def window_ends(event: StepEvent) -> bool:
        if event.kind is EventKind.SCALED_BACKWARD:
            return event.scaler == scaler
        if event.kind is EventKind.OPT_STEP and backward.framework is not None:
            return True
        return event.kind in _WINDOW_ENDS and event.scaler in (None, scaler)

    reach = step.flow.after(test, window_ends)
    return any(e.kind in (EventKind.SKIP, EventKind.ZERO_GRAD) for e in reach.events)


def _optimizer_unscaled_next(step: TrainingStep, backward: StepEvent) -> str | None:
    """The optimizer this backward's gradients are unscaled or stepped for next, when it is one."""

    def unscales(event: StepEvent) -> bool:
        return event.scaler == backward.scaler and event.kind in (EventKind.UNSCALE, EventKind.SCALER_STEP)

    def next_one(event: StepEvent) -> bool:
        return unscales(event) or (event.kind is EventKind.SCALED_BACKWARD and event.scaler == backward.scaler)

    optimizers = {e.optimizer for e in step.flow.after(backward, next_one).events if unscales(e)}
    return optimizers.pop() if len(optimizers) == 1 and None not in optimizers else None
