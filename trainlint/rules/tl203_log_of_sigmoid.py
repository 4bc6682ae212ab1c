"""TL203: ``log(sigmoid(x))`` and ``log(1 - sigmoid(x))`` composed, instead of ``logsigmoid``."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.probabilities import Probabilities, Producer, numeric_literal
from trainlint.analysis.regions import Regions
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


_MESSAGE = (
    "`log(sigmoid(x))` is -inf with a NaN gradient once sigmoid(x) underflows to 0 (x < ~-104 in "
    "float32, ~-17 in float16); `logsigmoid(x)` computes it stably"
)
_COMPLEMENT_MESSAGE = (
    "`log(1 - sigmoid(x))` is -inf with a NaN gradient once sigmoid(x) rounds to 1 (x > ~17 in "
    "float32, ~8.3 in float16); `logsigmoid(-x)` computes it stably"
)


class LogOfSigmoid(Rule):
    """## What it does
    Finds `torch.log(torch.sigmoid(x))`, `x.sigmoid().log()` and `torch.log(1 - torch.sigmoid(x))`
    (also through `F.sigmoid`, `torch.special.expit` and an `nn.Sigmoid` module): a log taken of
    a sigmoid directly.
    Code that computes no gradient (`@torch.no_grad()`, `torch.inference_mode()`, detached
    inputs) is left alone: the harm is a NaN gradient.

    ## Why is this bad?
    Sigmoid saturates: in float32, `sigmoid(x)` is exactly 1.0 from x ≈ 17 (1 + e^-17 rounds to
    1) and exactly 0 below x ≈ -104 (e^-104 is below the smallest subnormal, 1.4e-45); in float16
    it is 1.0 above x ≈ 8.3 and 0 below x ≈ -17. Then `log(1 - sigmoid(x))` and `log(sigmoid(x))`
    are -inf and their gradient NaN (measured: `log(1 - sigmoid(20))` = -inf with a NaN gradient,
    while `logsigmoid(-20)` = -20 with gradient -1). `F.logsigmoid(x)` computes `-softplus(-x)`,
    exact and finite everywhere, and `log(1 - sigmoid(x))` is `logsigmoid(-x)`.

    The fix writes `F.logsigmoid(x)` / `F.logsigmoid(-x)` with the module's own alias of
    `torch.nn.functional` (or `torch.nn.functional.logsigmoid` through an imported `torch`), so it
    needs no new import; it is safe: the same function, computed stably.

    ## Fix safety
    Safe: `logsigmoid(x)` equals `log(sigmoid(x))` and `logsigmoid(-x)` equals `log(1 - sigmoid(x))`;
    they differ only where the sigmoid rounded to 0 or 1 (-inf, or a flat 0 with no gradient,
    before; the exact value after) and by rounding.
    """

    code = "TL203"
    name = "log-of-sigmoid"
    summary = "`log(sigmoid(x))` or `log(1 - sigmoid(x))` instead of `logsigmoid`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("sigmoid", "Sigmoid", "expit")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn.functional as F

            def bernoulli_log_likelihood(logits, y):
                log_p = torch.log(torch.sigmoid(logits))
                log_not_p = torch.log(1 - torch.sigmoid(logits))
                return (y * log_p + (1 - y) * log_not_p).mean()
            ''',
            expect=[(5, 13), (6, 17)],
            fixed='''
            import torch
            import torch.nn.functional as F

            def bernoulli_log_likelihood(logits, y):
                log_p = F.logsigmoid(logits)
                log_not_p = F.logsigmoid(-logits)
                return (y * log_p + (1 - y) * log_not_p).mean()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch.nn.functional as F

        def log_likelihood(logits):
            return F.logsigmoid(logits), F.logsigmoid(-logits)
        ''',
        '''
        import torch

        def gate(x):
            return torch.log1p(x) * torch.sigmoid(x)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        regions = ctx.get(Regions)
        for log_call, argument in probabilities.log_calls():
            matched = sigmoid_under_log(probabilities, argument)
            if matched is None or regions.computes_no_gradient(log_call):
                continue  # without a gradient there is no NaN gradient to fear
            producer, complement = matched
            yield ctx.report(
                self,
                log_call,
                _COMPLEMENT_MESSAGE if complement else _MESSAGE,
                fix=self._fix(ctx, probabilities, log_call, producer, complement),
            )

    @staticmethod
    def _fix(
        ctx: FileContext, probabilities: Probabilities, log_call: cst.Call, producer: Producer, complement: bool
    ) -> Fix | None:
        if not producer.local or producer.input is None:
            return None
        replacement = logsigmoid_code(probabilities, producer.input, complement)
        if replacement is None:
            return None
        code = replacement
        return ctx.fix([ctx.replace(log_call, code)], "safe", "Use `logsigmoid`")


def sigmoid_under_log(probabilities: Probabilities, argument: cst.BaseExpression) -> tuple[Producer, bool] | None:
    """The sigmoid in ``sigmoid(x)`` or ``1 - sigmoid(x)`` and whether it is the complement."""
    complement = False
    if (
        isinstance(argument, cst.BinaryOperation)
        and isinstance(argument.operator, cst.Subtract)
        and numeric_literal(argument.left) == 1.0
    ):
        argument, complement = argument.right, True
    producer = probabilities.producer(argument)
    if producer is None or producer.kind != "sigmoid":
        return None
    return producer, complement


def logsigmoid_code(probabilities: Probabilities, logits: cst.BaseExpression, negate: bool) -> str | None:
    """``F.logsigmoid(x)`` or ``F.logsigmoid(-x)`` spelled without a new import, or None."""
    function = probabilities.functional("logsigmoid")
    if function is None:
        return None
    inner = probabilities.code_without_parens(logits)
    if negate:
        inner = negated(probabilities, logits)
    return f"{function}({inner})"


def negated(probabilities: Probabilities, expr: cst.BaseExpression) -> str:
    """``-x`` for ``x``, ``y`` for ``-y``, ``-(a + b)`` for ``a + b``."""
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus) and not expr.lpar:
        return probabilities.code_without_parens(expr.expression)
    if isinstance(expr, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) or expr.lpar:
        return f"-{probabilities.ctx.code(expr)}"
    return f"-({probabilities.ctx.code(expr)})"
