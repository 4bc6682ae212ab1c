"""TL205: ``cross_entropy``/``nll_loss`` (or their modules) fed with a ``softmax`` output."""

from __future__ import annotations

from collections.abc import Iterator

from trainlint.analysis.regions import Regions
from trainlint.analysis.probabilities import Probabilities, Producer, Trace
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule
from trainlint.rules.tl202_log_of_softmax import log_softmax_code
from trainlint.rules.tl204_bce_on_sigmoid import LossCall, loss_calls, producer_place, producer_trace, replace_producer

_CROSS_ENTROPY = frozenset({"torch.nn.functional.cross_entropy"})
_CROSS_ENTROPY_MODULES = frozenset({"torch.nn.CrossEntropyLoss", "torch.nn.modules.loss.CrossEntropyLoss"})
_NLL = frozenset({"torch.nn.functional.nll_loss"})
_NLL_MODULES = frozenset({"torch.nn.NLLLoss", "torch.nn.modules.loss.NLLLoss"})

_CE_MESSAGE = (
    "{what} applies log_softmax itself, so this softmax{where} is applied twice: the loss cannot fall below "
    "log(1 + (C-1)/e) (1.46 for 10 classes) and the gradient vanishes for confident mistakes; pass the logits"
)
_NLL_MESSAGE = (
    "{what} expects log-probabilities but gets `softmax` probabilities{where}: the loss -p[target] stays in "
    "[-1, 0] and its gradient does not grow with the error; use `log_softmax`"
)


class LossOnSoftmax(Rule):
    """## What it does
    Finds `F.cross_entropy` / `nn.CrossEntropyLoss` and `F.nll_loss` / `nn.NLLLoss` whose input
    is a `softmax` output (directly, or through a name, indexing or a reshape in the function).

    The softmax may be anywhere the value comes from: through names, in another function, at the
    end of a model's `forward` or as the last layer of its `nn.Sequential`, in another module of
    the project; the loss may be built elsewhere too. It is reported only when every value that
    may reach the loss is a softmax output; the message names where the softmax is when it is not
    in the loss's own function, and the fix is offered only when it is.

    ## Why is this bad?
    `cross_entropy` computes `log_softmax` of its input. Given probabilities, it applies a
    second softmax to values in [0, 1], whose outputs stay close to uniform: the largest
    probability it can reach is e/(e + C - 1), so the loss never falls below log(1 + (C-1)/e),
    1.46 for 10 classes and 5.91 for 1000 (measured). Its gradient passes through the first
    softmax and vanishes where that one saturates: 8e-10 instead of 1 for a confidently wrong
    prediction (measured, 10 classes). `nll_loss` expects log-probabilities; given probabilities
    it minimizes -p[target], a loss in [-1, 0] whose gradient does not grow with the error.

    The fix is offered when the softmax feeds only the loss: it drops the softmax for
    `cross_entropy` and turns it into `log_softmax` (same `dim`) for `nll_loss`, deleting a
    `probs = F.softmax(logits, 1)` line that nothing else reads. Either way the loss becomes
    the one the call is named for.

    ## Fix safety
    Unsafe: the fixed loss is the one the call is named for, but a different function of the
    logits from the one the code computed, on every batch and not only on broken ones: a model
    trained after the fix differs from one trained before, and tuned learning rates do not carry
    over. `nll_loss` of probabilities (-p[target], a bounded loss) is also sometimes chosen on
    purpose for noisy labels.
    """

    code = "TL205"
    name = "loss-on-softmax"
    summary = "`cross_entropy`/`nll_loss` fed with softmax probabilities"
    level = "error"
    fix_applicability = "unsafe"
    # A loss built in another module reaches a file that only calls it (`criterion(model(x), y)`).
    triggers = ("cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "loss", "criterion")
    examples = [
        Example(
            code='''
            import torch.nn as nn
            import torch.nn.functional as F

            class Classifier(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.head = nn.Linear(512, 10)
                    self.criterion = nn.CrossEntropyLoss()

                def loss(self, features, labels):
                    return self.criterion(F.softmax(self.head(features), dim=1), labels)
            ''',
            expect=[(11, 16)],
            unsafe=True,
            fixed='''
            import torch.nn as nn
            import torch.nn.functional as F

            class Classifier(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.head = nn.Linear(512, 10)
                    self.criterion = nn.CrossEntropyLoss()

                def loss(self, features, labels):
                    return self.criterion(self.head(features), labels)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch.nn.functional as F

        def loss(logits, labels):
            probs = F.softmax(logits, dim=1)
            return F.cross_entropy(logits, labels), probs.argmax(1)
        ''',
        '''
        import torch.nn.functional as F

        def loss(logits, labels):
            return F.nll_loss(F.log_softmax(logits, dim=1), labels)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        kinds = ((False, _CROSS_ENTROPY, _CROSS_ENTROPY_MODULES), (True, _NLL, _NLL_MODULES))
        for negative_log_likelihood, functions, modules in kinds:
            for loss in loss_calls(probabilities, functions, modules):
                trace = producer_trace(probabilities, loss.input, "softmax")
                if trace is None or ctx.get(Regions).computes_no_gradient(loss.call):
                    continue  # not this bug, or no gradient to distort (an evaluation)
                template = _NLL_MESSAGE if negative_log_likelihood else _CE_MESSAGE
                yield ctx.report(
                    self,
                    loss.call,
                    template.format(what=_describe(ctx, loss), where=producer_place(ctx, loss, trace)),
                    fix=self._fix(ctx, probabilities, loss, trace, negative_log_likelihood),
                )

    @staticmethod
    def _fix(
        ctx: FileContext, probabilities: Probabilities, loss: LossCall, trace: Trace, negative_log_likelihood: bool
    ) -> Fix | None:
        def replacement(producer: Producer) -> str | None:
            if negative_log_likelihood:
                return log_softmax_code(probabilities, producer)
            return probabilities.code_without_parens(producer.input) if producer.input is not None else None

        edits = replace_producer(ctx, probabilities, loss.input, trace, replacement)
        if edits is None:
            return None
        message = "Use `log_softmax`" if negative_log_likelihood else "Pass the logits (drop the softmax)"
        return ctx.fix(edits, "unsafe", message)


def _describe(ctx: FileContext, loss: LossCall) -> str:
    if loss.module is not None:
        return f"`nn.{loss.module}`"
    return f"`{(ctx.qualified_name(loss.call.func) or '').rpartition('.')[2]}`"
