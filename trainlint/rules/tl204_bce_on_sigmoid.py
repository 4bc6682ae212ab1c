"""TL204: ``binary_cross_entropy`` / ``nn.BCELoss`` applied to a ``sigmoid`` output."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.regions import Regions
from trainlint.analysis.probabilities import Probabilities, Producer, Trace, positional_argument
from trainlint.analysis.values import Scopes
from trainlint.context import FileContext
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

_BCE_FUNCTION = "torch.nn.functional.binary_cross_entropy"
_BCE_MODULES = frozenset({"torch.nn.BCELoss", "torch.nn.modules.loss.BCELoss"})


@dataclass(frozen=True)
class LossCall:
    """A loss call and its input. For a loss module, ``module`` is its class name (``BCELoss``)
    and ``constructor`` its ``nn.BCELoss(...)`` construction when there is exactly one."""

    call: cst.Call
    input: cst.BaseExpression
    constructor: cst.Call | None
    module: str | None = None


def loss_calls(
    probabilities: Probabilities, functions: frozenset[str], modules: frozenset[str]
) -> Iterator[LossCall]:
    """Calls of the given loss functions or of instances of the given loss modules."""
    ctx = probabilities.ctx
    for call in ctx.nodes.of(cst.Call):
        constructor = module = None
        if ctx.qualified_name(call.func) not in functions:
            if not _may_call_a_loss_module(call):
                continue
            instances = probabilities.module_instances(call.func, modules)
            if not instances:
                continue
            module = instances[0].name
            constructor = instances[0].call if len(instances) == 1 else None
        argument = positional_argument(call, 0, "input")
        if argument is not None:
            yield LossCall(call, argument.value, constructor, module)


def _may_call_a_loss_module(call: cst.Call) -> bool:
    """The shape of a call of a loss module, asked before the engine is (most calls of a file are
    methods and submodules: asking about each would read half the project): an input and a target,
    and a callee that is a construction (``nn.BCELoss()(p, y)``) or a name that says loss
    (``criterion``, ``self.loss_fn``, ``adversarial_loss``, ``bce``, ``self.nll``)."""
    func = call.func
    positional = sum(1 for arg in call.args if arg.keyword is None and not arg.star)
    keywords = {arg.keyword.value for arg in call.args if arg.keyword is not None}
    if positional < 2 and "target" not in keywords and "input" not in keywords:
        return False
    if isinstance(func, cst.Call):
        return True
    name = func.value if isinstance(func, cst.Name) else func.attr.value if isinstance(func, cst.Attribute) else ""
    lowered = name.lower()
    return any(word in lowered for word in _LOSS_WORDS) or bool(_LOSS_TOKENS & set(re.split(r"[_\d]+", lowered)))


# How the projects' code names a loss module (`criterion_GAN`, `self.cls_loss`, `bce`, `nll_fn`).
_LOSS_WORDS = ("loss", "crit", "entropy")
_LOSS_TOKENS = frozenset({"bce", "ce", "nll", "kl", "kld", "xent", "cel"})


def producer_trace(probabilities: Probabilities, expr: cst.BaseExpression, kind: str) -> Trace | None:
    """The trace of a loss input that is only ``kind`` outputs, possibly selected or reshaped."""
    trace = probabilities.trace(expr)
    if trace is None or trace.kinds != {kind} or trace.eps or trace.complement or trace.selected:
        return None
    return trace


def producer_place(ctx: FileContext, loss: LossCall, trace: Trace) -> str:
    """Where the activation is, when it is not written in the loss's own expression: in another
    function, at the end of a model's ``forward``, in an ``nn.Sequential``."""
    producer = trace.producers[0]
    if producer.local and producer.style != "layer":
        function = ctx.enclosing(loss.call, cst.FunctionDef)
        if ctx.enclosing(producer.call, cst.FunctionDef) is function:
            return ""
    return producer.where()


def replace_producer(
    ctx: FileContext,
    probabilities: Probabilities,
    loss_input: cst.BaseExpression,
    trace: Trace,
    replacement: Callable[[Producer], str | None],
) -> list[Edit | None] | None:
    """Edits that put ``replacement(producer)`` where the producer's output enters the loss:
    in place when the producer is written inside the input; through a name bound once to it and
    used only here, by deleting that binding (when its logits are a name that stays unchanged).
    None when neither applies."""
    if len(trace.producers) != 1:
        return None
    producer = trace.producers[0]
    if not producer.local or producer.input is None:
        return None  # the activation is in another function or ends a model: no local rewrite
    new = replacement(producer)
    if new is None:
        return None
    if producer.call is loss_input or any(a is loss_input for a in ctx.ancestors(producer.call)):
        code = new if isinstance(ctx.parent(producer.call), cst.Arg) else _atomic(new)
        return [ctx.replace(producer.call, code)]
    return _replace_through_binding(ctx, probabilities, loss_input, producer, new)


def _atomic(code: str) -> str:
    expression = cst.parse_expression(code)
    atomic = isinstance(expression, (cst.Name, cst.Attribute, cst.Call, cst.Subscript))
    return code if atomic else f"({code})"


def _replace_through_binding(
    ctx: FileContext, probabilities: Probabilities, loss_input: cst.BaseExpression, producer: Producer, new: str
) -> list[Edit | None] | None:
    """For ``p = <producer>`` or ``p = <producer>.view(-1)[mask]`` bound once and read only by the
    loss: inline the replacement and delete the line (first form, logits a name that does not
    change in between), or replace the producer inside the bound value (second form)."""
    values = ctx.get(Scopes)
    load = _base_name(loss_input)
    function = values.scope_of(loss_input)
    if load is None:
        return None
    records = values.records(function).get(load.value, [])
    if len(records) != 1 or records[0].kind != "assign" or values.uses(load.value, function) != [load]:
        return None
    bound = records[0].value
    if bound is not producer.call:
        if not any(a is bound for a in ctx.ancestors(producer.call)):
            return None
        code = new if isinstance(ctx.parent(producer.call), cst.Arg) else _atomic(new)
        return [ctx.replace(producer.call, code)]
    logits = dotted_name(producer.input)
    if logits is None or values.later_bindings(logits.split(".")[0], producer.call, function):
        return None
    line = ctx.parent(records[0].statement)
    block = ctx.parent(line) if line is not None else None
    if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
        return None
    if not isinstance(block, cst.BaseSuite) or len(getattr(block, "body", ())) < 2:
        return None
    return [ctx.remove(line), ctx.replace(load, new if isinstance(ctx.parent(load), cst.Arg) else _atomic(new))]


def _base_name(expr: cst.BaseExpression) -> cst.Name | None:
    """``p`` in ``p``, ``p[i]``, ``p.squeeze(1)``, ``p.view(-1).float()``."""
    while True:
        if isinstance(expr, cst.Name):
            return expr
        if isinstance(expr, cst.Subscript):
            expr = expr.value
        elif isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
            expr = expr.func.value
        else:
            return None


class BceOnSigmoid(Rule):
    """## What it does
    Finds `F.binary_cross_entropy(torch.sigmoid(x), y)` and `nn.BCELoss()` called on a sigmoid
    output (directly, or through a name, indexing or a reshape inside the function).

    The sigmoid may be anywhere the value comes from: through names, in another function whose
    result is passed in, at the end of a model's `forward` or as the last layer of its
    `nn.Sequential` (a GAN discriminator), in another module of the project; the loss may be built
    elsewhere too (`criterion` passed to a `Trainer`). It is reported only when every value that
    may reach the loss is a sigmoid output; the message names where the sigmoid is when it is not
    in the loss's own function, and the fix is offered only when it is.

    ## Why is this bad?
    The sigmoid is computed on its own and rounds to exactly 1.0 from a logit of ~17 in float32
    (~8.3 in float16). For a confidently wrong prediction, `log(1 - p)` is then -inf, which BCE
    clamps at -100: measured, `binary_cross_entropy(sigmoid(30), 0)` is 100 with gradient 0,
    where `binary_cross_entropy_with_logits(30, 0)` is 30 with gradient 1. The examples the model
    gets most wrong stop teaching it. `binary_cross_entropy_with_logits` (`nn.BCEWithLogitsLoss`)
    fuses the sigmoid into the loss with the log-sum-exp trick: the same function, stable.

    The fix is safe when the sigmoid feeds only the loss: it passes the logits to
    `binary_cross_entropy_with_logits` (same `weight`/`reduction` arguments), deleting a
    `probs = torch.sigmoid(logits)` line that nothing else reads. For an `nn.BCELoss()` it changes
    the construction to `nn.BCEWithLogitsLoss()` only when the construction is visible in the
    same class or function and every call of that loss gets a sigmoid output; otherwise the
    finding comes without a fix.

    ## Fix safety
    Safe: `binary_cross_entropy_with_logits(x, y)` equals `binary_cross_entropy(sigmoid(x), y)`
    with the same `weight` and `reduction`; they differ only where the sigmoid rounded to 0 or 1 (a
    loss clamped at 100 with a zero gradient before, the exact loss and gradient after) and by
    rounding. `nn.BCELoss` becomes `nn.BCEWithLogitsLoss` only when every use of that instance is
    rewritten with it.
    """

    code = "TL204"
    name = "bce-on-sigmoid"
    summary = "`binary_cross_entropy`/`BCELoss` on a sigmoid output instead of the logits"
    level = "error"
    fix_applicability = "safe"
    # A loss built in another module reaches a file that only calls it (`criterion(D(x), y)`).
    triggers = ("binary_cross_entropy", "BCELoss", "loss", "criterion")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn.functional as F

            def mask_loss(mask_logits, target):
                return F.binary_cross_entropy(torch.sigmoid(mask_logits), target, reduction="mean")
            ''',
            expect=[(5, 12)],
            fixed='''
            import torch
            import torch.nn.functional as F

            def mask_loss(mask_logits, target):
                return F.binary_cross_entropy_with_logits(mask_logits, target, reduction="mean")
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch.nn.functional as F

        def mask_loss(mask_logits, target):
            return F.binary_cross_entropy_with_logits(mask_logits, target)
        ''',
        '''
        import torch
        import torch.nn.functional as F

        def mask_loss(mask_logits, target):
            probs = torch.sigmoid(mask_logits).clamp(1e-4, 1 - 1e-4)
            return F.binary_cross_entropy(probs, target)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        findings = []
        regions = ctx.get(Regions)
        for loss in loss_calls(probabilities, frozenset({_BCE_FUNCTION}), _BCE_MODULES):
            trace = producer_trace(probabilities, loss.input, "sigmoid")
            if trace is not None and not trace.detached and not regions.computes_no_gradient(loss.call):
                findings.append((loss, trace))
        calls_by_constructor: dict[cst.Call, list[tuple[LossCall, Trace]]] = {}
        for loss, trace in findings:
            if loss.constructor is not None:
                calls_by_constructor.setdefault(loss.constructor, []).append((loss, trace))
        for loss, trace in findings:
            if loss.module is None:
                fix = self._function_fix(ctx, probabilities, loss, trace)
            elif loss.constructor is not None:
                fix = self._module_fix(ctx, probabilities, loss.constructor, calls_by_constructor[loss.constructor])
            else:
                fix = None  # several constructions reach this call
            what = "`nn.BCELoss`" if loss.module is not None else "`binary_cross_entropy`"
            yield ctx.report(
                self,
                loss.call,
                f"{what} of a `sigmoid` output{producer_place(ctx, loss, trace)}: sigmoid rounds to 1.0 from a "
                f"logit of ~17 in float32, where the clamped log gives a loss of 100 and a zero gradient; the "
                f"with-logits loss is exact and stable",
                fix=fix,
            )

    @staticmethod
    def _function_fix(ctx: FileContext, probabilities: Probabilities, loss: LossCall, trace: Trace) -> Fix | None:
        callee = probabilities.renamed_callee(loss.call.func, "binary_cross_entropy_with_logits")
        edits = replace_producer(ctx, probabilities, loss.input, trace, _logits_of(probabilities))
        if callee is None or edits is None:
            return None
        message = "Use `binary_cross_entropy_with_logits` on the logits"
        return ctx.fix([ctx.replace(loss.call.func, callee), *edits], "safe", message)

    @staticmethod
    def _module_fix(
        ctx: FileContext, probabilities: Probabilities, constructor: cst.Call, calls: list[tuple[LossCall, Trace]]
    ) -> Fix | None:
        """Switch a visible ``nn.BCELoss(...)`` to ``nn.BCEWithLogitsLoss(...)`` when every use of
        the instance is one of ``calls``."""
        callee = probabilities.renamed_callee(constructor.func, "BCEWithLogitsLoss")
        if callee is None or not _only_called_here(ctx, constructor, [loss.call for loss, _ in calls]):
            return None
        edits: list[Edit | None] = [ctx.replace(constructor.func, callee)]
        for loss, trace in calls:
            found = replace_producer(ctx, probabilities, loss.input, trace, _logits_of(probabilities))
            if found is None:
                return None
            edits += found
        return ctx.fix(edits, "safe", "Use `nn.BCEWithLogitsLoss` on the logits")


def _logits_of(probabilities: Probabilities) -> Callable[[Producer], str]:
    """The replacement of a sigmoid by its logits argument."""
    return lambda producer: probabilities.code_without_parens(producer.input)


def _only_called_here(ctx: FileContext, constructor: cst.Call, calls: list[cst.Call]) -> bool:
    """True when the loss instance built by ``constructor`` is used only as the callee of ``calls``:
    built inline, or bound to a local name / ``self.<attr>`` that nothing else reads."""
    if any(call.func is constructor for call in calls):
        return len(calls) == 1
    callees = {id(call.func) for call in calls}
    parent = ctx.parent(constructor)
    if not isinstance(parent, cst.Assign) or len(parent.targets) != 1:
        return False
    target = parent.targets[0].target
    if isinstance(target, cst.Name):
        values = ctx.get(Scopes)
        scope = values.scope_of(parent)
        uses = values.uses(target.value, scope)
        if isinstance(scope, cst.Module) and ctx.project.importers(ctx.module_name or "__main__", target.value):
            return False  # another module imports this loss and may call it on other inputs
        return bool(uses) and all(id(use) in callees for use in uses)
    attribute = dotted_name(target)
    class_def = ctx.enclosing(parent, cst.ClassDef)
    if attribute is None or class_def is None or not attribute.startswith("self."):
        return False
    reads = [
        node
        for node in ctx.nodes.of(cst.Attribute)
        if node is not target and dotted_name(node) == attribute and ctx.enclosing(node, cst.ClassDef) is class_def
    ]
    return bool(reads) and all(id(node) in callees for node in reads)
