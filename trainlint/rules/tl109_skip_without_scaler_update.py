"""TL109: a step skipped after a scaled backward without ``scaler.update()``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from trainlint.analysis.training_step import (
    EventKind,
    StepEvent,
    StepState,
    TrainingStep,
    TrainingSteps,
    skip_insertion,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


@dataclass
class _SkipState:
    """What the paths that reach one skip have in common."""

    scalers: set[str] = field(default_factory=set)  # scaled and not updated on some path
    unscaled_on_some_path: list[str] = field(default_factory=list)  # "scaler.unscale_(opt)" / "scaler.step(opt)"
    unscaled_on_every_path: bool = True


class SkipWithoutScalerUpdate(Rule):
    """## What it does
    Finds a `continue` (or `return`, `break`) that skips the rest of a step after
    `scaler.scale(loss).backward()` without calling `scaler.update()` on that path, when the skip
    follows `scaler.unscale_()` or is taken on a check of the gradients (a NaN/Inf test, a norm
    guard, a helper that reads `.grad`). Skips that are not gradient checks, such as
    `if (i + 1) % accum != 0: continue` under gradient accumulation, are left alone. A skip may be
    written as a branch: `if not found_inf: scaler.step(opt); scaler.update()` with `found_inf`
    set on a NaN/Inf or gradient test; the side that leaves out the update is the skip.

    ## Why is this bad?
    `scaler.step()` skips an overflowing step by itself, and `scaler.update()` then halves the
    scale (65536 -> 32768 -> ...) until the gradients fit in float16. A hand-written skip that
    jumps over both leaves the scale where it was, so a run that overflows overflows again on
    every later batch and never trains. Worse, once `unscale_` has run, the next step's
    `unscale_` raises
    `RuntimeError: unscale_() has already been called on this optimizer since the last update()`.

    The fix inserts `scaler.update()` before the skip (for a branch, in the side that skips, adding
    an `else:` when there is none). It is offered only where `unscale_` has run
    on every path to the skip: `unscale_` records whether the gradients overflowed, and
    `update()` needs that record (without it, it fails with `No inf checks were recorded prior to
    update`). Where the check runs before `unscale_`, move the check after `unscale_` (TL101
    does), or drop the hand-written skip and let `scaler.step()` do the skipping.

    ## Evidence
    Measured on a CPU float16 loop (GradScaler with `init_scale=2**24`, a NaN/Inf check on still
    scaled gradients that `continue`s): as written, 0 of 120 optimizer steps were applied and the
    loss stayed flat. With only the `unscale_` moved before the check, the second iteration
    raised the RuntimeError above. With the `unscale_` moved (TL101), the gradients cleared
    (TL107) and `scaler.update()` before the `continue` (TL109), 109 of 120 steps were applied,
    the scale backed off to 8192 and the loss fell from 1.86 to 0.02. `trainlint --fix` makes
    all three changes in one run.

    ## Fix safety
    Safe: only the iterations that skip change: `scaler.update()` records the skipped step, so the
    scale backs off after an overflow and the next `unscale_()` no longer raises `RuntimeError`.
    The fix is offered only where `unscale_` ran on every path to the skip, because `update()`
    with no recorded inf check raises.
    """

    code = "TL109"
    name = "skip-without-scaler-update"
    summary = "Step skipped after a scaled backward without `scaler.update()`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("scale(",)
    examples = [
        Example(
            code='''
            import torch

            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    if not torch.isfinite(grad_norm):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            ''',
            expect=[(13, 13)],
            fixed='''
            import torch

            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for x, y in loader:
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    if not torch.isfinite(grad_norm):
                        optimizer.zero_grad(set_to_none=True)
                        scaler.update()
                        continue
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, loader, optimizer, accum_steps):
            scaler = torch.amp.GradScaler("cuda")
            for i, (x, y) in enumerate(loader):
                scaler.scale(model(x, y) / accum_steps).backward()
                if (i + 1) % accum_steps != 0:
                    continue
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
        ''',
        '''
        import torch

        def train(model, loader, optimizer):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                scaler.scale(model(x, y)).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                if not torch.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    scaler.update()
                    continue
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            states = _skips_without_update(step)
            for skip in sorted(states, key=step.index):
                yield self._finding(ctx, skip, states[skip])

    def _finding(self, ctx: FileContext, skip: StepEvent, state: _SkipState) -> Finding:
        subject = f"`{skip.skip_keyword}`" if skip.skip_keyword != "if" else skip.skip_text
        scaler = min(state.scalers)
        update = f"{scaler}.update()"
        if state.unscaled_on_some_path:
            message = (
                f"{subject} skips `{update}` after `{state.unscaled_on_some_path[0]}`: the next "
                f"`{scaler}.unscale_()` or `{scaler}.step()` of that optimizer raises `RuntimeError` (already called "
                f"since the last `update()`) and the scale never backs off"
            )
        else:
            message = (
                f"{subject} skips the step after `{scaler}.scale(...).backward()` without `{update}`, so the "
                f"scale never backs off and an overflowing run skips every step; check the gradients after "
                f"`{scaler}.unscale_(...)` or let `{scaler}.step(...)` do the skipping"
            )
        fix = self._fix(ctx, skip, state, update)
        return ctx.report(self, skip.node, message, fix)

    @staticmethod
    def _fix(ctx: FileContext, skip: StepEvent, state: _SkipState, update: str) -> Fix | None:
        if not state.unscaled_on_every_path or len(state.scalers) != 1:
            return None
        return ctx.fix([skip_insertion(ctx, skip, update)], "safe", f"Insert `{update}` where the step is skipped")


def _skips_without_update(step: TrainingStep) -> dict[StepEvent, _SkipState]:
    """Skips taken after a scaled backward, on a gradient check or after an unscale_, on a path
    that ends the iteration without its scaler's update -> what those paths share."""
    states: dict[StepEvent, _SkipState] = {}
    ended: dict[StepEvent, list[StepState]] = {}
    for end, _ in step.states.ends():
        if end.skip is not None and end.skip.via_helper is None:
            ended.setdefault(end.skip, []).append(end)
    for skip, ends in ended.items():
        state = _SkipState()
        for end in ends:
            scalers = sorted(s for s in end.pending_update if s in step.scalers)
            if not scalers:
                state.unscaled_on_every_path = False
                continue
            unscales = sorted(
                f"{e.scaler}.{'unscale_' if e.kind is EventKind.UNSCALE else 'step'}({e.optimizer})"
                for e in end.unscaled
                if e.scaler in scalers
            )
            checked = skip.guard is not None and skip.guard.reads_grads
            if not (unscales or checked):
                state.unscaled_on_every_path = False
                continue
            state.scalers.update(scalers)
            if unscales:
                state.unscaled_on_some_path.extend(u for u in unscales if u not in state.unscaled_on_some_path)
            else:
                state.unscaled_on_every_path = False
        if state.scalers:
            states[skip] = state
    return states
