"""TL206: ``binary_cross_entropy_with_logits`` / ``nn.BCEWithLogitsLoss`` fed a ``sigmoid`` output."""

from __future__ import annotations

from collections.abc import Iterator

from trainlint.analysis.probabilities import Probabilities, Producer, Trace
from trainlint.analysis.regions import Regions
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule
from trainlint.rules.tl204_bce_on_sigmoid import LossCall, loss_calls, producer_place, producer_trace, replace_producer

_WITH_LOGITS = frozenset({"torch.nn.functional.binary_cross_entropy_with_logits"})
_WITH_LOGITS_MODULES = frozenset({"torch.nn.BCEWithLogitsLoss", "torch.nn.modules.loss.BCEWithLogitsLoss"})


class SigmoidAppliedTwice(Rule):
    """## What it does
    Finds `F.binary_cross_entropy_with_logits` and `nn.BCEWithLogitsLoss` whose input is a
    `sigmoid` output (directly, or through a name, indexing or a reshape in the function).

    The sigmoid may be anywhere the value comes from: through names, in another function whose
    result is passed in, at the end of a model's `forward` or as the last layer of its
    `nn.Sequential`, in another module of the project; the loss may be built elsewhere too
    (`self.criterion = nn.BCEWithLogitsLoss()`, a criterion passed to a trainer). It is reported
    only when every value that may reach the loss is a sigmoid output; the message names where
    the sigmoid is when it is not in the loss's own function, and the fix is offered only when it
    is. A loss computed under `torch.no_grad()` (an evaluation) is not reported.

    It does not apply to `binary_cross_entropy`/`nn.BCELoss` of a sigmoid (that is TL204, a
    correct loss computed unstably), to softmax outputs given to `cross_entropy` (TL205), nor to
    `log_softmax` outputs given to `cross_entropy` (log_softmax is idempotent: harmless).

    ## Why is this bad?
    The with-logits loss applies its own sigmoid, so the model's prediction becomes
    `sigmoid(sigmoid(x))`, which can only take values between 0.5 and 0.731. The loss can never
    fall below 0.313 on a positive example nor below 0.693 on a negative one, however right the
    model is, and its gradient is multiplied by the first sigmoid's slope, which vanishes as the
    model grows confident: a confidently wrong prediction (logit -10) gets a gradient of 1.2e-5
    instead of about 1. Training still lowers the loss a little, so the bug hides; thresholding the
    model's sigmoid at 0.5 may even work, but probabilities, calibration and the examples the model
    gets most wrong are all off.

    The fix is offered when the sigmoid feeds only the loss: it passes the logits (drops the
    sigmoid), deleting a `probs = torch.sigmoid(logits)` line that nothing else reads.

    ## Evidence
    Measured with torch 2.13 on CPU (`benchmarks/loop_rules_evidence.py`): on a linearly
    separable two-class problem (2,000 points, 20 features, SGD lr 0.5, 300 full-batch steps) the
    loss with the double sigmoid ends at 0.521 where the fixed loss reaches 0.024; with logits
    -10 on a positive example the gradient is 1.2e-5 double-sigmoided and -1.0 with the logits.

    ## Fix safety
    Unsafe: the fixed loss is the one the call is named for, but a different function of the
    logits from the one the code computed, on every batch and not only on broken ones (as for
    TL205): a model trained after the fix differs from one trained before, and tuned learning rates
    or decision thresholds do not carry over.
    """

    code = "TL206"
    name = "sigmoid-applied-twice"
    summary = "`BCEWithLogitsLoss`/`binary_cross_entropy_with_logits` fed a sigmoid output"
    level = "error"
    fix_applicability = "unsafe"
    # A loss built in another module reaches a file that only calls it (`criterion(D(x), y)`).
    triggers = ("with_logits", "WithLogits", "loss", "criterion")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn as nn

            class Tagger(nn.Module):
                def __init__(self, features, tags):
                    super().__init__()
                    self.head = nn.Linear(features, tags)
                    self.criterion = nn.BCEWithLogitsLoss()

                def loss(self, features, labels):
                    logits = self.head(features)
                    probs = torch.sigmoid(logits)
                    return self.criterion(probs, labels)
            ''',
            expect=[(13, 16)],
            unsafe=True,
            fixed='''
            import torch
            import torch.nn as nn

            class Tagger(nn.Module):
                def __init__(self, features, tags):
                    super().__init__()
                    self.head = nn.Linear(features, tags)
                    self.criterion = nn.BCEWithLogitsLoss()

                def loss(self, features, labels):
                    logits = self.head(features)
                    return self.criterion(logits, labels)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch
        import torch.nn.functional as F

        def loss(logits, labels):
            probs = torch.sigmoid(logits)
            return F.binary_cross_entropy_with_logits(logits, labels), probs > 0.5
        ''',
        '''
        import torch
        import torch.nn.functional as F

        @torch.no_grad()
        def validation_loss(model, x, y):
            return F.binary_cross_entropy_with_logits(torch.sigmoid(model(x)), y)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        probabilities = ctx.get(Probabilities)
        regions = ctx.get(Regions)
        for loss in loss_calls(probabilities, _WITH_LOGITS, _WITH_LOGITS_MODULES):
            trace = producer_trace(probabilities, loss.input, "sigmoid")
            if trace is None or trace.detached or regions.computes_no_gradient(loss.call):
                continue  # not this bug, or no gradient to distort (an evaluation)
            what = f"`nn.{loss.module}`" if loss.module is not None else "`binary_cross_entropy_with_logits`"
            yield ctx.report(
                self,
                loss.call,
                f"{what} applies a sigmoid itself, so this `sigmoid`{producer_place(ctx, loss, trace)} is applied "
                "twice: predictions stay between 0.5 and 0.73, the loss cannot fall below 0.31 (0.69 for negatives) "
                "and its gradient vanishes for confident predictions; pass the logits",
                fix=self._fix(ctx, probabilities, loss, trace),
            )

    @staticmethod
    def _fix(ctx: FileContext, probabilities: Probabilities, loss: LossCall, trace: Trace) -> Fix | None:
        def logits(producer: Producer) -> str | None:
            return probabilities.code_without_parens(producer.input) if producer.input is not None else None

        edits = replace_producer(ctx, probabilities, loss.input, trace, logits)
        return ctx.fix(edits, "unsafe", "Pass the logits (drop the sigmoid)") if edits is not None else None
