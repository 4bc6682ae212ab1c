"""TL104: `opt.step()` called directly on gradients that a GradScaler scaled."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import libcst as cst

from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
)
from trainlint.context import FileContext
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

# -- facts about a step's events shared by TL104-TL107 (candidates for the training-step analysis)

STEP_KINDS = frozenset({EventKind.OPT_STEP, EventKind.SCALER_STEP})


def clears_gradients_of(event: StepEvent, optimizer: str | None) -> bool:
    """True for a zero_grad that clears this optimizer's gradients. One of unknown reach
    (`model.zero_grad()`, `p.grad = None`) counts too: the rules then stay quiet."""
    return event.kind is EventKind.ZERO_GRAD and (event.optimizer is None or event.optimizer == optimizer)


def backwards_feeding(path: Sequence[StepEvent]) -> dict[StepEvent, list[StepEvent]]:
    """For each optimizer step on the path, the backwards whose gradients it applies.

    Steps that follow each other share the backwards before them (`scaler.step(opt_d)`,
    `scaler.step(opt_g)` after two backwards); a backward that an earlier group of steps already
    applied does not feed a later one; a zero_grad of the optimizer drops the backwards before it.
    """
    feeding: dict[StepEvent, list[StepEvent]] = {}
    pending: list[int] = []  # backwards since the last group of steps, by index on the path
    group: list[int] = []  # backwards feeding the current group of steps
    in_group = False
    for index, event in enumerate(path):
        if event.kind in BACKWARD_KINDS:
            pending.append(index)
            in_group = False
        elif event.kind in STEP_KINDS:
            if not in_group:
                group, pending, in_group = pending, [], True
            feeding[event] = [
                path[b]
                for b in group
                if not any(clears_gradients_of(e, event.optimizer) for e in path[b + 1 : index])
            ]
    return feeding


class FeasiblePaths:
    """Each step's paths, less those that take opposite sides of two `if`s with the same test.

    `if self.use_amp: scaled backward ... if self.use_amp: scaler.step else: opt.step()` is two
    independent branches to the path walk, but the path through the scaled backward and the
    plain `opt.step()` never runs. Tests that call something may change value between the two
    `if`s and are not matched. (A workaround until `TrainingStep.paths()` drops such paths.)
    """

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self._paths: dict[int, list[list[StepEvent]]] = {}
        self._decisions: dict[int, dict[str, bool]] = {}

    def of(self, step: TrainingStep) -> list[list[StepEvent]]:
        found = self._paths.get(id(step))
        if found is None:
            found = self._paths[id(step)] = [p for p in step.paths() if self._consistent(step, p)]
        return found

    def _consistent(self, step: TrainingStep, path: Sequence[StepEvent]) -> bool:
        taken: dict[str, bool] = {}
        for event in path:
            for test, side in self._decisions_of(step, event).items():
                if taken.setdefault(test, side) != side:
                    return False
        return True

    def _decisions_of(self, step: TrainingStep, event: StepEvent) -> dict[str, bool]:
        """The side each enclosing `if` of the event (in the step's function) takes, by test."""
        found = self._decisions.get(id(event))
        if found is None:
            found = self._decisions[id(event)] = {}
            child: cst.CSTNode = event.anchor
            for ancestor in self.ctx.ancestors(child):
                if ancestor is step.function:
                    break
                if isinstance(ancestor, cst.If) and child is not ancestor.test:
                    condition = self._condition(ancestor.test)
                    if condition is not None:
                        found.setdefault(condition[0], condition[1] == (child is ancestor.body))
                child = ancestor
        return found

    def _condition(self, test: cst.BaseExpression) -> tuple[str, bool] | None:
        """A canonical text for the test and its polarity (`x is not None` -> (`x is None`, False));
        None for a test that calls anything."""
        if isinstance(test, (cst.Call, cst.Await, cst.NamedExpr)) or any(
            isinstance(node, (cst.Call, cst.Await, cst.NamedExpr)) for node in _subtree(test)
        ):
            return None
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            inner = self._condition(test.expression)
            return None if inner is None else (inner[0], not inner[1])
        if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            target = test.comparisons[0]
            flipped = {cst.IsNot: "is", cst.NotEqual: "==", cst.NotIn: "in"}.get(type(target.operator))
            if flipped is not None:
                return f"{self.ctx.code(test.left)} {flipped} {self.ctx.code(target.comparator)}", False
        return " ".join(self.ctx.code(test).split()), True


def _subtree(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    stack = list(node.children)
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)


def in_helper(event: StepEvent) -> str:
    """` (in `_optimizer_step()`)` for an event found in a helper, else nothing."""
    return f" (in `{event.via_helper.name.value}()`)" if event.via_helper is not None else ""


def paths_through(paths: Sequence[Sequence[StepEvent]], event: StepEvent) -> list[Sequence[StepEvent]]:
    return [path for path in paths if any(e is event for e in path)]


def events_after(path: Sequence[StepEvent], event: StepEvent) -> Sequence[StepEvent]:
    for index, candidate in enumerate(path):
        if candidate is event:
            return path[index + 1 :]
    return ()


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
        for step in ctx.get(TrainingSteps).steps:
            yield from self._check_step(ctx, step)

    def _check_step(self, ctx: FileContext, step: TrainingStep) -> Iterator[Finding]:
        paths = ctx.get(FeasiblePaths).of(step)
        if step.truncated:
            return  # too many paths to be sure of any
        verdicts = self._verdicts(step, paths)
        flagged = {
            event: next(iter(v.scalers))
            for event, v in verdicts.items()
            if len(v.scalers) == 1 and not v.unknown_feed
        }
        for event in sorted(flagged, key=step.index):
            scaler = flagged[event]
            message = (
                f"`{event.optimizer}.step()`{in_helper(event)} applies gradients that `{scaler}.scale(...)` "
                f"multiplied by the loss scale (65536 at the start), so the update is that many times too "
                f"large and overflowed steps are not skipped; step through `{scaler}.step({event.optimizer})`"
            )
            fix = None
            if not verdicts[event].unscaled_feed:
                fix = self._fix(ctx, event, scaler, self._needs_update(event, scaler, paths, flagged))
            yield ctx.report(self, event.anchor, message, fix)

    @staticmethod
    def _verdicts(step: TrainingStep, paths: list[list[StepEvent]]) -> dict[StepEvent, _Verdict]:
        verdicts: dict[StepEvent, _Verdict] = {}
        for path in paths:
            for event, backwards in backwards_feeding(path).items():
                if event.kind is not EventKind.OPT_STEP or event.optimizer not in step.optimizers or not backwards:
                    continue
                verdict = verdicts.setdefault(event, _Verdict())
                if any(b.kind is EventKind.BACKWARD for b in backwards):
                    verdict.unscaled_feed = True
                    continue
                scalers = {b.scaler for b in backwards}
                known = [s for s in scalers if s is not None and s in step.scalers]
                if len(scalers) != 1 or len(known) != 1:
                    verdict.unknown_feed = True
                    continue
                if _unscaled_before(path, backwards[-1], event):
                    continue  # `unscale_` ran: the gradients are the true ones on this path
                verdict.scalers.add(known[0])
        return verdicts

    @staticmethod
    def _needs_update(
        event: StepEvent, scaler: str, paths: list[list[StepEvent]], flagged: dict[StepEvent, str]
    ) -> bool:
        """Add `scaler.update()` after this call only when no path through it updates the scaler
        later, and this is the last step of that scaler on every such path."""
        for path in paths_through(paths, event):
            for later in events_after(path, event):
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


def _unscaled_before(path: Sequence[StepEvent], last_backward: StepEvent, step_event: StepEvent) -> bool:
    """True when `scaler.unscale_` of the stepped optimizer (or of an unknown one) runs between
    the last backward and the step."""
    started = False
    for event in path:
        if event is last_backward:
            started = True
        elif event is step_event:
            return False
        elif started and event.kind is EventKind.UNSCALE and event.optimizer in (None, step_event.optimizer):
            return True
    return False
