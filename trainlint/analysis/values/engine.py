"""The value-flow engine: what may an expression be? One question, asked by every analysis and rule.

``flow = ctx.get(ValueFlow)``; ``flow.values(expr)`` answers with :class:`Values` for any
expression of the file. The engine follows, within the file and across the project's files:

- local names through the bindings that reach them (:mod:`.scopes`), without the tensors a false
  ``isinstance(x, torch.Tensor)`` rules out (:mod:`.narrowing`), module globals read in
  functions, names of enclosing functions (closures), imports between the project's modules;
- ``self.x`` from every method of the class and its bases, ``self.x = param`` through the
  parameter's default and the arguments at the constructor's call sites (:mod:`.classes`);
- parameters from every call site in the project (positional, keyword, defaults,
  ``functools.partial``), return values through one summary per function, tuple unpacking,
  literals, and iteration over containers of known values (:mod:`.calls`);
- torch: constructors, wrappers, ``.cuda()``, ``accelerator.prepare``, probabilities and
  log-probabilities through shape-only operations, module calls, a model's ``forward``
  (:mod:`.torch_calls`); the gradients a registered gradient hook receives (:mod:`.hooks`).

Answers are cached per expression; a function's summary is computed once. Recursion and cycles
end in "unknown" (:mod:`.guard`); unknown stays unknown, and rules that need to be sure ask
``values.must(...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.autograd import AutogradMixin
from trainlint.analysis.values.calls import CallsMixin
from trainlint.analysis.values.classes import ClassesMixin
from trainlint.analysis.values.domain import (
    NOTHING,
    UNKNOWN,
    Facts,
    Evidence,
    ClassRef,
    Collection,
    Constant,
    FunctionRef,
    Param,
    Parameters,
    Site,
    Tensor,
    Value,
    Values,
    number,
)
from trainlint.analysis.values.guard import Dependency
from trainlint.analysis.values.scopes import ITEM, Binding, PathStep, Scope, Scopes, target_paths
from trainlint.analysis.values.hooks import GradientHooksMixin
from trainlint.analysis.values.narrowing import Narrowing, is_tensor
from trainlint.analysis.values.torch_calls import TorchCallsMixin
from trainlint.analysis.values.torch_semantics import LOWERCASE_CLASSES

if TYPE_CHECKING:
    from trainlint.context import FileContext

_LITERAL_NAMES = {"True": True, "False": False, "None": None}


class ValueFlow(CallsMixin, ClassesMixin, TorchCallsMixin, AutogradMixin, GradientHooksMixin):
    """The engine for one module (``ctx.get(ValueFlow)``); it asks the engines of other modules
    of the project (``ctx.project``) for what is defined there."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.scopes = ctx.get(Scopes)
        self.guard = ctx.project.evaluation
        self.prefix = ctx.module_name or "__main__"
        self._memo: dict[tuple[cst.CSTNode, bool], tuple[Values, frozenset[Dependency]]] = {}
        self._reading_variables: set[str] = set()  # module_variable's questions under way (cycles)
        self.narrowing = Narrowing(ctx)
        self._init_calls()
        self._init_classes()
        self._init_autograd()
        self._init_hooks()

    # -- the question ------------------------------------------------------------------------
    def values(self, expr: cst.BaseExpression) -> Values:
        """What ``expr`` may be, wherever it runs: parameters are the arguments of every call."""
        return self.evaluate(expr, symbolic=False)

    def evaluate(self, expr: cst.BaseExpression, symbolic: bool) -> Values:
        """``symbolic``: parameters of the function stay :class:`Param` (for summaries)."""
        return self.guard.answer(
            ("expr", id(expr), symbolic), self._memo, (expr, symbolic), lambda: self._compute(expr, symbolic), NOTHING
        )

    def site(self, node: cst.CSTNode) -> Site:
        return Site(self.ctx, node)

    def _compute(self, expr: cst.BaseExpression, symbolic: bool) -> Values:
        if isinstance(expr, cst.Name):
            return self._name(expr, symbolic)
        if isinstance(expr, cst.Attribute):
            return self._attribute(expr, symbolic)
        if isinstance(expr, cst.Call):
            return self.call_values(expr, symbolic)
        if isinstance(expr, (cst.Integer, cst.Float)):
            try:
                return Values.of(Constant(expr.evaluated_value))
            except (ValueError, OverflowError):
                return UNKNOWN
        if isinstance(expr, cst.SimpleString):
            value = expr.evaluated_value
            return Values.of(Constant(value)) if isinstance(value, str) else UNKNOWN
        if isinstance(expr, cst.UnaryOperation):
            return self._unary(expr, symbolic)
        if isinstance(expr, cst.BinaryOperation):
            return self.binary_values(expr, symbolic)
        if isinstance(expr, cst.BooleanOperation):
            right = self.evaluate(expr.right, symbolic)
            return self.evaluate(expr.left, symbolic) | right if isinstance(expr.operator, cst.Or) else right
        if isinstance(expr, cst.IfExp):
            return self.evaluate(expr.body, symbolic) | self.evaluate(expr.orelse, symbolic)
        if isinstance(expr, (cst.Tuple, cst.List)):
            return self._sequence(expr, symbolic)
        if isinstance(expr, cst.Dict):
            return self._dict(expr, symbolic)
        if isinstance(expr, cst.Subscript):
            return self._subscript(expr, symbolic)
        if isinstance(expr, (cst.ListComp, cst.GeneratorExp, cst.SetComp)):
            return self._comprehension(expr, symbolic)
        if isinstance(expr, cst.NamedExpr):
            return self.evaluate(expr.value, symbolic)
        if isinstance(expr, cst.Comparison):
            # a bool (or a tensor of bools, ``x < n``): nothing flows back through it
            return Values.of(Facts(detached=True))
        return UNKNOWN

    # -- names ---------------------------------------------------------------------------------
    def _name(self, name: cst.Name, symbolic: bool) -> Values:
        if name.value in _LITERAL_NAMES:
            return Values.of(Constant(_LITERAL_NAMES[name.value]))
        receiver = self.receiver_value(name)
        if receiver is not None:
            return receiver
        comprehension = self._comprehension_binding(name)
        if comprehension is not None:
            source, path = comprehension
            return self.element(self.evaluate(source, symbolic), path)
        lambda_ = self.enclosing_lambda_parameter(name)
        if lambda_ is not None:  # a lambda's parameter: what calls it passes (a gradient hook's gradient)
            return self.lambda_parameter_values(lambda_, name.value)
        parameter = self.ctx.parent(name)
        scope = self.scopes.scope_of(name)
        if isinstance(parameter, cst.Param):  # a parameter's own name: its function's binding
            scope = self.ctx.enclosing(parameter, cst.FunctionDef) or scope
        own = next((b for b in self.scopes.records(scope).get(name.value, ()) if b.target is name), None)
        if own is not None:  # the target of a binding: the value it is given there
            return self.binding_values(own, symbolic)
        reaching = self.scopes.reaching(name, scope)
        parts = [self._narrowed(self.binding_values(b, symbolic), b, name) for b in reaching.bindings]
        if reaching.unresolved and not (reaching.bindings and self.scopes.binds_locally(scope, name.value)):
            # No binding of the scope reaches: a global or a closure's name. (When some do, the
            # rest of the paths leave it unbound, which raises: no value comes from them.)
            parts.append(self._outer_name(name.value, scope))
        return Values.union(parts) if parts else UNKNOWN

    def _narrowed(self, values: Values, binding: Binding, read: cst.Name) -> Values:
        """Without the tensors where a false ``isinstance(name, torch.Tensor)`` stands between."""
        if not values.may(is_tensor) or not self.narrowing.not_a_tensor(binding, read):
            return values
        return values.without(is_tensor)

    def binding_values(self, binding: Binding, symbolic: bool) -> Values:
        """What one binding of a name gives it; a value the code backpropagates (itself or as a
        term of the loss) is also known to be attached to its graph."""
        values = self._binding_values(binding, symbolic)
        backward = self.backpropagated(binding)
        if backward is None:
            return values
        return values | Values.of(Facts(attached=True).with_evidence(Evidence("backpropagated", self.site(backward))))

    def _binding_values(self, binding: Binding, symbolic: bool) -> Values:
        if binding.kind in ("assign", "annotated", "walrus") and binding.value is not None:
            return self.evaluate(binding.value, symbolic)
        if binding.kind == "parameter":
            function = self.ctx.enclosing(binding.statement, cst.FunctionDef)
            if function is None:
                return UNKNOWN
            if symbolic:
                return Values.of(Param(function=function, name=binding.name))
            return self.parameter_values(function, binding.name)
        if binding.kind != "opaque":
            return UNKNOWN  # `x += v`: a new value computed from the old
        if binding.source is not None:
            return self.element(self.evaluate(binding.source, symbolic), binding.path)
        statement = binding.statement
        if isinstance(statement, (cst.Import, cst.ImportFrom)):  # this statement's import of the name
            qualified = dict(self.ctx.imports.names_bound_by(statement)).get(binding.name)
            return self.named(qualified) if qualified else UNKNOWN
        if isinstance(statement, cst.FunctionDef):
            return Values.of(FunctionRef(self.qualified_of(statement), self.site(statement)))
        if isinstance(statement, cst.ClassDef):
            return Values.of(ClassRef(self.qualified_of(statement), self.site(statement)))
        return UNKNOWN

    def _outer_name(self, name: str, scope: Scope) -> Values:
        """A name the scope does not bind: an enclosing function's (a closure sees whichever
        binding ran last: all of them), then the module's, else unknown (a builtin)."""
        node: cst.CSTNode = scope
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, cst.FunctionDef):
                found = self.scopes.records(ancestor).get(name)
                if found:
                    return Values.union(self.binding_values(b, False) for b in found)
        if isinstance(scope, cst.Module):
            return UNKNOWN
        found = self.scopes.records(self.ctx.module).get(name)
        if found:
            return Values.union(self.binding_values(b, False) for b in found)
        return UNKNOWN

    def _comprehension_binding(self, name: cst.Name) -> tuple[cst.BaseExpression, tuple[PathStep, ...]] | None:
        """For a name bound by a comprehension around it: the iterable and the element path."""
        for ancestor in self.ctx.ancestors(name):
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef, cst.Module)):
                return None
            if isinstance(ancestor, (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp)):
                comp_for: cst.CompFor | None = ancestor.for_in
                while comp_for is not None:
                    for target, path in target_paths(comp_for.target, (ITEM,)):
                        if isinstance(target, cst.Name) and target.value == name.value and target is not name:
                            return comp_for.iter, path
                    comp_for = comp_for.inner_for_in
        return None

    def named(self, qualified: str) -> Values:
        """A name imported or defined at module level, by its qualified name: a class or function
        of this module or of the project (with its definition), or a library name."""
        found = self.definition(qualified)
        if found is not None:
            flow, node = found
            if isinstance(node, cst.ClassDef):
                return Values.of(ClassRef(flow.qualified_of(node), flow.site(node)))
            return Values.of(FunctionRef(flow.qualified_of(node), flow.site(node)))
        variable = self.module_variable(qualified)
        if variable is not None:
            return variable
        tail = qualified.rpartition(".")[2]
        if tail[:1].isupper() or qualified in LOWERCASE_CLASSES:
            return Values.of(ClassRef(qualified))
        return Values.of(FunctionRef(qualified))

    # -- attributes ----------------------------------------------------------------------------
    def _attribute(self, expr: cst.Attribute, symbolic: bool) -> Values:
        qualified = self.ctx.qualified_name(expr)
        if qualified is not None:
            return self.named(qualified)
        if expr.attr.value == "grad":
            return Values.of(Tensor("grad", self.site(expr)))
        receiver = self.evaluate(expr.value, symbolic)
        if expr.attr.value in ("data", "T", "mT") and receiver.must(lambda v: isinstance(v, Tensor)):
            return receiver
        return receiver.map(lambda value: self.attribute_of(value, expr.attr.value))

    # -- operators -----------------------------------------------------------------------------
    def _unary(self, expr: cst.UnaryOperation, symbolic: bool) -> Values:
        inner = self.evaluate(expr.expression, symbolic)
        if isinstance(expr.operator, (cst.Minus, cst.Plus)) and inner.must(lambda v: number(v) is not None):
            sign = -1 if isinstance(expr.operator, cst.Minus) else 1
            return Values.union(Values.of(Constant(sign * (number(v) or 0.0))) for v in inner)
        if isinstance(expr.operator, cst.Not) and inner.must(lambda v: isinstance(v, Constant)):
            return Values.union(Values.of(Constant(not v.value)) for v in inner)  # type: ignore[attr-defined]
        return UNKNOWN

    def binary_values(self, expr: cst.BinaryOperation, symbolic: bool) -> Values:
        left = self.evaluate(expr.left, symbolic)
        right = self.evaluate(expr.right, symbolic)
        tensor = self.tensor_arithmetic(expr.operator, left, right)
        if tensor is not None:
            return tensor
        numbers = [v for side in (left, right) for v in side if number(v) is not None]
        if left and right and len(numbers) == len(left) + len(right) and len(left) * len(right) <= 8:
            results = [_arithmetic(expr.operator, number(a), number(b)) for a in left for b in right]
            if all(r is not None for r in results):
                # what is unknown of either side (a default of a class built elsewhere) stays so
                rest = Values((), left.unknown or right.unknown, left.untraced or right.untraced)
                return Values.of(*(Constant(r) for r in results)) | rest
        if isinstance(expr.operator, cst.Add) and left and right and not (left.unknown or right.unknown):
            if all(isinstance(v, Collection) for v in (*left, *right)):
                items = Values.union(c.every_item() for c in (*left.of_type(Collection), *right.of_type(Collection)))
                return Values.of(Collection("list", (items,), homogeneous=True))
        return UNKNOWN

    # -- literals and containers ------------------------------------------------------------------
    def _sequence(self, expr: cst.Tuple | cst.List, symbolic: bool) -> Values:
        items: list[Values] = []
        starred = False
        for element in expr.elements:
            if isinstance(element, cst.StarredElement):
                starred = True
                items.append(self.iterate(self.evaluate(element.value, symbolic)))
            else:
                items.append(self.evaluate(element.value, symbolic))
        kind = "tuple" if isinstance(expr, cst.Tuple) else "list"
        if starred:  # positions unknown: every item may be anywhere
            return Values.of(Collection(kind, (Values.union(items),) if items else (), homogeneous=True))
        return Values.of(Collection(kind, tuple(items)))

    def _dict(self, expr: cst.Dict, symbolic: bool) -> Values:
        keys: list[str | None] = []
        items: list[Values] = []
        for element in expr.elements:
            if not isinstance(element, cst.DictElement):
                return UNKNOWN  # `**other`
            key = element.key
            keys.append(key.evaluated_value if isinstance(key, cst.SimpleString) else None)  # type: ignore[arg-type]
            items.append(self.evaluate(element.value, symbolic))
        return Values.of(Collection("dict", tuple(items), tuple(keys)))

    def _subscript(self, expr: cst.Subscript, symbolic: bool) -> Values:
        if isinstance(expr.value, cst.Name) and self.narrowing.rewrites_entries_of(expr.value.value):
            # `losses["loss"]` after a loop that rewrote every entry
            reaching = self.scopes.reaching(expr.value)
            stored = None if reaching.unresolved else self.narrowing.rewritten_entries(expr, reaching.bindings)
            if stored is not None:
                return Values.union(self.evaluate(value, symbolic) for value in stored)
        receiver = self.evaluate(expr.value, symbolic)
        index: int | str | None = None
        if len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index):
            key = self.evaluate(expr.slice[0].slice.value, symbolic)
            constants = key.constants() if not key.unknown else []
            if len(constants) == 1 and isinstance(constants[0], (int, str)) and not isinstance(constants[0], bool):
                index = constants[0]

        def pick(value: Value) -> Values:
            if isinstance(value, Collection):
                return value.item(index) if index is not None else value.every_item()
            if isinstance(value, Tensor):
                return Values.of(self.derived_tensor(value, selected=True))
            return Values.of(value) if isinstance(value, Facts) else UNKNOWN

        return receiver.map(pick)

    def _comprehension(self, expr: cst.ListComp | cst.GeneratorExp | cst.SetComp, symbolic: bool) -> Values:
        """``[p for p in xs if ...]`` is a list of the items of ``xs``; other comprehensions build
        values the engine does not follow."""
        element = self.evaluate(expr.elt, symbolic)
        return Values.of(Collection("list", (element,), homogeneous=True))

    # -- unpacking and iteration ----------------------------------------------------------------
    def element(self, values: Values, path: tuple[PathStep, ...]) -> Values:
        """The element at ``path`` of an unpacked value: positions of tuples, ITEM of iterations."""
        for step in path:
            if step == ITEM:
                values = self.iterate(values)
            elif isinstance(step, int):
                values = values.map(lambda v, i=step: v.item(i) if isinstance(v, Collection) and v.kind != "dict" else UNKNOWN)
            else:
                return UNKNOWN
        return values

    def iterate(self, values: Values) -> Values:
        """One item of an iteration over the value (a parameter of ``m.parameters()`` is still
        one of ``m``'s parameters)."""

        def item(value: Value) -> Values:
            if isinstance(value, Collection) and value.kind != "dict":
                return value.every_item()
            return Values.of(value) if isinstance(value, Parameters) else UNKNOWN

        return values.map(item)

    # -- places --------------------------------------------------------------------------------
    def qualified_of(self, definition: cst.FunctionDef | cst.ClassDef) -> str:
        """``module.Outer.method`` for a definition of this module (nested definitions included)."""
        names = [definition.name.value]
        for ancestor in self.ctx.ancestors(definition):
            if isinstance(ancestor, (cst.ClassDef, cst.FunctionDef)):
                names.append(ancestor.name.value)
        return ".".join([self.prefix, *reversed(names)])

    def local_definition(self, path: str) -> cst.ClassDef | cst.FunctionDef | None:
        """The top-level (or nested class) definition ``Outer.Inner`` of this module."""
        body: Iterator[cst.CSTNode] | list[cst.CSTNode] = list(self.ctx.module.body)
        found: cst.ClassDef | cst.FunctionDef | None = None
        for part in path.split("."):
            found = next(
                (s for s in body if isinstance(s, (cst.ClassDef, cst.FunctionDef)) and s.name.value == part), None
            )
            if found is None:
                return None
            body = list(found.body.body) if isinstance(found.body, cst.IndentedBlock) else []
        return found

    def module_variable(self, qualified: str) -> Values | None:
        """A name assigned at the top level of a module of the project (``criterion =
        nn.BCELoss()`` in losses.py): every value it is given there."""
        module, _, name = qualified.rpartition(".")
        flow: ValueFlow | None = self if module == self.prefix else None
        if flow is None:
            project = self.ctx.project
            summary = project.module(module, self.ctx.real_path) if module else None
            ctx = project.context(summary) if summary is not None and name in summary.variables else None
            flow = ctx.get(ValueFlow) if ctx is not None else None
        found = flow.scopes.records(flow.ctx.module).get(name) if flow is not None else None
        if not found or qualified in self._reading_variables:
            # A name bound by importing itself (`from pkg import sub` in pkg/__init__.py names the
            # submodule) or imports that go round in a cycle: no value to follow.
            return None
        self._reading_variables.add(qualified)
        try:
            return Values.union(flow.binding_values(b, False) for b in found)  # type: ignore[union-attr]
        finally:
            self._reading_variables.discard(qualified)

    def definition(self, qualified: str) -> tuple[ValueFlow, cst.ClassDef | cst.FunctionDef] | None:
        """The engine of the module defining ``qualified`` and the definition node, this module
        or another module of the project (through re-exports); None for library names."""
        if qualified.startswith(self.prefix + "."):
            node = self.local_definition(qualified[len(self.prefix) + 1 :])
            if node is not None:
                return self, node
        project = self.ctx.project
        found = project.definition(qualified, self.ctx.real_path)
        if found is None:
            return None
        summary, path = found
        ctx = project.context(summary)
        if ctx is None:
            return None
        flow = ctx.get(ValueFlow)
        node = flow.local_definition(path)
        return (flow, node) if node is not None else None


def _arithmetic(operator: cst.BaseBinaryOp, left: float | None, right: float | None) -> float | None:
    if left is None or right is None:
        return None
    if isinstance(operator, cst.Add):
        return left + right
    if isinstance(operator, cst.Subtract):
        return left - right
    if isinstance(operator, cst.Multiply):
        return left * right
    if isinstance(operator, cst.Divide) and right != 0:
        return left / right
    if isinstance(operator, cst.Power):
        try:
            return float(left**right)
        except (OverflowError, ZeroDivisionError):
            return None
    return None
