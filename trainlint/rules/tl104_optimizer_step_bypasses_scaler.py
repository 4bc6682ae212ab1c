"""TL104: `opt.step()` called directly on gradients that a GradScaler scaled."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import libcst as cst

from trainlint.analysis.training_step import (
    scale_text as _scale,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    in_helper,
)
from trainlint.context import FileContext
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

# -- the rule


@dataclass
class _Verdict:
    """What the paths through one `opt.step()` say about the gradients it applies."""

    scalers: set[str] = field(default_factory=set)  # scalers of the scaled backwards feeding it
    unscaled_feed: bool = False  # some path feeds it a plain backward: a fix would break that path
    unknown_feed: bool = False  # some path feeds it backwards of an unknown or mixed scaler


class OptimizerStepBypassesScaler(Rule):
    """## What it does
    Finds `opt.step()` called directly in a step whose backward went through
    `scaler.scale(loss).backward()`, with no `scaler.unscale_(opt)` in between. The scaler may be
    a local, a parameter or an attribute (`self.scaler`), made by `torch.amp.GradScaler` or
    `torch.cuda.amp.GradScaler` under any import alias; a scaler made with `enabled=False` is not
    one, and a scaler of unknown origin keeps the rule quiet.

    ## Why is this bad?
    `scaler.scale(loss)` multiplies the loss, and so every gradient, by the loss scale: 65536
    (2**16) at the start, doubled every 2000 steps without overflow. Only `scaler.step(opt)`
    divides it back out (and skips the step when a gradient overflowed). `opt.step()` applies
    the scaled gradients as they are:

    - with SGD at lr 0.1, a gradient of 0.01 becomes 655.36 and the weight moves by 65.5
      instead of 0.001: the model diverges in a few steps;
    - Adam divides by the gradient's running RMS and is nearly blind to the factor, but an
      overflowed step (an `inf` gradient, which `scaler.step` would have skipped) is applied and
      turns the weights into `NaN`;
    - a `scaler.update()` after it raises `AssertionError: No inf checks were recorded prior to
      update.` at the first iteration, because only `scaler.step` records the overflow check.

    The fix calls `scaler.step(opt)` instead, and adds `scaler.update()` after the last step of
    the iteration when the step has none. It is offered only when every path through the call
    feeds it scaled gradients: when an fp32 branch (`loss.backward()`) reaches the same
    `opt.step()`, the scaler may not exist on that branch, so the finding has no automatic fix.
    Two `if`s on the same flag (`if self.use_amp:` around the backward, then around the step)
    are read as one decision.

    ## Evidence
    Measured on CPU (`tests/test_scaler_step_fixes_run.py`): a linear regression trained with SGD
    at lr 0.1 through `scaler.scale(loss).backward(); optimizer.step()` had non-finite weights
    at its 9th step; as fixed, its loss fell from 19.3 to 9e-14 in 200 steps.

    ## Fix safety
    Safe: `scaler.step(optimizer)` unscales the gradients and skips a step whose gradients
    overflowed, which is what the `scaler.scale(loss)` before it asks for. The original applies
    gradients 65536 times too large (SGD diverges) and its first overflowing step writes Inf/NaN
    into the weights (Adam too). `scaler.update()` is added only when no path through the step
    updates the scaler later.
    """

    code = "TL104"
    name = "optimizer-step-bypasses-scaler"
    summary = "`opt.step()` called directly on gradients scaled by a GradScaler"
    level = "error"
    fix_applicability = "safe"
    triggers = ("scale(",)
    examples = [
        Example(
            code='''
            import torch

            model = torch.nn.Linear(16, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler("cuda")

            def train(loader):
                for x, y in loader:
                    optimizer.zero_grad()
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = torch.nn.functional.mse_loss(model(x), y)
                    scaler.scale(loss).backward()
                    optimizer.step()
            ''',
            expect=[(13, 9)],
            fixed='''
            import torch

            model = torch.nn.Linear(16, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler("cuda")

            def train(loader):
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
            scaler = torch.amp.GradScaler("cuda", enabled=False)  # disabled: scale() is the identity
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                optimizer.zero_grad()
                scaler.scale(model(x).sub(y).pow(2).mean()).backward()
                optimizer.step()
        ''',
        '''
        import torch

        def train(model, loader, use_amp):
            scaler = torch.amp.GradScaler("cuda")
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                optimizer.zero_grad()
                if use_amp:
                    scaler.scale(model(x).mean()).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    model(x).mean().backward()
                    optimizer.step()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            yield from self._check_step(ctx, step)

    def _check_step(self, ctx: FileContext, step: TrainingStep) -> Iterator[Finding]:
        verdicts = self._verdicts(step)
        flagged = {
            event: next(iter(v.scalers))
            for event, v in verdicts.items()
            if len(v.scalers) == 1 and not v.unknown_feed
        }
        for event in sorted(flagged, key=step.index):
            scaler = flagged[event]
            message = (
                f"`{event.optimizer}.step()`{in_helper(event)} applies gradients that `{scaler}.scale(...)` "
                f"multiplied by the loss scale ({_scale(step, scaler)}), so the update is that many times too "
                f"large and overflowed steps are not skipped; step through `{scaler}.step({event.optimizer})`"
            )
            fix = None
            if not verdicts[event].unscaled_feed:
                fix = self._fix(ctx, event, scaler, self._needs_update(step, event, scaler, flagged))
            yield ctx.report(self, event.anchor, message, fix)

    @staticmethod
    def _verdicts(step: TrainingStep) -> dict[StepEvent, _Verdict]:
        verdicts: dict[StepEvent, _Verdict] = {}
        for event in step.of_kind(EventKind.OPT_STEP):
            if event.optimizer not in step.optimizers:
                continue
            for feed in step.feeding.of(event):
                backwards = feed.backwards
                if not backwards:
                    continue
                verdict = verdicts.setdefault(event, _Verdict())
                if any(b.kind is EventKind.BACKWARD for b in backwards):
                    verdict.unscaled_feed = True
                    continue
                scalers = {b.scaler for b in backwards}
                known = [s for s in scalers if s is not None and s in step.scalers]
                if len(scalers) != 1 or len(known) != 1 or any(b.partly_scaled for b in backwards):
                    verdict.unknown_feed = True
                    continue
                if event.optimizer in feed.unscaled or None in feed.unscaled:
                    continue  # `unscale_` ran: the gradients are the true ones on this path
                verdict.scalers.add(known[0])
        return verdicts

    @staticmethod
    def _needs_update(step: TrainingStep, event: StepEvent, scaler: str, flagged: dict[StepEvent, str]) -> bool:
        """Add `scaler.update()` after this call only when no path through it updates the scaler
        later, and this is the last step of that scaler on every such path."""
        for later in step.flow.after(event).events:
            if later.scaler == scaler and later.kind in (EventKind.SCALER_UPDATE, EventKind.SCALER_STEP):
                return False
            if flagged.get(later) == scaler:
                return False
        return True

    @staticmethod
    def _fix(ctx: FileContext, event: StepEvent, scaler: str, add_update: bool) -> Fix | None:
        call = event.node
        if event.via_helper is not None or not isinstance(call, cst.Call) or call.args:
            return None  # `opt.step(closure)` has no scaler equivalent; a helper may serve other steps
        edits: list[Edit | None] = [ctx.replace(call, f"{scaler}.step({event.optimizer})")]
        description = f"Replace with `{scaler}.step({event.optimizer})`"
        if add_update:
            edits.append(ctx.insert_after(event.statement, f"{scaler}.update()"))
            description += f" and add `{scaler}.update()` after it"
        return ctx.fix(edits, "safe", description)
