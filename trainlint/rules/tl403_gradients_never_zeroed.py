"""TL403: a loop steps the optimizer every iteration but never zeroes the gradients."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    STEP_KINDS,
    EventKind,
    StepEvent,
    runs_a_closure,
    TrainingStep,
    TrainingSteps,
)
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule

# Events after which the gradients are still read: zeroing right after the step would change them.
_GRAD_READERS = frozenset({EventKind.GRAD_INSPECT, EventKind.CLIP, EventKind.UNSCALE})
_Loop = cst.For | cst.While


class GradientsNeverZeroed(Rule):
    """## What it does
    Reports an optimizer step inside a loop that also calls `backward()`, when nothing in that
    loop (nor in the helpers it calls) clears the gradients: no `optimizer.zero_grad()`, no
    `model.zero_grad()`, no `p.grad = None`. Calling `zero_grad()` once before the loop, or once
    per epoch outside the batch loop, does not count. A loop that zeroes on some paths only is
    reported too, without a fix: a `zero_grad()` only in the mixed-precision branch while the
    float32 branch steps every iteration (a condition the loop does not change takes the same
    side every time), only under a logging condition, or a second phase of the iteration (an
    auxiliary loss after the policy updates) whose first step follows the last step of the first
    phase with no `zero_grad()` between. Gradient accumulation that zeroes after its
    conditional step (`if (i + 1) % k == 0: opt.step(); opt.zero_grad()`) is fine, and so is an
    LBFGS closure that zeroes inside it. Accelerate's `accelerator.backward(loss)`, Fabric's
    `fabric.backward(loss)` and Lightning's `self.manual_backward(loss)` count as `backward()`:
    none of them clears the gradients. A DeepSpeed `engine.step()` zeroes them itself and is not
    reported.

    ## Why is this bad?
    `backward()` adds into `.grad`; it never overwrites. Without zeroing, the gradient that step
    *k* uses is the sum of the last *k* gradients. On a direction where the gradient is constant,
    step 100 moves the weights 100 times as far as step 1: the effective learning rate grows
    linearly with the step count, like momentum that never decays. The loss often falls faster
    for a few steps and then oscillates or diverges, which looks like a learning-rate problem
    rather than a missing line.

    The fix inserts `optimizer.zero_grad(set_to_none=True)` right after the step (after
    `scaler.update()` when it follows), the position that keeps gradient accumulation intact.
    It is not offered when code after the step still reads the gradients.

    ## Evidence
    Measured with torch 2.13 on CPU, least squares with 8 features and SGD at lr 0.01: with
    `zero_grad()` the loss goes 9.81 -> 0.154 at step 100 -> 5e-11 at step 1,000. Without it the
    loss is lower at step 10 (0.41) but then swings between 0.75 and 9.1 and is 5.57 at step
    1,000. On a constant gradient, step 100 moves the weight 100 times as far as step 1.

    ## Fix safety
    Safe: without clearing, every step applies the sum of all gradients since the loop began,
    which no training that steps every iteration intends. The call goes right after the step
    (after `scaler.update()`), so gradient accumulation between steps and the first step's
    gradients are unchanged; it is not offered when later code still reads `.grad`.
    """

    code = "TL403"
    name = "gradients-never-zeroed"
    summary = "Optimizer steps every iteration but nothing in the loop zeroes the gradients"
    level = "error"
    fix_applicability = "safe"
    triggers = ("backward",)
    examples = [
        Example(
            code='''
            import torch

            def fit(model, loader, epochs):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                optimizer.zero_grad()
                for epoch in range(epochs):
                    for x, y in loader:
                        loss = torch.nn.functional.mse_loss(model(x), y)
                        loss.backward()
                        optimizer.step()
            ''',
            expect=[(10, 13)],
            fixed='''
            import torch

            def fit(model, loader, epochs):
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                optimizer.zero_grad()
                for epoch in range(epochs):
                    for x, y in loader:
                        loss = torch.nn.functional.mse_loss(model(x), y)
                        loss.backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, optimizer, loader, accum=4):
            for i, (x, y) in enumerate(loader):
                loss = torch.nn.functional.mse_loss(model(x), y) / accum
                loss.backward()
                if (i + 1) % accum == 0:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        reported: set[cst.CSTNode] = set()
        for step in ctx.get(TrainingSteps).all_steps():
            loop = step.loop
            if loop is None or not step.of_kind(*BACKWARD_KINDS):
                continue
            if _resets_gradients_otherwise(ctx, step, loop):
                continue
            zeroes_somewhere = bool(step.of_kind(EventKind.ZERO_GRAD))
            for event in step.of_kind(*STEP_KINDS):
                if event.anchor in reported or event.scaler in step.uncertain_scalers:
                    continue  # a scaler of unknown origin may zero the gradients itself
                if runs_a_closure(event) or _built_in_loop(ctx, event.optimizer, loop):
                    continue
                again = _steps_again_uncleared(step, event) if zeroes_somewhere else "every iteration"
                if again is None:
                    continue
                reported.add(event.anchor)
                fix = None if zeroes_somewhere else _zero_grad_fix(ctx, step, event, loop)
                yield ctx.report(self, event.anchor, _message(ctx, event, again), fix)


def _steps_again_uncleared(step: TrainingStep, event: StepEvent) -> str | None:
    """Where the step follows an earlier step of the same optimizer with no zero_grad of it in
    between: "this iteration" (a second phase of the loop body), "the next iteration" (a path
    that never clears, such as the ``else`` of ``if args.amp:`` that holds the only
    ``zero_grad``), or None."""
    if event.optimizer is None:
        return None
    if any(event.optimizer in state.stepped_uncleared for state in step.states.before(event)):
        return "this iteration"
    if any(event.optimizer in state.stepped_uncleared for state in step.states.before_next(event)):
        return "the next iteration"
    return None


def _message(ctx: FileContext, event: StepEvent, again: str) -> str:
    called = ctx.code(event.anchor)
    if "\n" in called and isinstance(event.anchor, cst.Call):
        called = f"{ctx.code(event.anchor.func)}(...)"
    if again == "this iteration":
        return (
            f"`{called}` can follow an earlier step of `{event.optimizer}` in the same iteration with no "
            "`zero_grad()` between them, so it applies the gradients that step already applied again, "
            "summed with the new ones"
        )
    if again == "the next iteration":
        return (
            f"`{called}` can run on one iteration after another with no `zero_grad()` between them "
            "(the loop zeroes the gradients on other paths only), so each `backward()` adds to the last "
            "and the step uses the sum of the gradients since the last zeroing"
        )
    return (
        f"`{called}` runs every iteration but nothing in the loop zeroes the gradients, "
        "so each `backward()` adds to the last and step k uses the sum of k gradients"
    )


def _resets_gradients_otherwise(ctx: FileContext, step: TrainingStep, loop: _Loop) -> bool:
    """A call in the loop or its helpers named like a zeroing helper from another module
    (``reset_grads(model)``), which the step analysis cannot see into. Unsure means quiet.
    (``p.grad = None``, ``p.grad = g`` and ``del p.grad`` are ZERO_GRAD events already.)"""
    scopes: list[cst.CSTNode] = [loop, *step.helpers]
    seen = {id(e.node) for e in step.of_kind(EventKind.ZERO_GRAD)}  # the step knows where these run
    for call in ctx.nodes.of(cst.Call):
        if id(call) in seen:
            continue
        name = _callee_name(call).lower()
        named_like_a_reset = "grad" in name and any(word in name for word in ("zero", "reset", "clear"))
        if named_like_a_reset and _inside_any(ctx, call, scopes):
            return True
    return False


def _callee_name(call: cst.Call) -> str:
    """``clip_gradient`` for ``utils.clip_gradient(...)`` or ``clip_gradient(...)``; else ""."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    return func.value if isinstance(func, cst.Name) else ""


def _built_in_loop(ctx: FileContext, optimizer: str | None, loop: _Loop) -> bool:
    """An optimizer made afresh each iteration usually comes with fresh parameters (test-time
    adaptation, inner loops of meta-learning): stay quiet."""
    if optimizer is None:
        return False
    return any(
        any(dotted_name(t.target) == optimizer for t in assign.targets) and _inside_any(ctx, assign, [loop])
        for assign in ctx.nodes.of(cst.Assign)
    )


def _inside_any(ctx: FileContext, node: cst.CSTNode, scopes: list[cst.CSTNode]) -> bool:
    wanted = {id(scope) for scope in scopes}
    return any(id(ancestor) in wanted for ancestor in ctx.ancestors(node))


# -- the fix -------------------------------------------------------------------------------------
def _zero_grad_fix(ctx: FileContext, step: TrainingStep, event: StepEvent, loop: _Loop) -> Fix | None:
    if event.optimizer is None or _gradients_read_after(ctx, step, event, loop):
        return None
    after = _statement_to_follow(ctx, step, event)
    return ctx.fix(
        [ctx.insert_after(after, f"{event.optimizer}.zero_grad(set_to_none=True)")],
        "safe",
        f"Insert `{event.optimizer}.zero_grad(set_to_none=True)` after the step",
    )


def _statement_to_follow(ctx: FileContext, step: TrainingStep, event: StepEvent) -> cst.CSTNode:
    """The step's statement, or the ``scaler.update()`` right after it in the same block."""
    following = _next_sibling(ctx, event.statement)
    if following is not None and any(
        e.kind is EventKind.SCALER_UPDATE and e.statement is following for e in step.events
    ):
        return following
    return event.statement


def _next_sibling(ctx: FileContext, statement: cst.CSTNode) -> cst.CSTNode | None:
    block = ctx.parent(statement)
    body = getattr(block, "body", None)
    if not isinstance(body, (list, tuple)):
        return None
    for index, sibling in enumerate(body):
        if sibling is statement:
            return body[index + 1] if index + 1 < len(body) else None
    return None


def _gradients_read_after(ctx: FileContext, step: TrainingStep, event: StepEvent, loop: _Loop) -> bool:
    """Code after the step in the same iteration that still reads ``.grad`` (set_to_none would
    hand it None): a gradient event later in the step, or a ``.grad`` in the statements after."""
    if any(e.kind in _GRAD_READERS for e in step.events[step.index(event) + 1 :]):
        return True
    start, _ = ctx.span(event.statement)
    _, end = ctx.span(loop)
    return ".grad" in ctx.source.text[start:end]
