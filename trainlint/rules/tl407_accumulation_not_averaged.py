"""TL407: gradient accumulation whose loss is not divided by the number of micro-batches."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.loop_facts import AccumulationStep, LoopFacts
from trainlint.analysis.model_structure import number
from trainlint.analysis.probabilities import is_atomic
from trainlint.analysis.training_step import EventKind, OptimizerInfo, StepEvent, TrainingStep, TrainingSteps
from trainlint.analysis.values import Instance, ValueFlow
from trainlint.analysis.values.torch_semantics import COUPLED_DECAY, SCALE_INVARIANT_OPTIMIZERS
from trainlint.context import FileContext, descendants
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class AccumulationNotAveraged(Rule):
    """## What it does
    Reports gradient accumulation whose loss reaches the backward undivided: a `backward()` on
    every iteration of a loop whose optimizer step runs only when a counter reaches a multiple
    (`if (i + 1) % accum == 0: optimizer.step()`), or a `backward()` on every part of one batch
    (`for i in range(0, n, micro)`, `for part in batch.split(k)`, a helper called on each
    part) with no step and no `zero_grad` in that loop, when the loss on its way to the backward
    is not divided (`loss / accum`, `loss /= accum`, `loss.div(k)`, `loss * 0.25`, a factor
    computed as a quotient or named for accumulation; also in the project function that returns
    the loss, `loss, correct = forward_pass(batch)`) nor computed by a function that receives
    the accumulation count.

    When every optimizer the step uses is known (through the value-flow engine, from wherever
    the project builds it) to be scale-invariant (Adam, AdamW, RMSprop, Adagrad, ...), the sum
    changes its update only through what is not: a clipping in the step (reported, with the
    threshold it now amounts to) or a constant `weight_decay` that such an optimizer adds to the
    gradient (Adam, not AdamW; reported). Otherwise the loop is left alone. When the optimizer is
    unknown, the message says what the sum does with SGD and with Adam.

    It does not apply to Accelerate (`accelerator.backward` divides by
    `gradient_accumulation_steps` itself), Lightning's automatic optimization
    (`accumulate_grad_batches` divides), Fabric, DeepSpeed engines and the HF `Trainer`: their
    backwards are not reported. A loop whose optimizer's learning rate is itself divided
    (`lr=base_lr / batch`, Darknet's convention for summed losses) is not reported either: the sum
    is meant.

    ## Why is this bad?
    Each `backward()` adds its gradient into `.grad`. After `accum` micro-batches the optimizer
    sees the sum of `accum` mean-loss gradients: `accum` times the gradient of the large batch the
    accumulation stands for. With SGD the step is `accum` times longer, as if the learning rate
    were multiplied by `accum`; a learning rate tuned without accumulation (or a change of `accum`)
    silently changes training, and gradient clipping cuts at a norm `accum` times too small. Adam
    is scale-invariant in steady state, but its epsilon, weight decay balance and clipping are not.

    The fix divides the loss in the backward (`(loss / accum).backward()`, `scaler.scale(loss /
    accum)`), leaving the loss as logged unchanged; it is offered for the counter pattern, where the
    count is the divisor the step waits for.

    ## Evidence
    Measured with torch 2.13 on CPU (`benchmarks/loop_rules_evidence.py`): linear regression with
    SGD (lr 0.05) and 8 micro-batches per step: the first update moves the weights 8.0 times as
    far as the same step on the whole batch; divided by 8, 1.0 times.

    ## Fix safety
    Unsafe: it changes every update (by design: by the factor `accum`), so a learning rate tuned
    on the undivided loss must be tuned again.
    """

    code = "TL407"
    name = "accumulation-not-averaged"
    summary = "Gradient accumulation without dividing the loss by the number of micro-batches"
    level = "warning"
    fix_applicability = "unsafe"
    triggers = ("backward",)
    examples = [
        Example(
            code='''
            import torch.nn.functional as F

            def train(model, loader, optimizer, accum_steps=8):
                model.train()
                for step, (inputs, targets) in enumerate(loader):
                    loss = F.cross_entropy(model(inputs), targets)
                    loss.backward()
                    if (step + 1) % accum_steps == 0:
                        optimizer.step()
                        optimizer.zero_grad()
            ''',
            expect=[(7, 9)],
            unsafe=True,
            fixed='''
            import torch.nn.functional as F

            def train(model, loader, optimizer, accum_steps=8):
                model.train()
                for step, (inputs, targets) in enumerate(loader):
                    loss = F.cross_entropy(model(inputs), targets)
                    (loss / accum_steps).backward()
                    if (step + 1) % accum_steps == 0:
                        optimizer.step()
                        optimizer.zero_grad()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch.nn.functional as F

        def train(model, loader, optimizer, accum_steps=8):
            for step, (inputs, targets) in enumerate(loader):
                loss = F.cross_entropy(model(inputs), targets) / accum_steps
                loss.backward()
                if (step + 1) % accum_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
        ''',
        '''
        def train(model, loader, optimizer, accelerator):
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        facts = ctx.get(LoopFacts)
        for accumulation in facts.accumulation_steps():
            if _lr_divided(ctx, accumulation.step):
                continue
            undivided = [e for e in accumulation.backwards if _undivided(ctx, facts, e, accumulation)]
            every = ctx.short_code(accumulation.every)
            harm = _harm(ctx, accumulation.step, f"`{every}`") if undivided else None
            if harm is not None:
                step = ctx.short_code(accumulation.steps[0].node)
                message = (
                    f"`{ctx.short_code(undivided[0].node)}` runs every iteration and `{step}` only every `{every}` "
                    f"iterations, but the loss is not divided by `{every}`: each step applies the sum of `{every}` "
                    f"gradients, {harm}"
                )
                yield ctx.report(self, undivided[0].node, message, _fix(ctx, accumulation, undivided))
        steps = ctx.get(TrainingSteps).all_steps()
        for micro in facts.micro_batch_loops():
            own = [step for step in steps if step.function is ctx.get(ValueFlow).scopes.scope_of(micro.loop)]
            if any(_lr_divided(ctx, step) for step in own):
                continue
            undivided: list[cst.CSTNode] = [
                e.node for e in micro.backwards
                if e.kind is not EventKind.FRAMEWORK_BACKWARD and e.target is not None and not facts.divided_on_the_way(e.target)
            ]
            anchors = undivided if micro.backwards else list(micro.helpers)
            if not anchors or (micro.backwards and len(undivided) < len(micro.backwards)):
                continue
            harms = [_harm(ctx, step, "that many") for step in own] or [_harm_unknown("that many")]
            if all(h is None for h in harms):
                continue
            loop = micro.loop
            message = (
                f"`{ctx.short_code(anchors[0])}` runs a backward on every part of the batch in `for {ctx.short_code(loop.target)} in "
                f"{ctx.short_code(loop.iter)}` and the optimizer steps once for all of them, but the loss is not divided by "
                f"their number: the step applies the sum of their gradients, {next(h for h in harms if h is not None)}"
            )
            yield ctx.report(self, anchors[0], message)


def _harm(ctx: FileContext, step: TrainingStep, times: str) -> str | None:
    """What a step applying the sum of ``times`` gradients changes, for the optimizers it steps;
    None when nothing a user would notice: a scale-invariant optimizer (Adam, AdamW, RMSprop)
    whose update is the same for a sum as for a mean, with no clipping in the step and no
    weight decay known to be added to the gradient."""
    classes = {info.constructor for info in step.optimizers.values()}
    if not classes or None in classes:
        return _harm_unknown(times)
    if not classes <= SCALE_INVARIANT_OPTIMIZERS:
        return _plain_harm(times)
    clips = step.of_kind(EventKind.CLIP)
    if clips:
        return (
            f"and `{ctx.short_code(clips[0].node)}` clips that sum: as if it clipped the mean gradient at a norm "
            f"{times} times smaller (the optimizer's own update does not depend on the gradient's scale)"
        )
    decay = _coupled_weight_decay(step)
    if decay is not None:
        return (
            f"which outweighs the optimizer's weight decay (`weight_decay={decay:g}`, added to the gradient) "
            f"{times} times more than one batch's"
        )
    return None


def _plain_harm(times: str) -> str:
    return f"a learning rate {times} times larger than one batch's"


def _harm_unknown(times: str) -> str:
    return (
        f"with SGD a learning rate {times} times larger than one batch's (with Adam, a clipping threshold or "
        "weight decay that weighs that much less)"
    )


def _coupled_weight_decay(step: TrainingStep) -> float | None:
    """The nonzero constant ``weight_decay`` of an optimizer of the step that adds it to the
    gradient (Adam, not AdamW)."""
    for info in step.optimizers.values():
        if info.constructor not in COUPLED_DECAY:
            continue
        for construction in _constructions(info):
            for arg in construction.args:
                if arg.keyword is not None and arg.keyword.value == "weight_decay":
                    value = number(arg.value)
                    if value:
                        return value
    return None


def _undivided(ctx: FileContext, facts: LoopFacts, event: StepEvent, accumulation: AccumulationStep) -> bool:
    if event.kind is EventKind.FRAMEWORK_BACKWARD or event.target is None:
        return False  # Accelerate, Fabric, Lightning divide (or own) the accumulation
    return not facts.divided_on_the_way(event.target) and not _given_the_count(ctx, event, accumulation)




def _given_the_count(ctx: FileContext, event: StepEvent, accumulation: AccumulationStep) -> bool:
    """The loss is computed by a call that receives the accumulation count (``compute_loss(x,
    accum)``): it may divide inside."""
    if accumulation.every is None or event.target is None:
        return False
    count = ctx.code(accumulation.every)
    flow = ctx.get(ValueFlow)
    names = [event.target] if isinstance(event.target, cst.Name) else []
    for name in names:
        for binding in flow.scopes.reaching(name).bindings:  # type: ignore[arg-type]
            source = binding.value if binding.value is not None else binding.source
            if source is not None and count in ctx.code(source):
                return True
    return False


def _lr_divided(ctx: FileContext, step: TrainingStep) -> bool:
    """An optimizer of the step built with a divided learning rate (``lr=base_lr / batch``): the
    code scales the learning rate for a summed loss itself."""
    for info in step.optimizers.values():
        for construction in _constructions(info):
            lr = _lr_argument(construction)
            if lr is not None and any(
                isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Divide) for n in (lr, *descendants(lr))
            ):
                return True
    return False


def _constructions(info: OptimizerInfo) -> list[cst.Call]:
    instance = info.instance
    if isinstance(instance, Instance) and instance.call is not None:
        return [instance.call]
    return []


def _lr_argument(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "lr":
            return arg.value
    positional = [a for a in call.args if a.keyword is None and not a.star]
    return positional[1].value if len(positional) > 1 else None


def _fix(ctx: FileContext, accumulation: AccumulationStep, events: list[StepEvent]) -> Fix | None:
    """``(loss / accum).backward()``, ``scaler.scale(loss / accum).backward()``, for every
    backward of the iteration."""
    every = accumulation.every
    divisor = ctx.code(every) if is_atomic(every) else f"({ctx.code(every)})"
    edits = []
    for event in events:
        call, target = event.node, event.target
        if not isinstance(call, cst.Call) or not isinstance(call.func, cst.Attribute) or target is None:
            return None
        receiver = call.func.value
        if receiver is target:
            new = f"({ctx.code(target)} / {divisor})"
        elif isinstance(receiver, cst.Call) and any(a.value is target for a in receiver.args):
            new = f"{ctx.code(target) if is_atomic(target) else '(' + ctx.code(target) + ')'} / {divisor}"
        else:
            return None
        edits.append(ctx.replace(target, new))
    return ctx.fix(edits, "unsafe", f"Divide the loss by `{ctx.code(every)}` in the backward")
