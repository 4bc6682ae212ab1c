"""TL103: gradient clipping on gradients still multiplied by the GradScaler's scale."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.training_step import (
    scale_text as _scale,
    EventKind,
    FrameworkScaling,
    FrameworkSteps,
    move_to_optimizer_step_hook,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    removal_edit,
    unscale_insertion,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class ClipScaledGradients(Rule):
    """## What it does
    Finds `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_` (any import alias, also inside
    a helper of the same module) called while a GradScaler is in use and no
    `scaler.unscale_(optimizer)` has run before the clip on that path: after
    `scaler.scale(loss).backward()`, or before a `scaler.step(optimizer)` that is not preceded by
    `unscale_`. A loop over the optimizers (`for opt in optimizers: scaler.unscale_(opt)`)
    unscales each of them.

    Frameworks scale the loss for you under float16 mixed precision, and the same mistake hides
    in their hooks: torch's clip after `accelerator.backward(loss)` (Accelerate unscales only in
    `accelerator.clip_grad_norm_` or the prepared optimizer's `step()`), and a clip in a
    LightningModule's `on_after_backward`, which runs before Lightning unscales (the base class
    may be defined in another module of the project). These are reported only where the code
    shows float16 (`Accelerator(mixed_precision="fp16")`, `Trainer(precision="16-mixed")` anywhere
    in the project). Where a config file or the launcher decides, the rule cannot see it and stays
    quiet (the frameworks default to float32; a clip that is right in the default run is not
    reported); where the code shows bf16 or float32 there is nothing to report.

    ## Why is this bad?
    Until `unscale_` runs, every gradient is multiplied by the loss scale: 65536 (2**16) at the
    start, and it changes during training (halved after each overflow, doubled after 2000 clean
    steps). `clip_grad_norm_(params, 1.0)` then compares 65536x the true norm with 1.0: a healthy
    norm of 3.0 reads 196608 and is cut to 1.0 scaled, which is 1/65536 after unscaling, so the
    update shrinks by a factor of about 200000. `clip_grad_value_` clips every entry whose scaled
    value passes the threshold, i.e. nearly all of them. Either way the threshold means nothing
    and follows the scale as it moves.

    The fix inserts `scaler.unscale_(optimizer)` before the clip (removing a later `unscale_` of
    that optimizer in the step); `scaler.step()` then skips its own unscaling. It is offered when
    every path through the clip goes on to `scaler.update()`, so the step never unscales twice.
    After `accelerator.backward`, the fix calls `accelerator.clip_grad_norm_` (or
    `clip_grad_value_`) with the same arguments. In `on_after_backward`, the fix renames the hook
    to `on_before_optimizer_step(self, optimizer)`, which Lightning runs after unscaling.

    ## Fix safety
    Safe: the optimizer still receives the gradients unscaled once. Only the clip changes: from a
    threshold applied to gradients times the loss scale (a scale that GradScaler changes during
    training, so nobody chose that threshold) to the `max_norm` the code states. A clip that never
    fired on the scaled gradients does not fire after the fix either. `accelerator.clip_grad_norm_`
    is torch's clip after `accelerator.unscale_gradients()`: without float16 it clips exactly as
    before. Renaming a Lightning hook is unsafe: it moves user code to another point of the step
    (everything in `on_after_backward`, not only the clip), which the author should read.
    """

    code = "TL103"
    name = "clip-scaled-gradients"
    summary = "Gradients clipped before `scaler.unscale_()`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("clip_grad",)
    examples = [
        Example(
            code='''
            import torch
            from torch.nn.utils import clip_grad_norm_

            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    clip_grad_norm_(model.parameters(), max_norm=1.0)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            ''',
            expect=[(10, 9)],
            fixed='''
            import torch
            from torch.nn.utils import clip_grad_norm_

            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    clip_grad_norm_(model.parameters(), max_norm=1.0)
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
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
        ''',
        '''
        import torch

        def train(model, loader, optimizer):
            for x, y in loader:
                model(x, y).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            for clip in step.of_kind(EventKind.CLIP):
                scaler = _scaler_still_scaling(step, clip)
                if scaler is not None:
                    yield self._finding(ctx, step, clip, scaler)
                elif (framework := _framework_still_scaling(step, clip)) is not None:
                    yield self._framework_finding(ctx, clip, framework)
        for hook in ctx.get(FrameworkSteps).scaled_hooks:
            for clip in (e for e in hook.events if e.kind is EventKind.CLIP):
                message = (
                    f"{_subject(ctx, clip)} clips gradients in `{hook.hook.name.value}`, which {hook.framework} runs "
                    f"before it unscales them {hook.condition()}: the threshold meets gradients 65536x too large at "
                    f"the start; clip in {hook.right_place} (or let the Trainer clip: `gradient_clip_val`)"
                )
                yield ctx.report(self, clip.anchor, message, move_to_optimizer_step_hook(ctx, hook))

    def _framework_finding(self, ctx: FileContext, clip: StepEvent, framework: FrameworkScaling) -> Finding:
        message = (
            f"{_subject(ctx, clip)} clips gradients that `{framework.backward_call}(...)` left multiplied by the loss "
            f"scale {framework.condition()}, so its threshold clips everything or nothing; "
            f"`{framework.clip_call}(...)` unscales them first"
        )
        fix = None
        call = clip.node
        name = ctx.qualified_name(call.func) if isinstance(call, cst.Call) else None
        if framework.framework == "Accelerate" and clip.via_helper is None and name in _ACCELERATE_CLIPS:
            replacement = f"{framework.owner}.{_ACCELERATE_CLIPS[name]}"
            fix = ctx.fix([ctx.replace(call.func, replacement)], "safe", f"Clip with `{replacement}`")  # type: ignore[union-attr]
        return ctx.report(self, clip.anchor, message, fix)

    def _finding(self, ctx: FileContext, step: TrainingStep, clip: StepEvent, scaler: str) -> Finding:
        optimizer = clip.optimizer or _optimizer_stepped_next(step, clip, scaler)
        call = f"{scaler}.unscale_({optimizer or '...'})"
        subject = _subject(ctx, clip)
        message = (
            f"{subject} clips gradients still multiplied by `{scaler}`'s loss scale ({_scale(step, scaler)}), "
            f"so its threshold clips everything or nothing; call `{call}` before it"
        )
        fix = self._fix(ctx, step, clip, scaler, optimizer) if optimizer is not None else None
        return ctx.report(self, clip.anchor, message, fix)

    @staticmethod
    def _fix(ctx: FileContext, step: TrainingStep, clip: StepEvent, scaler: str, optimizer: str) -> Fix | None:
        redundant = unscale_insertion(step, clip, scaler, optimizer)
        if redundant is None or any(e.via_helper is not None for e in redundant):
            return None
        call = f"{scaler}.unscale_({optimizer})"
        edits = [ctx.insert_before(clip.statement, call)]
        edits += [removal_edit(ctx, e.statement) for e in redundant]
        return ctx.fix(edits, "safe", f"Call `{call}` before clipping")


# torch's clips and the Accelerator methods that unscale, then do the same.
_ACCELERATE_CLIPS = {
    "torch.nn.utils.clip_grad_norm_": "clip_grad_norm_",
    "torch.nn.utils.clip_grad.clip_grad_norm_": "clip_grad_norm_",
    "torch.nn.utils.clip_grad_value_": "clip_grad_value_",
    "torch.nn.utils.clip_grad.clip_grad_value_": "clip_grad_value_",
}


def _subject(ctx: FileContext, clip: StepEvent) -> str:
    shown = ctx.code(clip.anchor if clip.via_helper is not None else clip.node.func)  # type: ignore[attr-defined]
    return f"`{shown}`" if len(shown) <= 60 and "\n" not in shown else "this clip"


def _framework_still_scaling(step: TrainingStep, clip: StepEvent) -> FrameworkScaling | None:
    """The framework object (an Accelerator) whose scale the clipped gradients still carry on
    some path: the clip is torch's own, not the framework's, which unscales first."""
    if clip.framework is not None or any(e.node is clip.node and e.kind is EventKind.UNSCALE for e in step.events):
        return None
    for state in step.states.before(clip):
        for backward in state.scaled:
            if backward.framework is not None:
                return backward.framework
    return None


def _scaler_still_scaling(step: TrainingStep, clip: StepEvent) -> str | None:
    """The known scaler whose scale the clipped gradients still carry on some path, if any. With
    no backward before the clip in this step, the step's own next `scaler.step` tells."""
    states = step.states.before(clip)
    scaled = sorted(b.scaler for s in states for b in s.scaled if b.scaler is not None)
    if scaled:
        return scaled[0]
    if any(s.backward_seen for s in states) or not states:
        return None

    def unscales(event: StepEvent) -> bool:
        return event.kind in (EventKind.UNSCALE, EventKind.SCALER_STEP)

    first = [e for e in step.flow.after(clip, unscales).events if unscales(e)]
    known = sorted(e.scaler for e in first if e.kind is EventKind.SCALER_STEP and step.scaler_of(e) is not None)
    return known[0] if known and len(known) == len(first) else None


def _optimizer_stepped_next(step: TrainingStep, clip: StepEvent, scaler: str) -> str | None:
    """The one optimizer the scaler unscales or steps next after the clip, on every path."""

    def unscales(event: StepEvent) -> bool:
        return event.scaler == scaler and event.kind in (EventKind.UNSCALE, EventKind.SCALER_STEP)

    optimizers = {e.optimizer for e in step.flow.after(clip, unscales).events if unscales(e)}
    return optimizers.pop() if len(optimizers) == 1 and None not in optimizers else None
