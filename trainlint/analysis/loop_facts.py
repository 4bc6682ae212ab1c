"""Facts about training loops across their iterations, for the loop rules (TL404-TL407).

The training-step analysis (:mod:`trainlint.analysis.training_step`) describes one iteration; the
loop rules ask what carries from one iteration to the next, and what runs only on some:

- which loops train, one step per iteration: the loop a :class:`TrainingStep` repeats, and a loop
  that calls a function of the project that runs a training step (``loss = self._train_batch(x)``,
  ``train_one_epoch(model, loader)``); which functions run once per training iteration (a step
  without a loop of its own, a method a training loop calls: ``meter.update(loss)``);
- what a loop accumulates in storage that outlives an iteration (``total += loss``,
  ``losses.append(loss)``, ``avg = 0.9 * avg + 0.1 * loss``, ``self.sum += val`` in a method
  called every iteration), with the value accumulated;
- gradient accumulation: a backward every iteration and an optimizer step only when a counter
  passes a multiple (``if (i + 1) % accum == 0:``), or a loop of backwards over micro-batches
  followed by one step; and whether the loss was divided on its way to the backward.

API (``facts = ctx.get(LoopFacts)``): ``training_loops()``, ``runs_per_iteration(function)``,
``accumulations()``, ``accumulation_steps()``, and the module function ``callees(ctx, call)``
(the project functions a call may run, for any analysis that follows calls).

Written for issue 17 on the public step API; meant to move into the step package (issue 13).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step import BACKWARD_KINDS, STEP_KINDS, EventKind, StepEvent, TrainingStep, TrainingSteps
from trainlint.analysis.values import FunctionRef, Instance, ValueFlow
from trainlint.context import calls_within, scope_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext

Loop = cst.For | cst.While
# Words without which a function cannot run a training step (its backward or optimizer step).
TRAINING_WORDS = (b"backward(", b".step(")
AccumulationKind = Literal["augmented", "assigned", "appended"]
_APPENDING = frozenset({"append", "extend", "add", "insert", "appendleft"})
_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)


def callees(ctx: FileContext, call: cst.Call, words: tuple[bytes, ...] | None) -> list[tuple[FileContext, cst.FunctionDef]]:
    """The functions and methods of the project that ``call`` may run (``validate(model)``,
    ``self.helper()``, ``model.train_emb(x)`` for a model of a project class), when a function of
    that name spells one of ``words`` (or calls one that does: see
    ``ProjectIndex.functions_reaching``; None: any function); none for library calls and calls
    the engine cannot follow."""
    flow = ctx.get(ValueFlow)
    func = call.func
    name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else None
    if name is None or (words is not None and name not in ctx.project.functions_reaching(words)):
        return []  # no function of the project by that name does what the caller looks for
    qualified = ctx.qualified_name(func)
    if qualified is not None and flow.definition(qualified) is None:
        return []  # a library function
    found: list[tuple[FileContext, cst.FunctionDef]] = []
    if isinstance(func, cst.Attribute):
        for value in flow.values(func.value).of_type(Instance):
            method = flow.method_of(value.cls, func.attr.value)
            if method is not None:
                found.append((method[0].ctx, method[1]))
    if not found:
        for value in flow.values(func).of_type(FunctionRef):
            if value.site is not None and isinstance(value.site.node, cst.FunctionDef):
                found.append((value.site.ctx, value.site.node))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class TrainingLoop:
    """A loop that runs one training step per iteration: ``step`` is set when the step is this
    loop's own, ``runs`` holds the calls of training functions otherwise."""

    node: Loop
    scope: cst.FunctionDef | cst.Module
    step: TrainingStep | None = None
    runs: tuple[cst.Call, ...] = ()


@dataclass(frozen=True)
class Accumulation:
    """A statement that adds ``value`` to ``target``, storage that outlives one iteration."""

    statement: cst.CSTNode  # the AugAssign, Assign or the append call
    target: cst.BaseExpression  # ``total``, ``self.losses``, ``meter.sum``
    value: cst.BaseExpression  # what is added: ``loss``, ``loss * n``
    kind: AccumulationKind
    loop: TrainingLoop | None  # None: in a function that runs once per training iteration


@dataclass(frozen=True)
class AccumulationStep:
    """Gradient accumulation: ``backwards`` run every iteration of ``loop``, ``steps`` only on
    some (``every`` is the count they wait for, as written, when it is a modulo test)."""

    step: TrainingStep
    loop: Loop
    backwards: tuple[StepEvent, ...]
    steps: tuple[StepEvent, ...]
    every: cst.BaseExpression  # ``accum`` in ``if (i + 1) % accum == 0``


@dataclass(frozen=True)
class MicroBatches:
    """A loop over the parts of one batch whose every iteration runs ``backwards`` (or the
    ``helpers`` that run them) and no optimizer step: gradients add up over the parts."""

    loop: cst.For
    backwards: tuple[StepEvent, ...]
    helpers: tuple[cst.Call, ...]


class LoopFacts:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self.steps = ctx.get(TrainingSteps)
        self._loops: list[TrainingLoop] | None = None
        self._per_iteration: dict[cst.FunctionDef, bool] = {}

    # -- training loops ------------------------------------------------------------------------
    def training_loops(self) -> list[TrainingLoop]:
        if self._loops is None:
            self._loops = self._find_training_loops()
        return self._loops

    def _find_training_loops(self) -> list[TrainingLoop]:
        found: dict[cst.CSTNode, TrainingLoop] = {}
        for step in self.steps.all_steps():
            if step.loop is not None:
                found[step.loop] = TrainingLoop(step.loop, step.function, step=step)
        for loop in (*self.ctx.nodes.of(cst.For), *self.ctx.nodes.of(cst.While)):
            if loop in found:
                continue
            calls = tuple(sorted((c for c in calls_within(loop.body) if self._runs_a_step(c)), key=lambda c: self.ctx.order(c)[0]))
            if calls:
                found[loop] = TrainingLoop(loop, self.flow.scopes.scope_of(loop), runs=calls)
        return list(found.values())

    def _runs_a_step(self, call: cst.Call, depth: int = 2) -> bool:
        """The call runs a training step (a function holding a backward or its optimizer step),
        itself or in a function it calls (``train_k_steps`` calling ``train_step``)."""
        for ctx, function in callees(self.ctx, call, TRAINING_WORDS):
            if any(step.function is function for step in ctx.get(TrainingSteps).all_steps()):
                return True
            if depth > 0 and any(ctx.get(LoopFacts)._runs_a_step(inner, depth - 1) for inner in calls_within(function.body)):
                return True
        return False

    def loop_of(self, node: cst.CSTNode) -> TrainingLoop | None:
        """The innermost training loop whose body holds the node (in the same function)."""
        loops = {loop.node: loop for loop in self.training_loops()}
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, _SCOPES):
                return None
            if ancestor in loops and _in_body(ancestor, node, self.ctx):
                return loops[ancestor]
        return None

    def runs_per_iteration(self, function: cst.FunctionDef) -> bool:
        """The function runs once per training iteration: it is a training step without a loop of
        its own (Lightning's ``training_step``, ``train_batch``), or some call of it in the
        project is inside a training loop (``meter.update(loss)``, ``self.log_losses(loss)``)."""
        found = self._per_iteration.get(function)
        if found is None:
            self._per_iteration[function] = False  # recursion
            found = self._per_iteration[function] = self._once_per_iteration(function)
        return found

    def _once_per_iteration(self, function: cst.FunctionDef) -> bool:
        if function.name.value == "training_step" and self.flow.enclosing_class(function) is not None:
            return True
        if any(step.function is function and step.loop is None for step in self.steps.all_steps()):
            return True
        sites, _ = self.flow.call_sites(function)
        for site in sites:
            facts = site.flow.ctx.get(LoopFacts)
            if facts.loop_of(site.call) is not None:
                return True
        return False

    # -- accumulations ---------------------------------------------------------------------------
    def accumulations(self, adding: Callable[[cst.BaseExpression], bool] | None = None) -> Iterator[Accumulation]:
        """Additions to storage that outlives an iteration, in training loops and in functions
        that run once per training iteration; with ``adding``, only those whose added value it
        accepts (asked first: whether a function runs per iteration asks for its every caller)."""
        for statement, target, value, kind in _additions(self.ctx):
            if adding is not None and not adding(value):
                continue
            if kind == "appended" and self._own_method(statement):
                continue  # `meter.add(loss)` of a project class: what it keeps is its body's business
            loop = self.loop_of(statement)
            if loop is not None:
                if self._outlives_iteration(target, statement, loop):
                    yield Accumulation(statement, target, value, kind, loop)
                continue
            function = self.flow.scopes.function_of(statement)
            if function is not None and _instance_state(target) and self.runs_per_iteration(function):
                yield Accumulation(statement, target, value, kind, None)

    def _own_method(self, call: cst.CSTNode) -> bool:
        """``x.add(v)`` where ``x`` may be an object of a project class that defines ``add``: not
        a container's append (an ``Averager.add`` may keep ``v.data.sum()``, a number)."""
        func = call.func if isinstance(call, cst.Call) else None
        if not isinstance(func, cst.Attribute):
            return False
        return any(
            self.flow.method_of(value.cls, func.attr.value) is not None
            for value in self.flow.values(func.value).of_type(Instance)
        )

    def _outlives_iteration(self, target: cst.BaseExpression, statement: cst.CSTNode, loop: TrainingLoop) -> bool:
        """The storage was made before the iteration: the name whose value the statement adds to
        may come from before the loop or from the previous iteration (not rebound earlier in the
        same iteration on every path: ``loss = f(x)`` then ``loss = loss + prior``), ``self``'s
        state, an object made outside the loop."""
        base = _base(target)
        if base is None:
            return False
        if base.value in ("self", "cls"):
            return True
        read = _read_of_target(statement, base) or base
        return self.flow.scopes.carried_into(read, loop.node.body)

    def backpropagated_storage(self, target: cst.BaseExpression, scope: cst.CSTNode) -> bool:
        """``.backward()`` is called on the accumulator (``total_loss.backward()``,
        ``(total / k).backward()``): accumulating the graph is the point."""
        name = dotted_name(target.value if isinstance(target, cst.Subscript) else target)
        if name is None:
            return True
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in ("backward", "manual_backward"):
                receiver = call.args[0].value if call.args and func.attr.value == "manual_backward" else func.value
                if name in {dotted_name(n) for n in _names_in(receiver)}:
                    return True
            if isinstance(func, cst.Attribute) and func.attr.value in ("scale",) and call.args:
                if name in {dotted_name(n) for n in _names_in(call.args[0].value)}:
                    return True
        return False

    # -- gradient accumulation -------------------------------------------------------------------
    def accumulation_steps(self) -> Iterator[AccumulationStep]:
        """Backwards that add up before one optimizer step: a backward on every iteration of a
        loop whose steps run only when a counter reaches a multiple (``if (i + 1) % accum ==
        0:``). (Backwards over the parts of one batch: ``micro_batch_loops``.)"""
        for step in self.steps.all_steps():
            backwards = tuple(e for e in step.of_kind(*BACKWARD_KINDS) if e.via_helper is None)
            steps = tuple(e for e in step.of_kind(*STEP_KINDS) if e.via_helper is None)
            if backwards and steps and step.loop is not None:
                every = self._modulo_guard(steps, backwards, step.loop)
                if every is not None:
                    yield AccumulationStep(step, step.loop, backwards, steps, every[0])

    def _modulo_guard(
        self, steps: tuple[StepEvent, ...], backwards: tuple[StepEvent, ...], loop: Loop
    ) -> tuple[cst.BaseExpression] | None:
        """``accum`` when every step sits under ``if <...> % accum == 0`` (inside the loop) and no
        backward does."""
        divisors = set()
        found: cst.BaseExpression | None = None
        for event in steps:
            guard = _modulo_test(self.ctx, event.statement, loop)
            if guard is None:
                return None
            divisors.add(self.ctx.code(guard))
            found = guard
        if len(divisors) != 1 or found is None:
            return None
        if not _every_iteration(self.ctx, loop, [event.statement for event in backwards]):
            return None  # a backward that runs only sometimes: not one per iteration
        return (found,)

    def micro_batch_loops(self) -> Iterator[MicroBatches]:
        """Loops over the parts of one batch (``range(0, n, micro)``, ``batch.split(k)``) whose
        every iteration runs a backward, its own or in a function of the project it calls
        (``self.mp_trainer.backward(loss)``), and no optimizer step nor ``zero_grad``: the
        gradients of all the parts add up before whatever step comes after."""
        backwards = {
            id(e.node): e for step in self.steps.all_steps() for e in step.of_kind(*BACKWARD_KINDS)
            if e.kind is not EventKind.FRAMEWORK_BACKWARD
        }
        for loop in self.ctx.nodes.of(cst.For):
            if not self._splits_a_batch(loop.iter) or any(_finishes_a_step(c) for c in calls_within(loop.body)):
                continue
            own = tuple(e for e in backwards.values() if _inside(self.ctx, _statement(e), loop.body))
            helpers = tuple(c for c in calls_within(loop.body) if not own and self._runs_undivided_backward(c))
            statements = [_statement(e) for e in own] + list(helpers)
            if statements and _every_iteration(self.ctx, loop, statements):
                yield MicroBatches(loop, own, helpers)

    def _runs_undivided_backward(self, call: cst.Call) -> bool:
        """The call runs a function of the project holding backwards of undivided losses and no
        optimizer step (a mixed-precision helper's ``backward(loss)``)."""
        for ctx, function in callees(self.ctx, call, (b"backward(",)):
            for helper in ctx.get(TrainingSteps).all_steps():
                if helper.function is not function or helper.of_kind(*STEP_KINDS, EventKind.ZERO_GRAD):
                    continue
                found = [e for e in helper.of_kind(*BACKWARD_KINDS) if e.kind is not EventKind.FRAMEWORK_BACKWARD]
                facts = ctx.get(LoopFacts)
                if found and all(e.target is not None and not facts.divided_on_the_way(e.target) for e in found):
                    return True
        return False

    def _splits_a_batch(self, iterable: cst.BaseExpression, depth: int = 2) -> bool:
        """``range(0, n, micro)``, ``x.split(k)``, ``x.chunk(k)``, ``torch.split(x, k)``, ``zip``
        of such (also through names bound to them), ``enumerate`` of any of them."""
        if isinstance(iterable, cst.Name) and depth > 0:
            values = self.flow.scopes.assigned_values(iterable)
            return bool(values) and all(self._splits_a_batch(value, depth - 1) for value in values or ())
        if not isinstance(iterable, cst.Call):
            return False
        func = iterable.func
        name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        arguments = [a.value for a in iterable.args if not a.keyword]
        if name == "enumerate" and arguments:
            return self._splits_a_batch(arguments[0], depth)
        if name == "range":
            return len(arguments) == 3
        if name in ("split", "chunk", "tensor_split"):
            return True
        if name == "zip":
            return any(self._splits_a_batch(a, depth) for a in arguments)
        return False

    def divided_on_the_way(self, expr: cst.BaseExpression, depth: int = 4, by_the_count: bool = False) -> bool:
        """The loss reaching a backward was divided (or scaled down) on its way: ``loss / k``,
        ``loss /= k``, ``loss.div(k)``, ``loss * 0.25``, ``loss * scale`` with ``scale = 1 / k``,
        a factor named for accumulation, in what it is computed from (names followed ``depth``
        bindings deep in its function, apex's ``amp.scale_loss`` included), and in the project
        function that returns it. ``by_the_count``: only by a count named for accumulation (in
        such a function, ``lbox *= 0.05`` weighs a loss term, it does not average micro-batches)."""
        for node in self.flow.scopes.computed_from(expr, depth):
            if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Divide, cst.FloorDivide)):
                if not by_the_count or _named_for_accumulation(node.right):
                    return True
            if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
                if self._scales_down(node.left, by_the_count) or self._scales_down(node.right, by_the_count):
                    return True
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in ("div", "div_", "true_divide"):
                if not by_the_count or any(_named_for_accumulation(a.value) for a in node.args[:1]):
                    return True
            if isinstance(node, cst.AugAssign) and isinstance(node.operator, (cst.DivideAssign, cst.MultiplyAssign)):
                if not by_the_count or (isinstance(node.operator, cst.DivideAssign) and _named_for_accumulation(node.value)):
                    return True
            if isinstance(node, cst.Call) and depth > 0 and self._divided_in_the_function(node, depth - 1):
                return True
        return False

    def _divided_in_the_function(self, call: cst.Call, depth: int) -> bool:
        """The loss is what a function of the project returns, and it divides it by the
        accumulation count on the way (``loss, correct = self._forward_pass(batch)`` where the
        helper ends in ``loss = loss / cfg.gradient_accumulation_steps; return loss, correct``)."""
        for ctx, function in callees(self.ctx, call, None):  # a division is no call: no index to ask
            facts = ctx.get(LoopFacts)
            for returned in (n.value for n in scope_nodes(function.body) if isinstance(n, cst.Return) and n.value is not None):
                values = returned.elements if isinstance(returned, cst.Tuple) else None
                parts = [e.value for e in values] if values is not None else [returned]
                if any(facts.divided_on_the_way(part, depth, by_the_count=True) for part in parts):
                    return True
        return False

    def _scales_down(self, factor: cst.BaseExpression, by_the_count: bool = False) -> bool:
        """A factor named for accumulation, or (unless ``by_the_count``) a known constant between
        0 and 1 (a factor computed by a division is found by ``divided_on_the_way`` among what the
        loss is computed from)."""
        if _named_for_accumulation(factor):
            return True
        if by_the_count:
            return False
        values = self.flow.values(factor)
        numbers = [c for c in values.constants() if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return not values.unknown and bool(numbers) and len(numbers) == len(values) and all(0 < n < 1 for n in numbers)


def _named_for_accumulation(expr: cst.BaseExpression) -> bool:
    """``accum``, ``cfg.gradient_accumulation_steps``, ``n_micro``: a count of micro-batches by its name."""
    name = (dotted_name(expr) or "").lower()
    return any(word in name for word in ("accum", "micro", "grad_acc", "n_acc"))


# -- additions to storage --------------------------------------------------------------------------
def _additions(ctx: FileContext) -> Iterator[tuple[cst.CSTNode, cst.BaseExpression, cst.BaseExpression, AccumulationKind]]:
    """``t += v`` / ``t -= v``, ``t = t + v`` (``t = a * t + b * v``), ``t.append(v)``."""
    for node in ctx.nodes.of(cst.AugAssign):
        if isinstance(node.operator, (cst.AddAssign, cst.SubtractAssign)):
            yield node, node.target, node.value, "augmented"
    for node in ctx.nodes.of(cst.Assign):
        if len(node.targets) != 1:
            continue
        target = node.targets[0].target
        written = dotted_name(target) if not isinstance(target, cst.Subscript) else ctx.code(target)
        terms = list(_sum_terms(node.value))
        if written is None or len(terms) < 2:
            continue
        own = [t for t in terms if _code_of_term(ctx, t) == written]
        others = [t for t in terms if _code_of_term(ctx, t) != written]
        if len(own) == 1 and len(others) == 1:
            yield node, target, others[0], "assigned"
    for call in ctx.nodes.of(cst.Call):
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in _APPENDING and len(call.args) >= 1:
            value = call.args[-1].value if func.attr.value == "insert" else call.args[0].value
            if isinstance(ctx.parent(call), cst.Expr) and not call.args[0].star:
                if isinstance(value, (cst.List, cst.Tuple)) and func.attr.value == "extend" and len(value.elements) == 1:
                    value = value.elements[0].value
                yield call, func.value, value, "appended"


def _sum_terms(expr: cst.BaseExpression) -> Iterator[cst.BaseExpression]:
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Subtract)):
        yield from _sum_terms(expr.left)
        yield from _sum_terms(expr.right)
    else:
        yield expr


def _code_of_term(ctx: FileContext, term: cst.BaseExpression) -> str:
    """``avg`` for ``avg``, ``0.9 * avg`` and ``avg * momentum`` (a scaled running value)."""
    if isinstance(term, cst.BinaryOperation) and isinstance(term.operator, cst.Multiply):
        for side in (term.left, term.right):
            name = dotted_name(side)
            if name is not None:
                return name
    return ctx.code(term)


def _base(target: cst.BaseExpression) -> cst.Name | None:
    while isinstance(target, (cst.Attribute, cst.Subscript)):
        target = target.value
    return target if isinstance(target, cst.Name) else None


def _instance_state(target: cst.BaseExpression) -> bool:
    base = _base(target)
    return base is not None and base.value == "self" and target is not base


def _read_of_target(statement: cst.CSTNode, base: cst.Name) -> cst.Name | None:
    """The read of the accumulator on the right of ``t = t + v`` (``t = 0.9 * t + 0.1 * v``):
    where the value carried from before is loaded. None for other statements (``t += v`` and
    ``t.append(v)`` load ``t`` in the target itself)."""
    if not isinstance(statement, cst.Assign) or statement.targets[0].target is not base:
        return None
    for term in _sum_terms(statement.value):
        factors = (term.left, term.right) if isinstance(term, cst.BinaryOperation) else (term,)
        for factor in factors:
            if isinstance(factor, cst.Name) and factor.value == base.value:
                return factor
    return None


def _inside(ctx: FileContext, node: cst.CSTNode, outer: cst.CSTNode) -> bool:
    return any(a is outer for a in ctx.ancestors(node))


def _in_body(loop: Loop, node: cst.CSTNode, ctx: FileContext) -> bool:
    """In the loop's body (not its ``iter``/``test`` nor its ``else``)."""
    return _inside(ctx, node, loop.body)




def _names_in(expr: cst.BaseExpression) -> Iterator[cst.BaseExpression]:
    """The names and attribute chains an expression is made of (not inside calls' arguments)."""
    if isinstance(expr, (cst.Name, cst.Attribute)):
        yield expr
        if isinstance(expr, cst.Attribute):
            return
    if isinstance(expr, cst.BinaryOperation):
        yield from _names_in(expr.left)
        yield from _names_in(expr.right)
    elif isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        yield from _names_in(expr.func.value)
    elif isinstance(expr, cst.Subscript):
        yield from _names_in(expr.value)


def _modulo_test(ctx: FileContext, statement: cst.CSTNode, loop: Loop) -> cst.BaseExpression | None:
    """The divisor ``k`` of the innermost ``if`` (inside the loop) around the statement whose test
    is ``<...> % k == 0`` (also ``not <...> % k``, combined with ``or``/``and`` other tests)."""
    for ancestor in ctx.ancestors(statement):
        if ancestor is loop:
            return None
        if isinstance(ancestor, cst.If) and _inside(ctx, statement, ancestor.body):
            divisor = _modulo_divisor(ancestor.test)
            if divisor is not None:
                return divisor
    return None


def _modulo_divisor(test: cst.BaseExpression) -> cst.BaseExpression | None:
    if isinstance(test, cst.BooleanOperation):
        return _modulo_divisor(test.left) or _modulo_divisor(test.right)
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        inner = test.expression
        return inner.right if isinstance(inner, cst.BinaryOperation) and isinstance(inner.operator, cst.Modulo) else None
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        left = test.left
        target = test.comparisons[0]
        zero = isinstance(target.comparator, cst.Integer) and target.comparator.value == "0"
        if isinstance(target.operator, cst.Equal) and zero and isinstance(left, cst.BinaryOperation) and isinstance(left.operator, cst.Modulo):
            return left.right
    return None


def _statement(event: StepEvent) -> cst.CSTNode:
    """The statement holding the event in the function it is written in (a helper's own)."""
    return event.local_statement if event.local_statement is not None else event.statement


def _finishes_a_step(call: cst.Call) -> bool:
    """``opt.step()``, ``scaler.step(opt)``, ``x.zero_grad()``: a loop holding one is no pure
    accumulation over micro-batches."""
    func = call.func
    return isinstance(func, cst.Attribute) and func.attr.value in ("step", "zero_grad")


def _every_iteration(ctx: FileContext, loop: cst.CSTNode, statements: list[cst.CSTNode]) -> bool:
    """One of the statements runs on every iteration: one is unconditional in the loop, or an
    ``if``/``else`` that runs on every iteration holds one in each branch (``if fp16:
    scaler.scale(loss).backward() else: loss.backward()``)."""
    if any(not _conditional_within(ctx, s, loop) for s in statements):
        return True
    for node in {id(a): a for s in statements for a in ctx.ancestors(s) if isinstance(a, cst.If)}.values():
        if not _inside(ctx, node, loop) or _conditional_within(ctx, node, loop) or not isinstance(node.orelse, cst.Else):
            continue
        if any(_inside(ctx, s, node.body) for s in statements) and any(_inside(ctx, s, node.orelse) for s in statements):
            return True
    return False


def _conditional_within(ctx: FileContext, statement: cst.CSTNode, loop: cst.CSTNode) -> bool:
    """Inside an ``if``/``try`` handler/``while`` between the loop and the statement."""
    return ctx.nested_in(statement, (cst.If, cst.ExceptHandler, cst.While, cst.Else), loop)


__all__ = [
    "TRAINING_WORDS", "Accumulation", "AccumulationStep", "LoopFacts", "MicroBatches", "TrainingLoop", "callees",
]
