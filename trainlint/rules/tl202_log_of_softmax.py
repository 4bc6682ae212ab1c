"""TL202: ``log(softmax(x))`` composed, instead of ``log_softmax(x)``."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.probabilities import Probabilities, Producer, positional_argument
from trainlint.analysis.regions import Regions
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class LogOfSoftmax(Rule):
    """## What it does
    Finds `torch.log(F.softmax(x, dim))`, `F.softmax(x, dim).log()`, `x.softmax(dim).log()` and
    `torch.log(self.softmax(x))` with an `nn.Softmax` module: a log taken of a softmax directly.
    Code that computes no gradient (`@torch.no_grad()`, `torch.inference_mode()`, detached
    inputs: beam search, evaluation) is left alone: there a -inf is a score ranked last, not a
    NaN gradient.

    ## Why is this bad?
    Softmax rounds every probability below float32's smallest subnormal (1.4e-45) to exactly 0,
    and `log(0)` is -inf. Measured on CPU: for two logits with a gap of 104 the log is -inf, and
    from a gap of ~89 the gradient is already NaN, because d/dp log(p) = 1/p overflows float32's
    3.4e38. In float16 the same happens at a gap of ~11. One NaN gradient poisons the weights.
    `log_softmax` computes `x - logsumexp(x)` in log space: the same values where the composed
    form is finite, and finite values and gradients everywhere else.

    The fix keeps the call's spelling (`torch.`, `F.`, the tensor method) and its arguments, `dim`
    included. A softmax without `dim` keeps it that way: `F.log_softmax` picks the same implicit
    dimension as `F.softmax`. It is safe: the result is the same function, computed stably.

    ## Fix safety
    Safe: `log_softmax` with the softmax's own arguments (`dim`, `dtype`) equals `log(softmax(x))`;
    the two differ only where the softmax underflowed to 0 (-inf and NaN gradients before, finite
    values after) and by rounding.
    """

    code = "TL202"
    name = "log-of-softmax"
    summary = "`log(softmax(x))` instead of `log_softmax(x)`"
    level = "error"
    fix_applicability = "safe"
    triggers = ("softmax", "Softmax")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn.functional as F

            def nll(logits, target):
                log_probs = torch.log(F.softmax(logits, dim=-1))
                return F.nll_loss(log_probs, target)
            ''',
            expect=[(5, 17)],
            fixed='''
            import torch
            import torch.nn.functional as F

            def nll(logits, target):
                log_probs = F.log_softmax(logits, dim=-1)
                return F.nll_loss(log_probs, target)
            ''',
        ),
        Example(
            code='''
            import torch

            def entropy(scores):
                p = scores.softmax(-1)
                return -(p * scores.softmax(-1).log()).sum(-1)
            ''',
            expect=[(5, 18)],
            fixed='''
            import torch

            def entropy(scores):
                p = scores.softmax(-1)
                return -(p * scores.log_softmax(-1)).sum(-1)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch.nn.functional as F

        def nll(logits, target):
            return F.nll_loss(F.log_softmax(logits, dim=-1), target)
        ''',
        '''
        import numpy as np
        from scipy.special import softmax

        def log_probs(x):
            return np.log(softmax(x, axis=-1))
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        regions = ctx.get(Regions)
        for log_call, argument in probabilities.log_calls():
            producer = probabilities.producer(argument)
            if producer is None or producer.kind != "softmax" or regions.computes_no_gradient(log_call):
                continue  # without a gradient, a -inf is a score decoding ranks last, not a NaN gradient
            yield ctx.report(
                self,
                log_call,
                "`log` of a `softmax` output is -inf once a probability underflows to 0 (from a logit gap "
                "of ~104 in float32, with NaN gradients from ~89); `log_softmax` computes it stably",
                fix=self._fix(ctx, probabilities, log_call, producer),
            )

    @staticmethod
    def _fix(ctx: FileContext, probabilities: Probabilities, log_call: cst.Call, producer: Producer) -> Fix | None:
        replacement = log_softmax_code(probabilities, producer)
        if replacement is None:
            return None
        code = replacement
        return ctx.fix([ctx.replace(log_call, code)], "safe", "Use `log_softmax`")


def log_softmax_code(probabilities: Probabilities, producer: Producer) -> str | None:
    """``log_softmax`` spelled as the softmax was, with the same arguments; None if it cannot be
    spelled without a new import."""
    call = producer.call
    if not producer.local or producer.input is None:
        return None  # the softmax is elsewhere (another function, the end of a model)
    if producer.style == "module":
        return _module_log_softmax(probabilities, producer)
    callee = probabilities.renamed_callee(call.func, "log_softmax")
    if callee is None:
        return None
    bare = call.with_changes(lpar=[], rpar=[])
    return callee + probabilities.ctx.code(bare)[len(probabilities.ctx.code(bare.func)) :]


def _module_log_softmax(probabilities: Probabilities, producer: Producer) -> str | None:
    """``F.log_softmax(x, dim=d)`` for ``nn.Softmax(dim=d)(x)``."""
    function = probabilities.functional("log_softmax")
    constructor = producer.constructor
    if function is None or constructor is None:
        return None
    dim = positional_argument(constructor, 0, "dim")
    if len(constructor.args) > (1 if dim is not None else 0):
        return None
    assert producer.input is not None
    arguments = probabilities.code_without_parens(producer.input)
    if dim is not None:
        arguments += f", dim={probabilities.code_without_parens(dim.value)}"
    return f"{function}({arguments})"
