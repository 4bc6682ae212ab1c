"""TL103: gradient clipping on gradients still multiplied by the GradScaler's scale."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from trainlint.analysis.training_step import (
    scale_text as _scale,
    EventKind,
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
    `unscale_`.

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

    ## Fix safety
    Safe: the optimizer still receives the gradients unscaled once. Only the clip changes: from a
    threshold applied to gradients times the loss scale (a scale that GradScaler changes during
    training, so nobody chose that threshold) to the `max_norm` the code states. A clip that never
    fired on the scaled gradients does not fire after the fix either.
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

    def _finding(self, ctx: FileContext, step: TrainingStep, clip: StepEvent, scaler: str) -> Finding:
        optimizer = clip.optimizer or _optimizer_stepped_next(step, clip, scaler)
        call = f"{scaler}.unscale_({optimizer or '...'})"
        shown = ctx.code(clip.anchor if clip.via_helper is not None else clip.node.func)  # type: ignore[attr-defined]
        subject = f"`{shown}`" if len(shown) <= 60 and "\n" not in shown else "this clip"
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


def _scaler_still_scaling(step: TrainingStep, clip: StepEvent) -> str | None:
    """The known scaler whose scale the clipped gradients still carry on some path, if any."""
    for path in step.paths():
        position = next((i for i, e in enumerate(path) if e is clip), None)
        if position is not None:
            scaler = _scaling_at(step, path[:position], path[position + 1 :])
            if scaler is not None:
                return scaler
    return None


def _scaling_at(step: TrainingStep, before: Sequence[StepEvent], after: Sequence[StepEvent]) -> str | None:
    for event in reversed(before):
        if event.kind in (EventKind.UNSCALE, EventKind.SCALER_STEP, EventKind.ZERO_GRAD):
            return None
        if event.kind in (EventKind.BACKWARD, EventKind.FRAMEWORK_BACKWARD):
            return None  # fresh gradients, not scaled by a GradScaler of this step
        if event.kind is EventKind.SCALED_BACKWARD:
            return event.scaler if step.scaler_of(event) is not None else None
    # no backward before the clip in this step: the step's own scaler.step tells
    for event in after:
        if event.kind is EventKind.UNSCALE:
            return None
        if event.kind is EventKind.SCALER_STEP:
            return event.scaler if step.scaler_of(event) is not None else None
    return None


def _optimizer_stepped_next(step: TrainingStep, clip: StepEvent, scaler: str) -> str | None:
    """The one optimizer the scaler unscales or steps next after the clip, on every path."""
    optimizers = set()
    for path in step.paths():
        position = next((i for i, e in enumerate(path) if e is clip), None)
        if position is None:
            continue
        for event in path[position + 1 :]:
            if event.scaler == scaler and event.kind in (EventKind.UNSCALE, EventKind.SCALER_STEP):
                optimizers.add(event.optimizer)
                break
    return optimizers.pop() if len(optimizers) == 1 and None not in optimizers else None
