"""TL201: ``log`` of a probability that can reach 0, or of ``x + eps`` with an eps float16 cannot use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.probabilities import (
    FLOAT16_SAFE_EPS,
    SHAPE_METHODS,
    Probabilities,
    Producer,
    Trace,
    format_float,
    positional_argument,
)
from trainlint.analysis.regions import Regions
from trainlint.analysis.selection import used_only_to_select
from trainlint.analysis.values import Scopes, Tensor
from trainlint.context import FileContext
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule
from trainlint.rules.tl202_log_of_softmax import log_softmax_code
from trainlint.rules.tl203_log_of_sigmoid import logsigmoid_code, sigmoid_under_log
from trainlint.rules.tl204_bce_on_sigmoid import loss_calls

_CLAMP_NOTE = "; clamping stops the NaN but cuts the gradient below the floor"
FLOAT16_FIX_EPS = 2e-5  # 1/2e-5 = 50000 < 65504: a floor float16's gradient can hold
# Losses whose input is log-probabilities: a `log` passed to them is the log of a probability.
_LOG_PROBABILITY_FUNCTIONS = frozenset({"torch.nn.functional.nll_loss", "torch.nn.functional.kl_div"})
_LOG_PROBABILITY_MODULES = frozenset({
    "torch.nn.NLLLoss", "torch.nn.modules.loss.NLLLoss", "torch.nn.KLDivLoss", "torch.nn.modules.loss.KLDivLoss",
})


@dataclass(frozen=True)
class LogUse:
    """A log of a probability in one of the shapes that rewrite into log space:
    ``log(core)`` or ``log(core + eps)``, where ``core`` is the probability or a selection of it
    (``p[i]``, ``p.gather(...)``, ``torch.gather(p, ...)``) and ``base`` is the probability."""

    log_call: cst.Call
    core: cst.BaseExpression
    base: cst.BaseExpression
    eps: float | None


class LogWithoutFloor(Rule):
    """## What it does
    Finds `torch.log(p)` and `p.log()` where `p` comes from a `softmax` or `sigmoid` (directly,
    through a name, indexing, `gather`, `torch.where` or `1 - p`) with no floor; and, in code
    that may run in float16, `-torch.log(p + 1e-7)` with an eps below 1/65504 ≈ 1.5e-5, and any
    `torch.log(x + eps)` with such an eps. `log(softmax(x))` and `log(sigmoid(x))` written as one
    expression are TL202 and TL203.

    "May run in float16" is decided from the float16 autocast regions (not bfloat16, not CPU,
    not `enabled=False`) that reach the code: around it, around a call of its function, around
    a call of the model whose method it is (anywhere in the project), a `.half()` model, or a
    `Trainer(precision="16-mixed")`. A small eps in float32 code keeps the log finite and is not
    reported. Code that computes no gradient (`torch.no_grad()`, `inference_mode()`, a function
    only such code calls, a `.detach()`ed probability) is not reported either: the harm is a NaN
    gradient. Nor is a log whose value only ranks or selects (a label-assignment cost read through
    the indices of `topk`/`min`, comparisons, its shape): no gradient flows through indices.

    The probability may come from anywhere the value-flow engine can follow: another function
    whose result is passed in, a method of a policy network, the end of a model's `forward`,
    another module of the project. It is reported only when every value that may reach the log
    is such a probability (a value trainlint cannot see keeps the rule quiet), and the message
    names where the softmax or sigmoid is when it is not in the log's own function. A log passed
    to `nll_loss`/`NLLLoss` or `kl_div`/`KLDivLoss`, which take log-probabilities, is the log of a
    probability whatever its argument is, and is reported when nothing floors that argument.

    ## Why is this bad?
    A probability reaches exactly 0 long before the model is done being wrong: softmax rounds
    e^-104 to 0 in float32, and in float16 anything below 3e-8 (half its smallest subnormal).
    Then `log(p)` is -inf, and d/dp log(p) = 1/p overflows even earlier (1/p = 1e7 at p = 1e-7,
    beyond float16's 65504). An eps of 1e-7 does not help in float16: `1 + 1e-7 == 1` there,
    and 1/(p + 1e-7) still overflows, so `-log(p + 1e-7)` has a NaN gradient from a logit gap of
    ~11. The eps or clamp "fixes" stop the NaN but flatten the gradient below the floor: at a
    gap of 20, `-log(p + 1e-7)` gives the logits a gradient of 0.02 where `log_softmax` gives 1,
    and `log(p.clamp(min=1e-6))` gives 0.

    The fix rewrites into log space when `p` is a softmax/sigmoid used only under logs (directly
    or through indexing/`gather`): `log_p = F.log_softmax(x, dim)` once, then `log_p[i]`. This is
    safe when there was no eps (the same values, computed stably) and unsafe when an eps is
    dropped (the loss of confidently wrong predictions is no longer capped at -log(eps)).
    Otherwise the fix is unsafe: `torch.log(p.clamp(min=EPS))`, which stops the NaN but leaves no
    gradient below EPS (option `eps`); in code that may run in float16 the fix uses 2e-5 when EPS is
    smaller, since a floor below 1/65504 would leave 1/EPS overflowing float16.

    ## Evidence
    Measured on CPU with torch 2.13: `-log(softmax(x)[1])` for logits `[0, -gap]` is -inf from a
    gap of 104 in float32, with a NaN gradient from 88.75; `-log(p + 1e-7)` in float16 has a NaN
    gradient from a gap of 11.25 (with eps 1e-5 from 12.25; with eps 2e-5 never, up to a gap of
    60). A toy classifier trained with `log(p.clamp(min=1e-6))` reached 28% accuracy where
    `log_softmax` reached 56%.

    ## Fix safety
    Safe when the fix rewrites into log space and no eps is dropped: `log_softmax`/`logsigmoid`
    compute the same values as `log(softmax)`/`log(sigmoid)`, without the -inf. Unsafe when an
    eps is dropped (the loss of confident mistakes is no longer capped at -log(eps)), and for the
    clamp, which picks a floor (option `eps`) and changes the value and zeroes the gradient of every
    probability below it.
    """

    code = "TL201"
    name = "log-without-floor"
    summary = "`log` of a probability that can reach 0 (no floor, or an eps float16 cannot use)"
    level = "error"
    fix_applicability = "safe"
    triggers = ("log",)
    default_options = {"eps": 1e-6}
    option_bounds = {"eps": (0.0, 1.0)}
    examples = [
        Example(
            code='''
            import torch
            import torch.nn.functional as F

            def classification_loss(logits, target):
                probs = F.softmax(logits, dim=1)
                return -torch.log(probs.gather(1, target.unsqueeze(1))).mean()
            ''',
            expect=[(6, 13)],
            fixed='''
            import torch
            import torch.nn.functional as F

            def classification_loss(logits, target):
                log_probs = F.log_softmax(logits, dim=1)
                return -log_probs.gather(1, target.unsqueeze(1)).mean()
            ''',
        ),
        Example(
            code='''
            import torch
            import torch.nn.functional as F

            def loss_and_accuracy(logits, target):
                probs = F.softmax(logits, dim=1)
                loss = -torch.log(probs.gather(1, target.unsqueeze(1))).mean()
                return loss, (probs.argmax(1) == target).float().mean()
            ''',
            expect=[(6, 13)],
            fixed='''
            import torch
            import torch.nn.functional as F

            def loss_and_accuracy(logits, target):
                probs = F.softmax(logits, dim=1)
                loss = -torch.log(probs.gather(1, target.unsqueeze(1)).clamp(min=1e-6)).mean()
                return loss, (probs.argmax(1) == target).float().mean()
            ''',
            unsafe=True,
        ),
    ]
    valid_examples = [
        '''
        import math
        import torch

        def positional_encoding(d_model):
            div = torch.exp(torch.arange(0, d_model, 2) * (-torch.log(torch.tensor(10000.0)) / d_model))
            return div, math.log(d_model)
        ''',
        '''
        import torch

        def gaussian_nll(mu, std, x):
            return torch.log(std) + (x - mu) ** 2 / (2 * std ** 2)
        ''',
        '''
        import torch

        def focal(logits):
            p = torch.sigmoid(logits)
            return torch.log(p.clamp(min=1e-4)), torch.log1p(-p)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        regions = ctx.get(Regions)
        judged: set[cst.Call] = set()
        for log_call, argument in probabilities.log_calls():
            if self._is_composed(probabilities, argument):
                judged.add(log_call)
                continue  # TL202 / TL203
            if used_only_to_select(ctx, log_call):
                judged.add(log_call)
                continue  # a cost that only ranks (label assignment): no gradient flows through it
            trace = probabilities.trace(argument)
            if trace is not None and trace.producers:
                judged.add(log_call)
                if trace.detached or regions.computes_no_gradient(log_call):
                    continue  # no gradient flows back through it: no NaN gradient to fear
                if not trace.eps or (sum(trace.eps) < FLOAT16_SAFE_EPS and regions.may_run_in_float16(log_call)):
                    yield self._probability_finding(ctx, probabilities, log_call, argument, trace)
            elif (eps := self._small_eps(probabilities, argument)) is not None:
                # where the eps is (cheap), then whether float16 may reach it (callers, autocast)
                if regions.may_run_in_float16(log_call) and not regions.computes_no_gradient(log_call):
                    fix = self._clamp_fix(ctx, probabilities, argument, float16=True)
                    floor = probabilities.floor_of(strip_eps(probabilities, argument)[0])
                    at = f"x = {format_float(floor)}, its floor," if floor is not None else "x = 0"
                    message = (
                        f"`log(x + {format_float(eps)})` in float16 code: with an eps below 1/65504 the gradient "
                        f"1/(x + eps) overflows float16 at {at} and turns NaN"
                    )
                    judged.add(log_call)
                    yield ctx.report(self, log_call, message + (_CLAMP_NOTE if fix else ""), fix=fix)
        yield from self._logs_a_consumer_implies(ctx, probabilities, judged)

    def _logs_a_consumer_implies(
        self, ctx: FileContext, probabilities: Probabilities, judged: set[cst.Call]
    ) -> Iterator[Finding]:
        """``nll_loss(torch.log(x), y)``: whatever ``x`` is, the loss takes log-probabilities, so
        ``x`` is a probability, and an unfloored log of it is this rule's bug."""
        regions = ctx.get(Regions)
        for loss in loss_calls(probabilities, _LOG_PROBABILITY_FUNCTIONS, _LOG_PROBABILITY_MODULES):
            for tensor in probabilities.flow.values(loss.input).of_type(Tensor):
                log_call = tensor.site.node
                if tensor.kind != "log" or tensor.site.ctx is not ctx or log_call in judged:
                    continue
                argument = probabilities.log_argument(log_call)  # type: ignore[arg-type]
                if argument is None or regions.computes_no_gradient(log_call):
                    continue
                if not self._unfloored(probabilities, argument, regions.may_run_in_float16(log_call)):
                    continue
                judged.add(log_call)  # type: ignore[arg-type]
                consumer = ctx.code(loss.call.func) if loss.module is None else f"nn.{loss.module}"
                fix = self._clamp_fix(ctx, probabilities, argument, regions.may_run_in_float16(log_call))
                message = (
                    f"`log` of a value that `{consumer}` takes as log-probabilities, so a probability: with no "
                    "floor, one that underflows to 0 makes it -inf and its gradient NaN"
                )
                yield ctx.report(self, log_call, message + (_CLAMP_NOTE if fix else ""), fix=fix)

    @staticmethod
    def _unfloored(probabilities: Probabilities, argument: cst.BaseExpression, float16: bool) -> bool:
        """No floor the gradient can live with: no clamp, no eps (in code that may run in float16,
        none of 1/65504 or more), not a constant, not floored on the way."""
        core, eps = strip_eps(probabilities, argument)
        if (eps is not None and (eps >= FLOAT16_SAFE_EPS or not float16)) or probabilities.is_floor(core):
            return False
        floor = probabilities.floor_of(core)
        if floor is not None and (floor >= FLOAT16_SAFE_EPS or not float16):
            return False
        if probabilities.carries_no_gradient(core):
            return False
        if probabilities.constant(core) is not None:
            return False
        return not probabilities.flow.values(core).may(lambda v: isinstance(v, Tensor) and v.floored)

    @staticmethod
    def _is_composed(probabilities: Probabilities, argument: cst.BaseExpression) -> bool:
        return probabilities.producer(argument) is not None or sigmoid_under_log(probabilities, argument) is not None

    @staticmethod
    def _small_eps(probabilities: Probabilities, argument: cst.BaseExpression) -> float | None:
        """The eps of ``x + eps`` when it is positive and below FLOAT16_SAFE_EPS, ``x`` not floored."""
        core, eps = strip_eps(probabilities, argument)
        if eps is None or eps >= FLOAT16_SAFE_EPS or probabilities.is_floor(core):
            return None
        if probabilities.carries_no_gradient(core):
            return None  # `attn.detach().sum(2)`: a target, no gradient to overflow
        floor = probabilities.floor_of(core)  # `s = x.clamp(min=1e-4)` earlier: already floored
        return None if floor is not None and floor + eps >= FLOAT16_SAFE_EPS else eps

    def _probability_finding(
        self,
        ctx: FileContext,
        probabilities: Probabilities,
        log_call: cst.Call,
        argument: cst.BaseExpression,
        trace: Trace,
    ) -> Finding:
        kind = "/".join(sorted(trace.kinds)) + " output" + _where(ctx, log_call, trace)
        if trace.eps:
            message = (
                f"eps {format_float(sum(trace.eps))} under `log` of a {kind} is too small: 1/(p + eps) "
                f"overflows float16 (NaN gradients), and the eps flattens the gradient of predictions below it"
            )
        else:
            message = (
                f"`log` of a {kind} with no floor: a probability that underflows to 0 makes it -inf "
                f"and its gradient NaN"
            )
        fix = log_space_fix(ctx, probabilities, log_call, trace)
        if fix is not None:
            return ctx.report(self, log_call, f"{message}; compute it in log space", fix=fix)
        fix = self._clamp_fix(ctx, probabilities, argument, ctx.get(Regions).may_run_in_float16(log_call))
        return ctx.report(self, log_call, message + (_CLAMP_NOTE if fix else ""), fix=fix)

    def _clamp_fix(
        self, ctx: FileContext, probabilities: Probabilities, argument: cst.BaseExpression, float16: bool
    ) -> Fix | None:
        """``log(x.clamp(min=EPS))``; in code that may run in float16, a floor whose reciprocal
        float16 can hold (a smaller one would leave the NaN gradient the fix is for)."""
        core, _ = strip_eps(probabilities, argument)
        value = float(self.options["eps"])
        if float16 and value <= FLOAT16_SAFE_EPS:
            value = FLOAT16_FIX_EPS
        floor = format_float(value)
        clamped = f"{probabilities.receiver_code(core)}.clamp(min={floor})"
        return ctx.fix(
            [ctx.replace(argument, clamped)], "unsafe", f"Clamp the argument at {floor} (no gradient below it)"
        )


def _where(ctx: FileContext, log_call: cst.Call, trace: Trace) -> str:
    """Where the probability comes from, when not from the function of the log call."""
    function = ctx.enclosing(log_call, cst.FunctionDef)
    for producer in trace.producers:
        if not producer.local or ctx.enclosing(producer.call, cst.FunctionDef) is not function:
            return producer.where()
    return ""


def strip_eps(probabilities: Probabilities, expr: cst.BaseExpression) -> tuple[cst.BaseExpression, float | None]:
    """``(x, eps)`` for ``x + eps`` / ``eps + x`` with a positive constant eps, else ``(expr, None)``."""
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Add):
        for value, eps in ((expr.left, expr.right), (expr.right, expr.left)):
            amount = probabilities.positive_constant(eps)
            if amount is not None:
                return value, amount
    return expr, None


def selection_base(probabilities: Probabilities, expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """``p`` for ``p[i]``, ``p.gather(...)``, ``torch.gather(p, ...)`` and shape methods such as
    ``p.squeeze(-1)`` (log commutes with all of them exactly); None otherwise."""
    if isinstance(expr, cst.Subscript):
        return expr.value
    if not isinstance(expr, cst.Call):
        return None
    if probabilities.ctx.qualified_name(expr.func) == "torch.gather":
        argument = positional_argument(expr, 0, "input")
        return argument.value if argument is not None else None
    func = expr.func
    if (
        isinstance(func, cst.Attribute)
        and (func.attr.value == "gather" or func.attr.value in SHAPE_METHODS)
        and probabilities.ctx.qualified_name(func) is None
    ):
        return func.value
    return None


def log_use(probabilities: Probabilities, log_call: cst.Call) -> LogUse | None:
    """The log-space shape of a log call's argument, or None."""
    argument = probabilities.log_argument(log_call)
    if argument is None:
        return None
    core, eps = strip_eps(probabilities, argument)
    base = core
    while (inner := selection_base(probabilities, base)) is not None:
        base = inner
    return LogUse(log_call, core, base, eps)


def log_space_code(probabilities: Probabilities, producer: Producer) -> str | None:
    if not producer.local or producer.input is None:
        return None
    if producer.kind == "softmax":
        return log_softmax_code(probabilities, producer)
    return logsigmoid_code(probabilities, producer.input, negate=False)


def log_space_fix(ctx: FileContext, probabilities: Probabilities, log_call: cst.Call, trace: Trace) -> Fix | None:
    """Rewrite into log space: exact (safe) unless an eps is dropped (unsafe). None when the value
    is not a single softmax/sigmoid used only under logs in the shapes of ``LogUse``."""
    if len(trace.producers) != 1 or trace.selected or len(trace.eps) > 1:
        return None
    use = log_use(probabilities, log_call)
    if use is None or (use.eps is None) != (not trace.eps):
        return None
    producer = trace.producers[0]
    if trace.complement:
        return _rewrite_complement(ctx, probabilities, use, producer)
    if use.base is producer.call:
        return _rewrite_inline(ctx, probabilities, use, producer)
    if isinstance(use.base, cst.Name):
        return _rewrite_binding(ctx, probabilities, use.base, producer)
    return None


def _rewrite_inline(ctx: FileContext, probabilities: Probabilities, use: LogUse, producer: Producer) -> Fix | None:
    """``torch.log(F.softmax(x, 1)[i] + eps)`` -> ``F.log_softmax(x, 1)[i]``."""
    replacement = log_space_code(probabilities, producer)
    if replacement is None:
        return None
    core = use.core.deep_replace(producer.call, cst.parse_expression(replacement))
    code = ctx.code(core.with_changes(lpar=[], rpar=[]))  # type: ignore[union-attr]
    return ctx.fix([ctx.replace(use.log_call, code)], "safe" if use.eps is None else "unsafe", _FIX_MESSAGE)


def _rewrite_complement(ctx: FileContext, probabilities: Probabilities, use: LogUse, producer: Producer) -> Fix | None:
    """``torch.log(1 - torch.sigmoid(x) + eps)`` -> ``F.logsigmoid(-x)``."""
    matched = sigmoid_under_log(probabilities, use.core)
    if matched is None or matched[0].call is not producer.call or not matched[1]:
        return None
    replacement = logsigmoid_code(probabilities, producer.input, negate=True)
    if replacement is None:
        return None
    code = replacement
    return ctx.fix([ctx.replace(use.log_call, code)], "safe" if use.eps is None else "unsafe", _FIX_MESSAGE)


_FIX_MESSAGE = "Compute the probabilities in log space (`log_softmax`/`logsigmoid`) and index that"


def _rewrite_binding(ctx: FileContext, probabilities: Probabilities, name: cst.Name, producer: Producer) -> Fix | None:
    """``p = F.softmax(x, 1)`` used only as ``log(p[...])`` -> ``log_p = F.log_softmax(x, 1)`` and
    ``log_p[...]``."""
    values = ctx.get(Scopes)
    function = values.scope_of(name)
    records = values.records(function).get(name.value, [])
    if len(records) != 1 or records[0].kind != "assign" or records[0].value is not producer.call:
        return None
    statement = records[0].statement
    if not isinstance(statement, cst.Assign) or len(statement.targets) != 1:
        return None
    uses = [_log_use_of(probabilities, load) for load in values.uses(name.value, function)]
    new_name = f"log_{name.value}"
    replacement = log_space_code(probabilities, producer)
    if not uses or any(u is None for u in uses) or replacement is None or _mentions(ctx, function, new_name):
        return None
    edits: list[Edit | None] = [
        ctx.replace(records[0].target, new_name),
        ctx.replace(producer.call, replacement),
    ]
    for use in uses:
        assert use is not None
        core = use.core.deep_replace(use.base, cst.Name(new_name))
        code = ctx.code(core.with_changes(lpar=[], rpar=[]))  # type: ignore[union-attr]
        edits.append(ctx.replace(use.log_call, code))
    dropped_eps = any(u is not None and u.eps is not None for u in uses)
    return ctx.fix(edits, "unsafe" if dropped_eps else "safe", _FIX_MESSAGE)


def _log_use_of(probabilities: Probabilities, load: cst.Name) -> LogUse | None:
    """The log this load of the probability sits under, in a log-space shape; None otherwise."""
    ctx = probabilities.ctx
    node: cst.CSTNode = load
    while True:
        parent = ctx.parent(node)
        grandparent = ctx.parent(parent) if parent is not None else None
        if isinstance(parent, cst.Subscript) and parent.value is node:
            node = parent
        elif isinstance(parent, cst.Attribute) and isinstance(grandparent, cst.Call) and grandparent.func is parent:
            if selection_base(probabilities, grandparent) is not node:
                break
            node = grandparent
        elif isinstance(parent, cst.Arg) and isinstance(grandparent, cst.Call):
            if selection_base(probabilities, grandparent) is not node:
                break
            node = grandparent
        else:
            break
    for candidate in _enclosing_log_calls(ctx, node):
        use = log_use(probabilities, candidate)
        if use is not None and use.base is load:
            return use
    return None


def _enclosing_log_calls(ctx: FileContext, node: cst.CSTNode) -> Iterator[cst.Call]:
    """The calls at most three levels up (``log(x)``, ``log(x + eps)``, ``(x + eps).log()``)."""
    for depth, ancestor in enumerate(ctx.ancestors(node)):
        if depth > 3:
            return
        if isinstance(ancestor, cst.Call):
            yield ancestor


def _mentions(ctx: FileContext, function: cst.FunctionDef, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", ctx.code(function)) is not None
