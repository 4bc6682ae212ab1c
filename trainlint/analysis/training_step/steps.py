"""The training steps of a file: which functions (or the script's top-level loop) run a
backward or an optimizer step, the loop that repeats each, and the skips that bypass it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.training_step.builder import _Builder, _BuildState
from trainlint.analysis.training_step.events import (
    _FINISHING_KINDS,
    CORE_KINDS,
    EventKind,
    SkipGuard,
    StepEvent,
)
from trainlint.analysis.training_step.graph import (
    TrainingStep,
    _Branch,
    _exclusive,
    _Exit,
    _exits,
    _find_loop_body,
    _flatten,
    _Inline,
    _Item,
    _Loop,
)
from trainlint.analysis.training_step.receivers import _Module
from trainlint.analysis.training_step.syntax import _assigned_names, _parameters

if TYPE_CHECKING:
    from trainlint.context import FileContext


# ---------------------------------------------------------------------------------------------
# The analysis.


class TrainingSteps:
    """All training steps of a file: ``ctx.get(TrainingSteps).steps``."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.module = _Module(ctx)
        candidates = self._candidates()
        built = [step for scope in candidates if (step := self._build(scope)) is not None]
        inlined = {helper for step in built for helper in step.helpers}
        kept = [step for step in built if step.function not in inlined]
        # Steps in functions and methods; `function` is always a cst.FunctionDef here.
        self.steps: list[TrainingStep] = [step for step in kept if isinstance(step.function, cst.FunctionDef)]
        # The step of a script's top-level code (`for batch in loader:` at module level, as in
        # nanoGPT's train.py), whose `function` is the cst.Module; None when there is none.
        self.script_step: TrainingStep | None = next((s for s in kept if isinstance(s.function, cst.Module)), None)

    def all_steps(self) -> list[TrainingStep]:
        """The steps of functions and methods, then the script's top-level step if any."""
        return [*self.steps, *([self.script_step] if self.script_step is not None else [])]

    def _candidates(self) -> list[cst.FunctionDef | cst.Module]:
        """Functions (or the module's top-level code) that call ``.backward``/``.step`` themselves."""
        found: dict[cst.FunctionDef | cst.Module, None] = {}
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            name = func.attr.value if isinstance(func, cst.Attribute) else None
            if name in ("backward", "manual_backward", "step") or self.ctx.qualified_name(func) == "torch.autograd.backward":
                function = self.module.function_of(call)
                if function is not None:
                    found.setdefault(function, None)
                elif self.ctx.enclosing(call, cst.ClassDef) is None and self.ctx.enclosing(call, cst.Lambda) is None:
                    found.setdefault(self.ctx.module, None)
        return list(found)

    def _build(self, function: cst.FunctionDef | cst.Module) -> TrainingStep | None:
        state = _BuildState(root=function)  # type: ignore[arg-type]
        builder = _Builder(self.module, state, function)  # type: ignore[arg-type]
        items = builder.block(function.body)
        own = [e for e in _flatten(items) if e.via_helper is None and e.kind in CORE_KINDS]
        if not own:
            return None
        loop = self._step_loop(function, [e for e in _flatten(items) if e.kind in CORE_KINDS])
        scope = _find_loop_body(items, loop) if loop is not None else items
        if scope is None:
            loop, scope = None, items
        self._mark_skips(scope, loop, state)
        self._mark_branch_skips(scope, loop, state)
        return TrainingStep(
            function=function,
            events=list(_flatten(scope)),
            scalers=dict(state.scalers),
            optimizers=dict(state.optimizers),
            loop=loop,  # type: ignore[arg-type]
            uncertain_scalers=frozenset(state.uncertain - set(state.scalers)),
            helpers=frozenset(state.helpers),
            _items=scope,
            invariant_keys=_invariant_keys(scope, loop if loop is not None else function),
        )

    def _step_loop(self, function: cst.FunctionDef, core: list[StepEvent]) -> cst.For | cst.While | None:
        """The innermost loop of the function around every backward and optimizer step."""
        common: list[cst.CSTNode] | None = None
        for event in core:
            loops = [a for a in self._ancestors_within(event.statement, function) if isinstance(a, (cst.For, cst.While))]
            loops = [loop for loop in loops if not _in_orelse(self.ctx, event.statement, loop)]
            common = loops if common is None else [loop for loop in common if loop in loops]
        return common[0] if common else None  # type: ignore[return-value]

    def _ancestors_within(self, node: cst.CSTNode, function: cst.FunctionDef) -> Iterator[cst.CSTNode]:
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                return
            yield ancestor

    def _mark_skips(self, scope: list[_Item], loop: cst.CSTNode | None, state: _BuildState) -> None:
        """An exit of the step that bypasses a finishing event (step, update, zero_grad) is a SKIP."""
        finishing = [(*state.order[id(e)], e) for e in _flatten(scope) if e.kind in _FINISHING_KINDS]
        scope_exits = {id(x) for x in _exits(scope)}
        for exit_, nesting, order in state.exits:
            if id(exit_) not in scope_exits or exit_.keyword == "raise":
                continue
            if exit_.keyword in ("continue", "break") and exit_.loop is not loop:
                continue
            bypassed = tuple(e for seq, n, e in finishing if seq > order or _exclusive(n, nesting))
            if bypassed:
                exit_.event = StepEvent(
                    kind=EventKind.SKIP,
                    node=exit_.node,
                    statement=exit_.statement,
                    local_statement=exit_.statement,
                    guard=self._guard(exit_.node, state.root, loop),
                    skip_keyword=exit_.keyword,
                    bypassed=bypassed,
                )

    def _mark_branch_skips(self, scope: list[_Item], loop: cst.CSTNode | None, state: _BuildState) -> None:
        """``if not skip: scaler.step(opt); scaler.update()`` with ``skip`` set on a NaN/Inf or
        gradient test (or the test itself in the ``if``): the side that leaves out the step,
        update or clear that the other side runs is a SKIP, as a ``continue`` would be."""
        for branch in _branches(scope):
            statement = branch.own_if
            if statement is None or len(branch.alternatives) != 2:
                continue
            guard = self._guard_of([statement.test], state.root)
            if not (guard.checks_finiteness or guard.reads_grads):
                continue
            for runs, other in ((0, 1), (1, 0)):
                finishing = [e for e in _flatten(branch.alternatives[runs]) if e.kind in _FINISHING_KINDS]
                kept = {(e.kind, e.scaler, e.optimizer) for e in _flatten(branch.alternatives[other])}
                bypassed = tuple(e for e in finishing if (e.kind, e.scaler, e.optimizer) not in kept)
                if not any(e.kind in _SKIPPABLE_KINDS for e in bypassed) or any(isinstance(i, _Exit) for i in branch.alternatives[other]):
                    continue
                skip = StepEvent(
                    kind=EventKind.SKIP,
                    node=statement.test,
                    statement=statement,
                    local_statement=statement,
                    guard=guard,
                    skip_keyword="if",
                    bypassed=bypassed,
                )
                branch.alternatives[other].insert(0, skip)
                break

    def _guard(self, node: cst.CSTNode, function: cst.FunctionDef, loop: cst.CSTNode | None) -> SkipGuard:
        """What the ``if`` tests around a node (inside the step) look at."""
        tests = []
        child: cst.CSTNode = node
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function or ancestor is loop:
                break
            if isinstance(ancestor, cst.If) and child is not ancestor.test:
                tests.append(ancestor.test)
            child = ancestor
        return self._guard_of(tests, function)

    def _guard_of(self, tests: list[cst.BaseExpression], function: cst.FunctionDef) -> SkipGuard:
        return SkipGuard(
            test=tests[0] if tests else None,
            checks_finiteness=any(self.module.checks_finiteness(t, function) for t in tests),
            reads_grads=any(self.module.reads_grads(t, function) for t in tests),
        )


# A branch that leaves out one of these, which the other side runs, skips the step.
_SKIPPABLE_KINDS = frozenset({EventKind.OPT_STEP, EventKind.SCALER_STEP, EventKind.SCALER_UPDATE})


def _in_orelse(ctx: FileContext, node: cst.CSTNode, loop: cst.CSTNode) -> bool:
    orelse = getattr(loop, "orelse", None)
    return orelse is not None and any(a is orelse for a in ctx.ancestors(node))


def _invariant_keys(items: list[_Item], repeated: cst.CSTNode) -> frozenset[str]:
    """The decision keys whose tests read nothing that changes from one iteration to the next:
    nothing the step's loop assigns (its target included), or, for a step without a loop (a
    function called once per batch), nothing but ``self``'s attributes and globals it does not
    assign itself."""
    assigned = _assigned_names(repeated)
    if isinstance(repeated, cst.FunctionDef):
        assigned |= {p.name.value for p in _parameters(repeated)} - {"self", "cls"}
    keys: dict[str, bool] = {}
    for branch in _branches(items):
        varies = any(_overlaps(read, name) for read in branch.reads for name in assigned) or any(
            "@" in read for read in branch.reads
        )
        for key in {key for side in branch.known for key, _ in side}:
            keys[key] = keys.get(key, True) and not varies
    return frozenset(key for key, invariant in keys.items() if invariant)


def _overlaps(read: str, assigned: str) -> bool:
    """Reading ``self.cfg.amp`` sees an assignment to ``self.cfg``, ``self.cfg.amp`` or ``self.cfg.amp.x``."""
    return read == assigned or read.startswith(assigned + ".") or assigned.startswith(read + ".")


def _branches(items: list[_Item]) -> Iterator[_Branch]:
    for item in items:
        if isinstance(item, _Branch):
            yield item
            for alternative in item.alternatives:
                yield from _branches(alternative)
        elif isinstance(item, (_Loop, _Inline)):
            yield from _branches(item.body)
