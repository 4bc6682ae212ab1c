"""Turning a function's body into the items of its step: events in evaluation order, helpers
inlined at their call sites."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step.events import (
    _FINITENESS_CALLS,
    CLIP_FUNCTIONS,
    HELPER_DEPTH,
    EventKind,
    OptimizerInfo,
    ScalerInfo,
    StepEvent,
)
from trainlint.analysis.training_step.graph import (
    _Branch,
    _canonical_code,
    _Decision,
    _implied,
    _dotted_reads,
    _Exit,
    _exits,
    _flatten,
    _free_names,
    _Inline,
    _Item,
    _Loop,
)
from trainlint.analysis.training_step.receivers import _Module
from trainlint.analysis.training_step.syntax import (
    _bound_texts,
    _call_name,
    _descendants,
    _evaluation_order,
    _first_positional,
    _grad_targets,
    _is_framework_backward,
    _is_grad,
    _keyword,
    _parameters,
)
from trainlint.analysis.values import (
    Tensor,
)

# A framework object's methods that unscale the gradients it scaled (then clip, but for the last).
_FRAMEWORK_UNSCALES = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_gradients", "unscale_gradients"})
# Events on an optimizer: a loop whose body has one on its own variable loops over optimizers.
_OPTIMIZER_KINDS = frozenset({EventKind.UNSCALE, EventKind.SCALER_STEP, EventKind.OPT_STEP, EventKind.ZERO_GRAD})


@dataclass
class _BuildState:
    """Shared by a step's builder and the builders of the helpers it inlines."""

    root: cst.FunctionDef
    counter: int = 0
    order: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = field(default_factory=dict)
    exits: list[tuple[_Exit, tuple[tuple[int, int], ...], int]] = field(default_factory=list)
    scalers: dict[str, ScalerInfo] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)
    optimizers: dict[str, OptimizerInfo] = field(default_factory=dict)
    helpers: set[cst.FunctionDef] = field(default_factory=set)

    @cached_property
    def root_assignments(self) -> dict[str, frozenset[str]]:
        """What the step's own function assigns to each plain name (``use_amp = self.amp()``)."""
        return _assignments(self.root)


class _Builder:
    """Turns one function's body into items; a helper it calls gets a builder of its own that
    shares the state and reports events at the outermost call site."""

    def __init__(
        self,
        module: _Module,
        state: _BuildState,
        function: cst.FunctionDef,
        *,
        depth: int = 0,
        substitutions: dict[str, str] | None = None,
        call_site: cst.Call | None = None,
        call_statement: cst.CSTNode | None = None,
        via_helper: cst.FunctionDef | None = None,
        chain: tuple[cst.FunctionDef, ...] = (),
    ) -> None:
        self.module = module
        self.ctx = module.ctx
        self.state = state
        self.function = function
        self.depth = depth
        self.substitutions = substitutions or {}
        self.call_site = call_site
        self.call_statement = call_statement
        self.via_helper = via_helper
        self.chain = (*chain, function)
        self.loops: list[cst.CSTNode] = []
        self.statement: cst.CSTNode = function
        self.nesting: tuple[tuple[int, int], ...] = ()

    # -- statements --------------------------------------------------------------------------
    def block(self, body: cst.BaseSuite | Sequence[cst.BaseStatement]) -> list[_Item]:
        statements: Sequence[cst.CSTNode]
        if isinstance(body, cst.IndentedBlock):
            statements = body.body
        elif isinstance(body, cst.SimpleStatementSuite):
            statements = [body]
        else:
            statements = body  # type: ignore[assignment]
        items: list[_Item] = []
        for statement in statements:
            items.extend(self.compound(statement))
        return items

    def branch(self, node: cst.CSTNode, alternatives: list[Sequence[cst.CSTNode] | cst.BaseSuite | None]) -> list[_Item]:
        """The alternatives of an if/try/match; nothing when none of them holds an event or exit
        (a logging ``if`` adds no path)."""
        built = []
        outer = self.nesting
        for index, alternative in enumerate(alternatives):
            self.nesting = (*outer, (id(node), index))
            built.append(self.block(alternative) if alternative is not None else [])
        self.nesting = outer
        if not any(built):
            return []
        clearing = [a for a in built if a]
        if isinstance(node, cst.If) and len(clearing) == 1 and _only_clears(clearing[0]) and (
            _tests_a_gradient(node.test) or self._tests_existence(node.test, clearing[0])
        ):
            return clearing[0]  # `if p.grad is not None: p.grad.zero_()`: the other side has none to clear
        own_if = node if isinstance(node, cst.If) and self.depth == 0 else None
        sides = _implied(node.test) if isinstance(node, cst.If) else ()
        if not any(sides):
            return [_Branch(built, own_if=own_if)]
        reads = frozenset(self.subst(name) or name for name in _dotted_reads(node.test))  # type: ignore[attr-defined]
        known = tuple(frozenset(self.decision_key(part, decision) for part, decision in side) for side in sides)
        reads |= {key for side in known for key, _ in side if "@" in key}  # a helper's own variables: decided anew on every call
        return [_Branch(built, known=known, reads=reads, own_if=own_if)]

    def _tests_existence(self, test: cst.BaseExpression, clearing: list[_Item]) -> bool:
        """``if opt_st:`` / ``if opt_st is not None:`` around ``opt_st.zero_grad()``: where the
        test fails there is no such optimizer (None), so no step of it either; an optimizer
        object is always true."""
        subject = test
        if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            comparison = test.comparisons[0]
            none = isinstance(comparison.comparator, cst.Name) and comparison.comparator.value == "None"
            if not (none and isinstance(comparison.operator, cst.IsNot)):
                return False
            subject = test.left
        text = dotted_name(subject)
        if text is None:
            return False
        tested = self.subst(text) or text
        return all(e.optimizer == tested for e in _flatten(clearing))

    def decision_key(self, test: cst.BaseExpression, decision: _Decision) -> tuple[str, bool]:
        """The key and side of an ``if`` test's decision, spelled as the step's function would:
        a helper's parameter is renamed to the caller's argument; a test of the helper's own
        variables is a decision of this call of the helper only."""
        if self.depth == 0:
            return decision.key, decision.value
        if decision.dotted:
            head = decision.key.partition(".")[0]
            if head in self.substitutions or head == "self":
                return self.subst(decision.key) or decision.key, decision.value
        if decision.dotted and self._recomputes_roots(decision.key):
            # `use_amp = self.amp()` in the helper as in the step: the same setting, decided alike
            return decision.key, decision.value
        if any(self._local_to_helper(name) for name in _free_names(test) - {"self"}):
            return f"{decision.key} @{id(self)}", decision.value
        return decision.key, decision.value

    def _recomputes_roots(self, name: str) -> bool:
        """The helper assigns ``name`` only what the step's function assigns it."""
        mine = _assignments(self.function).get(name)
        return bool(mine) and mine <= self.state.root_assignments.get(name, frozenset())

    def _local_to_helper(self, name: str) -> bool:
        """A name of the helper being inlined: a parameter the caller did not name, or assigned here."""
        if name in self.substitutions:
            return True
        return name in self.module.scopes.records(self.function)

    def compound(self, statement: cst.CSTNode) -> list[_Item]:
        self.statement = statement
        if isinstance(statement, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
            items: list[_Item] = []
            for small in statement.body:
                self.statement = statement
                items.extend(self.small(small, statement))
            return items
        if isinstance(statement, cst.If):
            items = self.expression(statement.test)
            orelse = statement.orelse
            other: Sequence[cst.CSTNode] | cst.BaseSuite | None = None
            if isinstance(orelse, cst.If):
                other = [orelse]
            elif isinstance(orelse, cst.Else):
                other = orelse.body
            return [*items, *self.branch(statement, [statement.body, other])]
        if isinstance(statement, (cst.For, cst.While)):
            header = self.expression(statement.iter if isinstance(statement, cst.For) else statement.test)
            self.loops.append(statement)
            body = self.block(statement.body)
            self.loops.pop()
            after = self.block(statement.orelse.body) if statement.orelse is not None else []
            return [*header, _Loop(body, statement, self._runs_at_least_once(statement, body)), *after]
        if isinstance(statement, (cst.Try, cst.TryStar)):
            body = [*statement.body.body, *(statement.orelse.body.body if statement.orelse is not None else [])]
            alternatives: list[Sequence[cst.CSTNode] | cst.BaseSuite | None] = [body]
            alternatives.extend(handler.body for handler in statement.handlers)
            items = self.branch(statement, alternatives)
            if statement.finalbody is not None:
                items.extend(self.block(statement.finalbody.body))
            return items
        if isinstance(statement, cst.With):
            items = [i for item in statement.items for i in self.expression(item.item)]
            return [*items, *self.block(statement.body)]
        if isinstance(statement, cst.Match):
            items = self.expression(statement.subject)
            cases: list[Sequence[cst.CSTNode] | cst.BaseSuite | None] = [case.body for case in statement.cases]
            cases.append(None)
            return [*items, *self.branch(statement, cases)]
        return []  # nested def/class: not run here

    def _runs_at_least_once(self, loop: cst.For | cst.While, body: list[_Item]) -> bool:
        """A loop over the optimizers that its body unscales, steps or clears, or over a literal
        non-empty list or tuple: a training step never iterates over no optimizer."""
        if not isinstance(loop, cst.For):
            return False
        if _only_clears(body):
            return True  # `for p in model.parameters(): p.grad = None`: a trained model has parameters
        if isinstance(loop.iter, (cst.List, cst.Tuple)) and loop.iter.elements:
            return not any(isinstance(e, cst.StarredElement) for e in loop.iter.elements)
        targets = {self.subst(t) or t for t in _bound_texts(loop.target)}
        return any(e.optimizer in targets for e in _flatten(body) if e.kind in _OPTIMIZER_KINDS)

    def small(self, small: cst.BaseSmallStatement, statement: cst.CSTNode) -> list[_Item]:
        if isinstance(small, (cst.Return, cst.Continue, cst.Break, cst.Raise)):
            items: list[_Item] = []
            value = small.value if isinstance(small, cst.Return) else small.exc if isinstance(small, cst.Raise) else None
            if value is not None:
                items.extend(self.expression(value))
            keyword = {cst.Return: "return", cst.Continue: "continue", cst.Break: "break", cst.Raise: "raise"}[type(small)]
            loop = self.loops[-1] if keyword in ("continue", "break") and self.loops else None
            exit_ = _Exit(keyword, small, loop, statement)
            if self.depth == 0:
                self.state.exits.append((exit_, self.nesting, self._tick()))
            return [*items, exit_]
        if isinstance(small, cst.Expr):
            return self.expression(small.value)
        if isinstance(small, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            items = self.expression(small.value) if small.value is not None else []
            if isinstance(small, cst.Assign) and self._replaces_gradients(small.value):
                for target in small.targets:
                    items.extend(self.event(EventKind.ZERO_GRAD, g, target=g.value) for g in _grad_targets(target.target))
            return items
        if isinstance(small, cst.Del):
            return [self.event(EventKind.ZERO_GRAD, g, target=g.value) for g in _grad_targets(small.target)]
        if isinstance(small, cst.Assert):
            return self.expression(small.test)
        return []

    def _replaces_gradients(self, value: cst.BaseExpression) -> bool:
        """``p.grad = None``, ``= torch.zeros_like(p)``, ``= g`` from ``torch.autograd.grad``:
        the accumulated gradient is dropped. ``p.grad = p.grad / world_size`` keeps it."""
        return not any(
            isinstance(n, cst.Attribute) and n.attr.value == "grad" and self.ctx.qualified_name(n) != "torch.autograd.grad"
            for n in (value, *_descendants(value))
        )

    # -- expressions -------------------------------------------------------------------------
    def expression(self, expr: cst.BaseExpression) -> list[_Item]:
        """Events of an expression in evaluation order; one GRAD_INSPECT at most per expression."""
        items: list[_Item] = []
        inspected = False
        grad_names = self.module.derived_names(self.function)[0]
        for node in _evaluation_order(expr):
            if isinstance(node, cst.Call):
                items.extend(self.call(node))
            elif not inspected and self._holds_grads(node, grad_names):
                use = self.module.value_use(node, self.function)
                if use is not None:
                    invariant = isinstance(use, cst.Call) and _call_name(use) in _FINITENESS_CALLS
                    finite = invariant or self._in_finiteness_test(use)
                    items.append(self.event(EventKind.GRAD_INSPECT, use, target=node, scale_invariant=invariant, tests_finiteness=finite))  # type: ignore[arg-type]
                    inspected = True
        return items

    def _in_finiteness_test(self, use: cst.CSTNode) -> bool:
        """The inspection sits in an isnan/isinf/isfinite call of the same statement."""
        for ancestor in self.ctx.ancestors(use):
            if isinstance(ancestor, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                return False
            if isinstance(ancestor, cst.Call) and _call_name(ancestor) in _FINITENESS_CALLS:
                return True
        return False

    def _holds_grads(self, node: cst.CSTNode, grad_names: frozenset[str]) -> bool:
        if isinstance(node, cst.Attribute) and node.attr.value == "grad":
            return True
        if isinstance(node, (cst.Name, cst.Attribute)) and grad_names:
            return dotted_name(node) in grad_names
        return False

    def call(self, call: cst.Call) -> list[_Item]:
        func = call.func
        qualified = self.ctx.qualified_name(func)
        if qualified == "torch.autograd.backward":  # before `X.backward()`: its target is the loss
            tensors = _keyword(call, "tensors") or _first_positional(call)
            return [self.backward(call, tensors)] if tensors is not None else []
        if isinstance(func, cst.Attribute):
            found = self.method_call(call, func.attr.value, func.value)
            if found is not None:
                return found
        if qualified in CLIP_FUNCTIONS:
            params = _keyword(call, "parameters") or _first_positional(call)
            optimizer = self.module.optimizer_for_params(self.ctx.code(params), self.function) if params is not None else None
            return [self.event(EventKind.CLIP, call, optimizer=self.subst(optimizer), target=params)]
        return self.inline(call)

    def method_call(self, call: cst.Call, method: str, receiver: cst.BaseExpression) -> list[_Item] | None:
        if method in ("backward", "manual_backward"):
            positional = _first_positional(call)
            text = dotted_name(receiver)
            if positional is not None and text is not None and _is_framework_backward(text, method):
                if method == "backward":
                    framework = self.module.framework_scaling(receiver, text)
                else:
                    framework = self.module.lightning_scaling(self.function)
                if framework is not None:
                    framework = dataclasses.replace(framework, owner=self.subst(text) or text)
                return [self.event(EventKind.FRAMEWORK_BACKWARD, call, target=positional, framework=framework)]
            if method == "manual_backward":
                return None
            if positional is not None and text is not None and "loss" not in text.lower():
                return None  # engine.backward(loss) and the like: unknown objects that may step themselves
            return [self.backward(call, receiver)]
        text = dotted_name(receiver)
        if text is None:
            return None
        if method in _FRAMEWORK_UNSCALES and _is_framework_backward(text, "backward"):
            return self.framework_unscale(call, method, receiver, text)
        if method == "clip_gradients" and text == "self" and self.module.lightning_scaling(self.function) is not None:
            return self.framework_unscale(call, method, receiver, text)
        if method == "zero_" and _is_grad(receiver):
            return [self.event(EventKind.ZERO_GRAD, call, target=receiver)]
        if method in ("unscale_", "update", "step", "scale") and self.module.is_scalerish(text):
            found = self.scaler_call(call, method, receiver, text)
            if found is not None:
                return found
        if method == "step" and len(call.args) <= 1 and self.optimizer(receiver, text) is not None:
            return [self.event(EventKind.OPT_STEP, call, optimizer=self.subst(text), target=receiver)]
        if method == "zero_grad":
            optimizer = self.subst(text) if self.optimizer(receiver, text) is not None else None
            return [self.event(EventKind.ZERO_GRAD, call, optimizer=optimizer, target=receiver)]
        return None

    def scaler_call(self, call: cst.Call, method: str, receiver: cst.BaseExpression, text: str) -> list[_Item] | None:
        status = self.scaler(receiver, text)
        argument = _first_positional(call)
        argument_text = self.subst(dotted_name(argument)) if argument is not None else None
        if status == "none":
            return None
        if status == "disabled":
            if method == "step" and argument is not None and argument_text is not None:
                self.optimizer(argument, dotted_name(argument) or "")
                return [self.event(EventKind.OPT_STEP, call, optimizer=argument_text, target=argument)]
            return []
        kinds = {"unscale_": EventKind.UNSCALE, "update": EventKind.SCALER_UPDATE, "step": EventKind.SCALER_STEP}
        if method == "scale" or (method in ("unscale_", "step") and argument is None):
            return []
        if argument is not None and method != "update":
            self.optimizer(argument, dotted_name(argument) or "", by_use=True)
        return [self.event(kinds[method], call, scaler=self.subst(text), optimizer=argument_text, target=argument)]

    def framework_unscale(self, call: cst.Call, method: str, receiver: cst.BaseExpression, text: str) -> list[_Item]:
        """``accelerator.clip_grad_norm_(params, 1.0)``, ``accelerator.unscale_gradients()``,
        ``fabric.clip_gradients(model, optimizer, max_norm=1.0)``: the framework unscales the
        gradients (under float16), then clips them."""
        if text == "self":
            framework = self.module.lightning_scaling(self.function)
        else:
            framework = self.module.framework_scaling(receiver, text)
        spelled = self.subst(text) or text
        if framework is not None:
            framework = dataclasses.replace(framework, owner=spelled)
        unscale = self.event(EventKind.UNSCALE, call, scaler=spelled, framework=framework)
        if method == "unscale_gradients":
            return [unscale]
        if method == "clip_gradients":  # fabric.clip_gradients(module, optimizer, ...)
            optimizer = call.args[1].value if len(call.args) > 1 and call.args[1].keyword is None else _keyword(call, "optimizer")
            params = _first_positional(call) or _keyword(call, "module")
            name = self.subst(dotted_name(optimizer)) if optimizer is not None else None
            return [unscale, self.event(EventKind.CLIP, call, optimizer=name, target=params)]
        params = _keyword(call, "parameters") or _first_positional(call)
        optimizer = self.module.optimizer_for_params(self.ctx.code(params), self.function) if params is not None else None
        return [unscale, self.event(EventKind.CLIP, call, optimizer=self.subst(optimizer), target=params)]

    def backward(self, call: cst.Call, tensor: cst.BaseExpression) -> StepEvent:
        scaler, loss = self._scaled(tensor)
        if scaler is not None:
            receiver, text = scaler
            status = self.scaler(receiver, text)
            if status in ("known", "uncertain"):
                partly = loss is tensor and not self.module.flow.values(tensor).must(
                    lambda v: isinstance(v, Tensor) and v.kind == "scaled"
                )
                return self.event(
                    EventKind.SCALED_BACKWARD, call, scaler=self.subst(text), target=loss, partly_scaled=partly
                )
        return self.event(EventKind.BACKWARD, call, target=loss if scaler is not None else tensor)

    def _scaled(self, tensor: cst.BaseExpression) -> tuple[tuple[cst.BaseExpression, str] | None, cst.BaseExpression]:
        """((scaler, its text), loss) when the tensor is ``scaler.scale(loss)`` (or a name
        holding it)."""
        while isinstance(tensor, cst.BinaryOperation):
            tensor = tensor.left
        scaler, loss = self._scaled_value(tensor)
        if scaler is not None:
            return scaler, loss
        for value in self.module.flow.values(tensor).of_type(Tensor):  # `scaled = scaler.scale(loss)`
            if value.kind == "scaled" and value.site.ctx is self.ctx and isinstance(value.site.node, cst.Call):
                scaler, _ = self._scaled_value(value.site.node)
                if scaler is not None:
                    return scaler, tensor
        return None, tensor

    def _scaled_value(self, value: cst.BaseExpression) -> tuple[tuple[cst.BaseExpression, str] | None, cst.BaseExpression]:
        if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "scale":
            text = dotted_name(value.func.value)
            loss = _first_positional(value)
            if text is not None and loss is not None and self.module.is_scalerish(text):
                return (value.func.value, text), loss
        return None, value

    # -- helpers ---------------------------------------------------------------------------------
    def inline(self, call: cst.Call) -> list[_Item]:
        if self.depth >= HELPER_DEPTH:
            return []
        found = self.module.helper_for(call, self.function)
        if found is None or found[0] in self.chain:
            return []
        helper, bound = found
        builder = _Builder(
            self.module,
            self.state,
            helper,
            depth=self.depth + 1,
            substitutions=self._arguments(call, helper, bound),
            call_site=self.call_site or call,
            call_statement=self.call_statement or self.statement,
            via_helper=self.via_helper or helper,
            chain=self.chain,
        )
        builder.nesting = self.nesting
        body = builder.block(helper.body)
        if not any(True for _ in _flatten(body)):
            return []
        self.state.helpers.add(helper)
        return [_Inline(body)]

    def _arguments(self, call: cst.Call, helper: cst.FunctionDef, bound: bool) -> dict[str, str]:
        """Helper parameter -> the caller's expression text, for names the caller can spell."""
        params = [*helper.params.posonly_params, *helper.params.params]
        if bound:
            params = params[1:]
        by_name = {p.name.value: p for p in _parameters(helper)}
        mapping: dict[str, str] = {}
        for index, arg in enumerate(call.args):
            if arg.star:
                break
            name = arg.keyword.value if arg.keyword is not None else (params[index].name.value if index < len(params) else None)
            text = dotted_name(arg.value)
            if name is not None and name in by_name and text is not None:
                mapping[name] = self.subst(text) or text
        return mapping

    # -- naming --------------------------------------------------------------------------------
    def subst(self, text: str | None) -> str | None:
        """The text as the step's own function spells it (helper parameters replaced)."""
        if text is None:
            return None
        head, dot, rest = text.partition(".")
        if head in self.substitutions:
            return self.substitutions[head] + dot + rest
        return text

    def scaler(self, receiver: cst.BaseExpression, text: str) -> str:
        spelled = self.subst(text) or text
        status, info = self.module.scaler_status(receiver, text)
        if status == "known" and info is not None:
            self.state.scalers[spelled] = dataclasses.replace(info, expr=spelled)
        elif status == "uncertain":
            self.state.uncertain.add(spelled)
        return status

    def optimizer(self, receiver: cst.BaseExpression, text: str, by_use: bool = False) -> OptimizerInfo | None:
        if not text:
            return None
        spelled = self.subst(text) or text
        info = self.module.optimizer_info(receiver, text)
        if info is None and by_use:
            info = OptimizerInfo(spelled, None, None)
        if info is not None:
            self.state.optimizers[spelled] = dataclasses.replace(info, expr=spelled)
        return info

    # -- events --------------------------------------------------------------------------------
    def _tick(self) -> int:
        self.state.counter += 1
        return self.state.counter

    def event(self, kind: EventKind, node: cst.CSTNode, **fields: object) -> StepEvent:
        event = StepEvent(
            kind=kind,
            node=node,
            statement=self.call_statement or self.statement,
            via_helper=self.via_helper,
            call_site=self.call_site,
            local_statement=self.statement,
            **fields,  # type: ignore[arg-type]
        )
        self.state.order[id(event)] = (self._tick(), self.nesting)
        return event


def _only_clears(items: list[_Item]) -> bool:
    """Items that only clear gradients (a loop or branch over parameters): no other event, no exit."""
    events = list(_flatten(items))
    return bool(events) and all(e.kind is EventKind.ZERO_GRAD for e in events) and not any(_exits(items))


def _tests_a_gradient(test: cst.BaseExpression) -> bool:
    """``p.grad is not None``, ``param.grad``: a test of whether there is a gradient."""
    return any(read == "grad" or read.endswith(".grad") for read in _dotted_reads(test))


def _assignments(function: cst.FunctionDef) -> dict[str, frozenset[str]]:
    """The code each plain name of a function is assigned (whitespace collapsed)."""
    found: dict[str, set[str]] = {}
    for node in _descendants(function):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    found.setdefault(target.target.value, set()).add(_canonical_code(node.value))
    return {name: frozenset(codes) for name, codes in found.items()}
