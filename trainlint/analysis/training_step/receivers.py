"""Who defines what in a file, what a receiver is (a GradScaler, an optimizer: asked of the
value-flow engine), and which names hold gradient values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step.events import (
    _FINITENESS_CALLS,
    _INSPECTING_CALLS,
    _INSPECTING_METHODS,
    _OPTIMIZER_NAME,
    _PASSING_CALLS,
    _PASSING_METHODS,
    CLIP_FUNCTIONS,
    GRAD_SCALER_CONSTRUCTORS,
    HELPER_DEPTH,
    LIGHTNING_FP16,
    FrameworkScaling,
    OptimizerInfo,
    ScalerInfo,
)
from trainlint.analysis.training_step.syntax import (
    _body,
    _bound_texts,
    _call_name,
    _descendants,
    _first_positional,
    _is_static,
    _last_part,
    _params_of,
)
from trainlint.analysis.values import (
    Instance,
    Scopes,
    ValueFlow,
    Values,
    is_none,
)
from trainlint.context import literal_bool
from trainlint.analysis.values.torch_calls import argument
from trainlint.analysis.values.torch_semantics import (
    is_optimizer_class,
)

if TYPE_CHECKING:
    from trainlint.context import FileContext


class _Unknown:
    """A value whose origin cannot be followed (tuple unpacking, ``with ... as``)."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True)
class _ExpressionFacts:
    reads_grad_values: bool  # a `.grad` (not an `is None` test), a clip, a helper reading them
    tests_finiteness: bool  # isnan/isinf/isfinite, itself or in a helper
    names: frozenset[str]  # every dotted name it mentions

    def reads_grads(self, grad_names: Iterable[str]) -> bool:
        return self.reads_grad_values or not self.names.isdisjoint(grad_names)

    def checks_finiteness(self, finite_names: Iterable[str]) -> bool:
        return self.tests_finiteness or not self.names.isdisjoint(finite_names)


class _Module:
    """Who defines what in this file, and where names and ``self`` attributes get their values."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self.scopes = ctx.get(Scopes)
        self.top_functions: dict[str, cst.FunctionDef] = {}
        self.classes: dict[str, cst.ClassDef] = {}
        for statement in ctx.module.body:
            if isinstance(statement, cst.FunctionDef):
                self.top_functions[statement.name.value] = statement
            elif isinstance(statement, cst.ClassDef):
                self.classes[statement.name.value] = statement
        self._function_cache: dict[cst.CSTNode, cst.FunctionDef | None | _Unknown] = {}
        self.unscaled_receivers = {
            text
            for call in ctx.nodes.of(cst.Call)
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "unscale_"
            and (text := dotted_name(call.func.value)) is not None
        }
        self.scaler_arguments = self._scaler_call_arguments()
        self._scaler_cache: dict[cst.BaseExpression, tuple[str, ScalerInfo | None]] = {}
        self._optimizer_cache: dict[cst.BaseExpression, OptimizerInfo | None] = {}
        self._derived_cache: dict[cst.FunctionDef, tuple[frozenset[str], frozenset[str]]] = {}
        self._reads_cache: dict[cst.FunctionDef, tuple[bool, bool]] = {}
        self._facts_cache: dict[cst.CSTNode, _ExpressionFacts] = {}

    # -- where things are ----------------------------------------------------------------------
    def function_of(self, node: cst.CSTNode) -> cst.FunctionDef | None:
        """The function whose body holds the node (None: module or class level, or a lambda)."""
        found = self._function_cache.get(node, _UNKNOWN)
        if found is _UNKNOWN:
            found = None
            for ancestor in self.ctx.ancestors(node):
                if isinstance(ancestor, cst.FunctionDef):
                    found = ancestor
                    break
                if isinstance(ancestor, (cst.ClassDef, cst.Lambda)):
                    break
            self._function_cache[node] = found
        return found  # type: ignore[return-value]

    def class_of(self, function: cst.FunctionDef | None) -> cst.ClassDef | None:
        if function is None:
            return None
        parent = self.ctx.parent(function)
        grandparent = self.ctx.parent(parent) if parent is not None else None
        return grandparent if isinstance(grandparent, cst.ClassDef) else None

    def _classes_upward(self, cls: cst.ClassDef) -> Iterator[cst.ClassDef]:
        """The class and its base classes defined in this module (nearest first)."""
        seen: set[int] = set()
        queue = [cls]
        while queue:
            current = queue.pop(0)
            if id(current) in seen:
                continue
            seen.add(id(current))
            yield current
            for base in current.bases:
                if isinstance(base.value, cst.Name) and base.value.value in self.classes:
                    queue.append(self.classes[base.value.value])

    def method(self, cls: cst.ClassDef, name: str) -> cst.FunctionDef | None:
        for current in self._classes_upward(cls):
            for statement in current.body.body:
                if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
                    return statement
        return None

    def helper_for(self, call: cst.Call, caller: cst.FunctionDef) -> tuple[cst.FunctionDef, bool] | None:
        """The function of this module a call runs, and whether it is a bound method (skip self)."""
        func = call.func
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self":
            cls = self.class_of(caller)
            found = self.method(cls, func.attr.value) if cls is not None else None
            return (found, not _is_static(found)) if found is not None else None
        if isinstance(func, cst.Name):
            for statement in caller.body.body if isinstance(caller.body, cst.IndentedBlock) else ():
                if isinstance(statement, cst.FunctionDef) and statement.name.value == func.value:
                    return statement, False
            found = self.top_functions.get(func.value)
            return (found, False) if found is not None else None
        return None

    def _scaler_call_arguments(self) -> set[str]:
        """Texts passed to ``X.step(...)``/``X.unscale_(...)`` where X is named like a scaler."""
        found = set()
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in ("step", "unscale_"):
                receiver = dotted_name(func.value)
                argument = _first_positional(call)
                if receiver and "scaler" in _last_part(receiver).lower() and argument is not None:
                    text = dotted_name(argument)
                    if text:
                        found.add(text)
        return found

    # -- what a receiver is (asked of the value-flow engine) -------------------------------------
    def is_scalerish(self, text: str) -> bool:
        return "scaler" in _last_part(text).lower() or text in self.unscaled_receivers

    def _receiver_values(self, receiver: cst.BaseExpression) -> Values:
        return self.flow.values(receiver)

    def scaler_status(self, receiver: cst.BaseExpression, text: str) -> tuple[str, ScalerInfo | None]:
        """("known", info) | ("disabled", None) | ("uncertain", None) | ("none", None)."""
        if receiver not in self._scaler_cache:
            self._scaler_cache[receiver] = self._scaler_status(receiver, text)
        return self._scaler_cache[receiver]

    def _scaler_status(self, receiver: cst.BaseExpression, text: str) -> tuple[str, ScalerInfo | None]:
        values = self._receiver_values(receiver)
        named_like_one = "scaler" in _last_part(text).lower()
        scalers = [v for v in values.of_type(Instance) if v.cls in GRAD_SCALER_CONSTRUCTORS]
        if any(not is_none(v) and v not in scalers for v in values):
            return "uncertain", None  # some other object: timm's NativeScaler, a DeepSpeed engine
        if not scalers:
            if not values.unknown:
                return "none", None  # only ever None
            if named_like_one and not values.untraced:  # given from outside: judged by its name
                return "known", ScalerInfo(text, None, None, None)
            return "uncertain", None
        enabled = [self.flow.scaler_enabled(s) for s in scalers]
        if all(e is False for e in enabled):
            return ("disabled", None) if not values.unknown else ("uncertain", None)
        on = [s for s, e in zip(scalers, enabled) if e is not False]
        scales = {self.flow.scaler_init_scale(s) for s in on}
        all_on = not values.unknown and all(e is True for e in enabled) and not any(is_none(v) for v in values)
        return "known", ScalerInfo(
            text, on[0].cls, True if all_on else None, scales.pop() if len(scales) == 1 else None
        )

    def framework_scaling(self, receiver: cst.BaseExpression, text: str) -> FrameworkScaling | None:
        """Whether ``accelerator.backward`` / ``fabric.backward`` scales the loss: only where the
        code builds the object with float16 (``mixed_precision="fp16"``, ``precision="16-mixed"``).
        None where it shows another precision, and where a config or the launcher decides: the
        framework's default is float32, and a rule that cannot see float16 stays quiet."""
        framework = "Accelerate" if _last_part(text).lower() == "accelerator" else "Fabric"
        keyword = "mixed_precision" if framework == "Accelerate" else "precision"
        seen: set[bool] = set()
        for instance in self.flow.values(receiver).of_type(Instance):
            call, site = instance.call, instance.site
            arg = argument(call, -1, keyword) if call is not None else None
            if arg is None or site is None:
                continue
            for constant in site.ctx.get(ValueFlow).values(arg.value).constants():
                seen.add(str(constant) == "fp16" if framework == "Accelerate" else str(constant) in LIGHTNING_FP16)
        if seen != {True}:
            return None
        return FrameworkScaling(text, framework)

    def lightning_scaling(self, function: cst.FunctionDef) -> FrameworkScaling | None:
        """``self.manual_backward(loss)`` in a LightningModule: Lightning's precision plugin
        scales the loss under ``precision="16-mixed"`` (None where the project does not show it)."""
        from trainlint.analysis.training_step.framework import FrameworkSteps  # built on this module

        cls = self.class_of(function)
        steps = self.ctx.get(FrameworkSteps)
        if cls is None or steps.framework_of(cls) != "Lightning":
            return None
        return FrameworkScaling("self", "Lightning") if steps.precision("Lightning") == "fp16" else None

    def optimizer_info(self, receiver: cst.BaseExpression, text: str) -> OptimizerInfo | None:
        if receiver not in self._optimizer_cache:
            self._optimizer_cache[receiver] = self._optimizer_info(receiver, text)
        return self._optimizer_cache[receiver]

    def _optimizer_info(self, receiver: cst.BaseExpression, text: str) -> OptimizerInfo | None:
        last = _last_part(text).lower()
        if "sched" in last:
            return None
        values = self._receiver_values(receiver)
        if any(isinstance(v, Instance) and ("lr_scheduler" in v.cls or "Scheduler" in v.cls) for v in values):
            return None
        optimizers = [v for v in values.of_type(Instance) if is_optimizer_class(v.cls)]
        if optimizers:
            # `for opt in optimizers:` is each of them: what they train together is their union,
            # and a fix that spells one optimizer's parameters applies only to a single one.
            params = Values.union(self.flow.construction_argument(o, 0, "params") or Values() for o in optimizers)
            instance = optimizers[0]
            call = instance.call if len(optimizers) == 1 else None
            node = _params_of(call) if call is not None else None
            local = node is not None and instance.site is not None and instance.site.ctx is self.ctx
            code = instance.site.ctx.code(node) if node is not None and instance.site is not None else None
            return OptimizerInfo(text, instance.cls, code, node if local else None, instance, params)
        named_like_one = bool(_OPTIMIZER_NAME.search(last)) or text in self.scaler_arguments
        return OptimizerInfo(text, None, None) if named_like_one else None

    def optimizer_for_params(self, params_code: str, function: cst.FunctionDef | None) -> str | None:
        """The one optimizer visible from ``function`` built over exactly these parameters
        (``clip_grad_norm_(self.netD.parameters())`` -> ``self.opt_d``)."""
        scopes = {function, self.class_of(function), None}
        matches = {text for scope, text in self._optimizers_by_params.get(params_code, ()) if scope in scopes}
        return matches.pop() if len(matches) == 1 else None

    @cached_property
    def _optimizers_by_params(self) -> dict[str, list[tuple[cst.CSTNode | None, str]]]:
        """Optimizer constructions assigned to a name or ``self.<attr>``, by their params code."""
        found: dict[str, list[tuple[cst.CSTNode | None, str]]] = {}
        for call in self.ctx.nodes.of(cst.Call):
            if not is_optimizer_class(self.ctx.qualified_name(call.func) or ""):
                continue
            parent = self.ctx.parent(call)
            if not isinstance(parent, cst.Assign) or len(parent.targets) != 1:
                continue
            text = dotted_name(parent.targets[0].target)
            params = _params_of(call)
            if text is None or params is None:
                continue
            function = self.function_of(call)
            scope: cst.CSTNode | None = function
            if "." in text:
                head, _, rest = text.partition(".")
                if head != "self" or "." in rest:
                    continue
                scope = self.class_of(function)
            found.setdefault(self.ctx.code(params), []).append((scope, text))
        return found

    # -- names holding gradient values ----------------------------------------------------------
    def derived_names(self, function: cst.FunctionDef) -> tuple[frozenset[str], frozenset[str]]:
        """Names holding values computed from gradients, and names holding a finiteness verdict
        (``found_inf = True`` under ``if torch.isnan(p.grad).any():`` counts for both)."""
        if function not in self._derived_cache:
            self._derived_cache[function] = frozenset(), frozenset()
            if function in self._functions_near_grads:
                self._derived_cache[function] = self._derived_names(function)
        return self._derived_cache[function]

    @cached_property
    def _functions_near_grads(self) -> frozenset[cst.FunctionDef]:
        """Functions that read `.grad`, clip or test finiteness, and those calling them: only
        these can hold names derived from gradients (the rest need no walk)."""
        direct = set()
        for attribute in self.ctx.nodes.of(cst.Attribute):
            if attribute.attr.value == "grad" or attribute.attr.value in _FINITENESS_CALLS:
                direct.add(self.function_of(attribute))
        for call in self.ctx.nodes.of(cst.Call):
            name = _call_name(call)
            if name in _FINITENESS_CALLS or (name or "").startswith("clip_grad"):
                direct.add(self.function_of(call))
        near = set(direct)
        for _ in range(HELPER_DEPTH):
            for call in self.ctx.nodes.of(cst.Call):
                caller = self.function_of(call)
                if caller is None or caller in near:
                    continue
                found = self.helper_for(call, caller)
                if found is not None and found[0] in near:
                    near.add(caller)
        if None in near:
            near.add(self.ctx.module)  # module-level script code
        near.discard(None)
        return frozenset(near)  # type: ignore[arg-type]

    def _derived_names(self, function: cst.FunctionDef) -> tuple[frozenset[str], frozenset[str]]:
        bindings: list[tuple[list[str], list[_ExpressionFacts]]] = []
        for node in _descendants(_body(function)):
            if isinstance(node, (cst.Assign, cst.AnnAssign, cst.AugAssign)) and node.value is not None:
                targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
                names = [n for t in targets for n in _bound_texts(t)]
                facts = [self.facts(node.value, function)]
                if literal_bool(node.value) is not None:  # `found_inf = True` under a check is a verdict
                    facts += [self.facts(test, function) for test in self._tests_around(node, function)]
                bindings.append((names, facts))
            elif isinstance(node, (cst.For, cst.CompFor)):
                bindings.append((list(_bound_texts(node.target)), [self.facts(node.iter, function)]))
        grad: set[str] = set()
        finite: set[str] = set()
        changed = True
        while changed:
            changed = False
            for names, facts in bindings:
                reads = any(f.reads_grads(grad) for f in facts)
                checks = any(f.checks_finiteness(finite) for f in facts)
                for name in names:
                    if reads and name not in grad:
                        grad.add(name)
                        changed = True
                    if checks and name not in finite:
                        finite.add(name)
                        changed = True
        return frozenset(grad), frozenset(finite)

    def _tests_around(self, node: cst.CSTNode, function: cst.FunctionDef) -> list[cst.BaseExpression]:
        tests = []
        child = node
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                break
            if isinstance(ancestor, cst.If) and child is not ancestor.test:
                tests.append(ancestor.test)
            child = ancestor
        return tests

    def facts(self, expr: cst.CSTNode, function: cst.FunctionDef) -> _ExpressionFacts:
        """What an expression touches, found in one walk and kept."""
        found = self._facts_cache.get(expr)
        if found is None:
            found = self._facts_cache[expr] = self._collect_facts(expr, function)
        return found

    def _collect_facts(self, expr: cst.CSTNode, function: cst.FunctionDef) -> _ExpressionFacts:
        grad = helper_reads = finiteness = False
        names: set[str] = set()
        for node in (expr, *_descendants(expr)):
            if isinstance(node, (cst.Name, cst.Attribute)):
                text = dotted_name(node)
                if text is not None:
                    names.add(text)
                if isinstance(node, cst.Attribute) and node.attr.value == "grad" and not self._is_none_test(node):
                    grad = True
            elif isinstance(node, cst.Call):
                if _call_name(node) in _FINITENESS_CALLS:
                    finiteness = True
                if self.ctx.qualified_name(node.func) in CLIP_FUNCTIONS:
                    grad = True
                reads, checks = self._helper_reads(node, function)
                helper_reads, finiteness = helper_reads or reads, finiteness or checks
        return _ExpressionFacts(grad or helper_reads, finiteness, frozenset(names))

    def reads_grads(self, expr: cst.CSTNode, function: cst.FunctionDef) -> bool:
        """Whether an expression uses gradient values: a ``.grad`` (not an ``is None`` test), a
        name holding them, a clip's result, or a call of a helper that reads them."""
        return self.facts(expr, function).reads_grads(self.derived_names(function)[0])

    def checks_finiteness(self, expr: cst.CSTNode, function: cst.FunctionDef) -> bool:
        """Whether an expression tests for NaN/Inf (of anything), itself or through a flag or helper."""
        return self.facts(expr, function).checks_finiteness(self.derived_names(function)[1])

    def _is_none_test(self, node: cst.CSTNode) -> bool:
        parent = self.ctx.parent(node)
        if isinstance(parent, cst.ComparisonTarget):
            parent = self.ctx.parent(parent)
        return isinstance(parent, cst.Comparison) and any(
            isinstance(t.operator, (cst.Is, cst.IsNot)) for t in parent.comparisons
        )

    def _helper_reads(self, call: cst.Call, function: cst.FunctionDef) -> tuple[bool, bool]:
        """(reads gradients, checks finiteness) for a call of a helper of this module."""
        found = self.helper_for(call, function)
        if found is None or found[0] is function:
            return False, False
        helper = found[0]
        if helper not in self._reads_cache:
            self._reads_cache[helper] = (False, False)
            nodes = list(_descendants(helper.body))
            reads = any(
                (isinstance(n, cst.Attribute) and n.attr.value == "grad" and not self._is_none_test(n))
                or (isinstance(n, cst.Call) and self.ctx.qualified_name(n.func) in CLIP_FUNCTIONS)
                for n in nodes
            )
            checks = any(isinstance(n, cst.Call) and _call_name(n) in _FINITENESS_CALLS for n in nodes)
            self._reads_cache[helper] = (reads, checks)
        return self._reads_cache[helper]

    def value_use(self, node: cst.CSTNode, function: cst.FunctionDef) -> cst.CSTNode | None:
        """Where a read of gradient values (``p.grad`` or a name holding them) is turned into
        something looked at: a norm, a NaN/Inf test, a comparison, a log line. None when the
        value is only passed on (``all_reduce``, ``mul_``, collected in a list) or tested for None."""
        current = node
        for _ in range(64):
            parent = self.ctx.parent(current)
            if parent is None:
                return None
            if isinstance(parent, cst.Attribute) and parent.value is current:
                call = self.ctx.parent(parent)
                is_call = isinstance(call, cst.Call) and call.func is parent
                if parent.attr.value in _INSPECTING_METHODS:
                    return call if is_call else parent
                if parent.attr.value not in _PASSING_METHODS:
                    return None
                current = call if is_call else parent
            elif isinstance(parent, (cst.Subscript, cst.BinaryOperation, cst.UnaryOperation, cst.BooleanOperation, cst.IfExp)):
                current = parent
            elif isinstance(parent, (cst.ComparisonTarget, cst.Comparison)):
                comparison = parent if isinstance(parent, cst.Comparison) else self.ctx.parent(parent)
                return None if self._is_none_test(current) else comparison
            elif isinstance(parent, cst.Arg):
                call = self.ctx.parent(parent)
                if not isinstance(call, cst.Call) or self.ctx.qualified_name(call.func) in CLIP_FUNCTIONS:
                    return None
                name = _call_name(call)
                if name in _INSPECTING_CALLS:
                    return call
                if name not in _PASSING_CALLS:
                    return None
                current = call
            elif isinstance(parent, (cst.Element, cst.StarredElement, cst.DictElement)):
                current = self.ctx.parent(parent) or parent
            elif isinstance(parent, (cst.List, cst.Tuple, cst.Set, cst.Dict)) or (
                isinstance(parent, (cst.ListComp, cst.GeneratorExp, cst.SetComp)) and parent.elt is current
            ):
                current = parent
            elif isinstance(parent, cst.FormattedStringExpression):
                return self.ctx.parent(parent)
            else:
                return None
        return None
