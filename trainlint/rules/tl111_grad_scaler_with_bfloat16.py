"""TL111: a GradScaler scaling the loss of a step whose autocast is bfloat16."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.regions import Regions
from trainlint.analysis.training_step import EventKind, StepEvent, TrainingStep, TrainingSteps, removal_edit
from trainlint.analysis.values import Instance, ValueFlow
from trainlint.analysis.values.torch_calls import argument
from trainlint.analysis.values.torch_semantics import GRAD_SCALERS
from trainlint.context import FileContext, scope_nodes
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

_SCALER_KINDS = frozenset({EventKind.SCALED_BACKWARD, EventKind.UNSCALE, EventKind.SCALER_STEP, EventKind.SCALER_UPDATE})


class GradScalerWithBfloat16(Rule):
    """## What it does
    Finds a training step that scales its loss with a GradScaler (`scaler.scale(loss).backward()`,
    `scaler.step(optimizer)`) while every autocast of the step runs in bfloat16
    (`torch.autocast("cuda", dtype=torch.bfloat16)`, or CPU autocast, bfloat16 by default). The
    scaler must be on whenever the step runs: constructed without `enabled`, with
    `enabled=True`, or with the same flag as the autocast (`enabled=args.amp` on both). A step
    that picks float16 or bfloat16 at run time (`dtype=ptdtype`, a scaler with
    `enabled=(dtype == "float16")`) is not reported: its scaler is there for the float16 runs.

    ## Why is this bad?
    Loss scaling exists for float16, whose smallest normal value is 6.1e-5: small gradients
    underflow to zero unless the loss is multiplied first. bfloat16 has float32's 8 exponent
    bits (smallest normal 1.2e-38, largest 3.4e38), so its gradients neither underflow nor
    overflow where float32's would not. The scaler then only costs: a multiplication of the loss,
    an `unscale_` pass over every gradient and an inf/NaN check (a device-to-host sync) on every
    step, and a scale that doubles every 2000 steps until the scaled gradients overflow, at which
    point it skips a step for no reason. The skips and the scale it logs mean nothing. Multiplying
    by a power of two is exact, so removing the scaler changes no gradient.

    This is worth knowing rather than a bug, so the rule is off by default and its findings are
    at the info level: enable it with `extend-select = ["TL111"]`.

    ## Evidence
    Measured with torch 2.13 on CPU (bfloat16 autocast, a GradScaler on the CPU, SGD with
    `clip_grad_norm_`, 60 steps): the scaler skipped none of the steps, and the run without it
    has the same losses (0.690 -> 0.0422) and the same gradient norms (median 0.0766) to every
    digit printed, with one `unscale_` pass and inf check fewer per step
    (`trainlint confirm --examples TL111`).

    ## Fix safety
    Unsafe: the fix writes `loss.backward()` for `scaler.scale(loss).backward()` and
    `optimizer.step()` for `scaler.step(optimizer)`, and removes `scaler.unscale_(...)` and
    `scaler.update()`. The gradients are the same (a power-of-two scale is exact), but a step
    whose gradients hold inf/NaN is no longer skipped by the scaler, and the scaler's state in
    checkpoints stops changing. It is offered when every scaler call of the step is written in
    the step's own function and each can be rewritten.
    """

    code = "TL111"
    name = "grad-scaler-with-bfloat16"
    summary = "GradScaler used with bfloat16 autocast (loss scaling is for float16)"
    level = "info"
    default_enabled = False
    fix_applicability = "unsafe"
    triggers = ("autocast",)
    examples = (
        Example(
            code='''
            import torch
            import torch.nn.functional as F


            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for inputs, targets in loader:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = F.cross_entropy(model(inputs), targets)
                    optimizer.zero_grad()
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            expect=[(11, 9)],
            fixed='''
            import torch
            import torch.nn.functional as F


            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for inputs, targets in loader:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = F.cross_entropy(model(inputs), targets)
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
            ''',
            unsafe=True,
        ),
    )
    valid_examples = (
        '''
        import torch

        def train(model, loader, optimizer, use_bf16):
            dtype = torch.bfloat16 if use_bf16 else torch.float16
            scaler = torch.amp.GradScaler("cuda", enabled=not use_bf16)
            for inputs, targets in loader:
                with torch.autocast("cuda", dtype=dtype):
                    loss = model(inputs, targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        regions = ctx.get(Regions)
        for step in ctx.get(TrainingSteps).all_steps():
            autocasts = _autocasts_of(ctx, step)
            if not autocasts or not all(regions.is_bfloat16_autocast(call) for call in autocasts):
                continue
            reported: set[str] = set()
            for event in step.of_kind(EventKind.SCALED_BACKWARD):
                scaler = step.scaler_of(event)
                if scaler is None or scaler.expr in reported or not self._always_on(ctx, step, event, autocasts):
                    continue
                reported.add(scaler.expr)
                line = ctx.range(autocasts[0]).start.line
                yield ctx.report(
                    self,
                    event.anchor,
                    f"GradScaler `{scaler.expr}` scales a loss computed under bfloat16 autocast (line {line}): "
                    "bfloat16 has float32's range, so nothing underflows and loss scaling buys nothing; the "
                    "scaler costs an unscale pass and an inf/NaN check every step, and its skips mean nothing",
                    fix=_removal(ctx, step, scaler.expr),
                )

    @staticmethod
    def _always_on(ctx: FileContext, step: TrainingStep, event: StepEvent, autocasts: list[cst.Call]) -> bool:
        """The scaler is on whenever the step runs its bfloat16 autocast: enabled, or enabled by
        the very flag that enables the autocast."""
        scaler = step.scaler_of(event)
        if scaler is not None and scaler.enabled is True:
            return True
        receiver = _scaler_receiver(event)
        if receiver is None:
            return False
        flow = ctx.get(ValueFlow)
        constructions = [v for v in flow.values(receiver).of_type(Instance) if v.cls in GRAD_SCALERS and v.call is not None]
        flags = set()
        for instance in constructions:
            enabled = argument(instance.call, 99, "enabled")  # type: ignore[arg-type]
            flags.add(" ".join(instance.site.ctx.code(enabled.value).split()) if enabled is not None and instance.site else None)
        autocast_flags = set()
        for call in autocasts:
            enabled = next((a for a in call.args if a.keyword is not None and a.keyword.value == "enabled"), None)
            autocast_flags.add(" ".join(ctx.code(enabled.value).split()) if enabled is not None else None)
        return len(flags) == 1 and None not in flags and flags == autocast_flags


def _autocasts_of(ctx: FileContext, step: TrainingStep) -> list[cst.Call]:
    """The autocast calls the step runs under: written in the step's function or the helpers
    inlined into it, or built elsewhere in this module and entered there (``with ctx:``)."""
    flow = ctx.get(ValueFlow)
    found: dict[cst.Call, None] = {}
    for scope in (step.function, *step.helpers):
        for node in scope_nodes(scope):
            if isinstance(node, cst.Call) and _is_autocast(ctx, node):
                found[node] = None
            elif isinstance(node, cst.WithItem) and not isinstance(node.item, cst.Call):
                for instance in flow.values(node.item).of_type(Instance):
                    call = instance.call
                    if call is not None and instance.site is not None and instance.site.ctx is ctx and _is_autocast(ctx, call):
                        found[call] = None
    return sorted(found, key=lambda call: ctx.order(call)[0])


def _is_autocast(ctx: FileContext, call: cst.Call) -> bool:
    return (ctx.qualified_name(call.func) or "").endswith("autocast")


def _scaler_receiver(event: StepEvent) -> cst.BaseExpression | None:
    """``scaler`` in ``scaler.scale(loss).backward()``."""
    scale = _scale_call(event.node)
    return scale.func.value if scale is not None and isinstance(scale.func, cst.Attribute) else None


def _scale_call(backward: cst.CSTNode) -> cst.Call | None:
    """The ``scaler.scale(loss)`` call that ``.backward()`` is called on (``(scaler.scale(loss) /
    accumulation).backward()`` too)."""
    if not isinstance(backward, cst.Call) or not isinstance(backward.func, cst.Attribute):
        return None
    value = backward.func.value
    while isinstance(value, cst.BinaryOperation):
        value = value.left
    if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "scale":
        return value
    return None


# -- the fix -----------------------------------------------------------------------------------------
def _removal(ctx: FileContext, step: TrainingStep, scaler: str) -> Fix | None:
    """``loss.backward()``, ``optimizer.step()``, and no ``unscale_``/``update``, when every call
    of this scaler in the step is in the step's own function and can be rewritten."""
    edits: list[Edit | None] = []
    for event in step.events:
        if event.scaler != scaler or event.kind not in _SCALER_KINDS:
            continue
        if event.via_helper is not None:
            return None
        edit = _edit_for(ctx, event)
        if edit is None:
            return None
        edits.append(edit)
    return ctx.fix(edits, "unsafe", "Remove the GradScaler from the step") if edits else None


def _edit_for(ctx: FileContext, event: StepEvent) -> Edit | None:
    if event.kind is EventKind.SCALED_BACKWARD:
        scale = _scale_call(event.node)
        loss = event.target
        if scale is None or loss is None:
            return None
        code = ctx.code(loss)
        return ctx.replace(scale, code if isinstance(loss, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) else f"({code})")
    if event.kind is EventKind.SCALER_STEP:
        call = event.node
        if not isinstance(call, cst.Call) or not call.args or call.args[0].keyword is not None or call.args[0].star:
            return None
        optimizer = ctx.code(call.args[0].value)
        rest = ", ".join(ctx.code(a).rstrip(", ") for a in call.args[1:])
        return ctx.replace(call, f"{optimizer}.step({rest})")
    return removal_edit(ctx, event.statement)
