"""Which bindings hold a tensor attached to an autograd graph, for the engine.

Whether a value still carries its graph cannot be read from how it was produced (a custom loss
function, a model's output: the engine sees neither's internals), but the code says it where it
backpropagates: a value that ``.backward()`` is called on holds a graph, and so do the terms it
was summed or multiplied from. The evidence, per scope:

- the roots: ``x.backward()``, ``scaler.scale(x).backward()``, ``accelerator.backward(x)``
  (``fabric``, ``self.manual_backward``), ``torch.autograd.backward(x)``,
  ``torch.autograd.grad(x, ...)``, and what a ``training_step`` method returns (Lightning
  backpropagates it: ``return loss``, ``return {"loss": loss}``);
- from a root, the names it is computed from through ``+ - * /`` (a factor multiplying a
  function's result is a weight and is left out: ``-log_prob(a) * reward``), unary minus, reductions and
  reshapes (``loss.mean()``), subscripts (``losses["total"]``) and the previous value of an
  augmented name (``loss += aux``), followed through their reaching bindings in the scope.

The engine adds :class:`~trainlint.analysis.values.domain.Facts` ``attached`` (with the backward
call as evidence) to what those bindings give (:meth:`AutogradMixin.backpropagated`). A term known
to be detached or a number stays what it is: the fact is added, the rest of the answer is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.scopes import Binding, Scope

if TYPE_CHECKING:
    from trainlint.analysis.values.engine import ValueFlow

# Objects whose ``.backward(loss)`` backpropagates ``loss`` (Accelerate, Fabric), by the names
# their documentation uses; Lightning's ``self.manual_backward(loss)``.
_BACKWARD_OWNERS = ("accelerator", "fabric")
_ROOT_FUNCTIONS = frozenset({"torch.autograd.backward", "torch.autograd.grad"})
# Methods whose result keeps the graph of their receiver (a term of the loss stays one).
_KEEPING_METHODS = frozenset({
    "mean", "sum", "float", "double", "half", "to", "cuda", "squeeze", "unsqueeze", "view", "reshape",
    "flatten", "contiguous", "clone",
})
# How code spells a backward (for the project's text index of callers).
_ROOT_WORDS = (b"backward(", b"manual_backward(", b".grad(")
_TERM_OPERATORS = (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)
_MAX_DEPTH = 8


class AutogradMixin:
    def _init_autograd(self: ValueFlow) -> None:
        self._backpropagated: dict[Scope, dict[Binding, cst.CSTNode]] = {}
        self._roots_by_scope: dict[Scope, list[tuple[cst.BaseExpression, cst.CSTNode]]] | None = None
        self._backpropagates: bool | None = None

    def backpropagated(self: ValueFlow, binding: Binding) -> cst.CSTNode | None:
        """The backward (or ``return`` of a ``training_step``) through which the value this
        binding gives is backpropagated, itself or as a term of the loss; None when none is."""
        scope = self.scopes.scope_of(binding.statement) if binding.kind != "parameter" else self.ctx.enclosing(
            binding.statement, cst.FunctionDef
        )
        if scope is None:
            return None
        found = self._backpropagated.get(scope)
        if found is None:
            found = self._backpropagated[scope] = self._bindings_backpropagated(scope)
        return found.get(binding)

    def may_hold_graphs(self: ValueFlow, node: cst.CSTNode) -> bool:
        """Whether values at ``node`` may be known to be attached to a graph: its module
        backpropagates something (a backward root, or a Lightning ``training_step`` that returns
        its loss), or it is in a function that a function which backpropagates calls by name (a
        metrics helper handed the loss). Elsewhere no ``attached`` fact can arise: the question
        that would follow every parameter to its callers need not be asked."""
        if self._backpropagates is None:
            self._backpropagates = bool(self._roots()) or any(
                next(_returned_roots(self, function), None) is not None for function in self.ctx.nodes.of(cst.FunctionDef)
            )
        if self._backpropagates:
            return True
        function = self.scopes.function_of(node)
        return function is not None and function.name.value in self.ctx.project.functions_called_by(_ROOT_WORDS)

    def _roots(self: ValueFlow) -> dict[Scope, list[tuple[cst.BaseExpression, cst.CSTNode]]]:
        if self._roots_by_scope is None:  # one walk over the file's calls, not one per scope
            self._roots_by_scope = {}
            for root, site in _backward_roots(self):
                self._roots_by_scope.setdefault(self.scopes.scope_of(site), []).append((root, site))
        return self._roots_by_scope

    def _bindings_backpropagated(self: ValueFlow, scope: Scope) -> dict[Binding, cst.CSTNode]:
        marked: dict[Binding, cst.CSTNode] = {}
        for root, site in (*self._roots().get(scope, ()), *_returned_roots(self, scope)):
            self._mark_terms(root, site, scope, marked, _MAX_DEPTH)
        return marked

    def _mark_terms(
        self: ValueFlow, expr: cst.BaseExpression, site: cst.CSTNode, scope: Scope, marked: dict[Binding, cst.CSTNode], depth: int
    ) -> None:
        if depth <= 0:
            return
        for name in _term_names(expr):
            if self.scopes.scope_of(name) is not scope:
                continue
            for binding in self.scopes.reaching(name, scope).bindings:
                if binding in marked:
                    continue
                marked[binding] = site
                if binding.value is not None and binding.kind in ("assign", "annotated", "walrus", "augmented"):
                    self._mark_terms(binding.value, site, scope, marked, depth - 1)
                if binding.kind == "augmented":  # `loss += aux`: the loss before it is a term too
                    self._mark_terms(binding.target, site, scope, marked, depth - 1)


def _backward_roots(flow: ValueFlow) -> Iterator[tuple[cst.BaseExpression, cst.CSTNode]]:
    """Each expression the file backpropagates, with the call that does it."""
    for call in flow.ctx.nodes.of(cst.Call):
        root = _backpropagated_by(flow.ctx, call)
        if root is not None:
            yield root, call


def _returned_roots(flow: ValueFlow, scope: Scope) -> Iterator[tuple[cst.BaseExpression, cst.CSTNode]]:
    """What a Lightning ``training_step`` returns, with the ``return``: Lightning backpropagates it."""
    ctx = flow.ctx
    if isinstance(scope, cst.FunctionDef) and scope.name.value == "training_step" and flow.enclosing_class(scope):
        for node in ctx.nodes.of(cst.Return):
            if node.value is not None and flow.scopes.scope_of(node) is scope:
                yield _returned_loss(node.value), node


def _backpropagated_by(ctx, call: cst.Call) -> cst.BaseExpression | None:  # type: ignore[no-untyped-def]
    func = call.func
    positional = [a.value for a in call.args if a.keyword is None and not a.star]
    if ctx.qualified_name(func) in _ROOT_FUNCTIONS:
        return positional[0] if positional else None
    if not isinstance(func, cst.Attribute) or func.attr.value not in ("backward", "manual_backward"):
        return None
    receiver = func.value
    if func.attr.value == "manual_backward" or (
        positional and isinstance(receiver, (cst.Name, cst.Attribute)) and _names_an_owner(receiver)
    ):
        return positional[0] if positional else None
    if isinstance(receiver, cst.Call) and isinstance(receiver.func, cst.Attribute) and receiver.func.attr.value == "scale":
        inner = [a.value for a in receiver.args if a.keyword is None and not a.star]
        return inner[0] if len(inner) == 1 else receiver  # `scaler.scale(loss).backward()`
    return receiver


def _names_an_owner(receiver: cst.Name | cst.Attribute) -> bool:
    name = receiver.value if isinstance(receiver, cst.Name) else receiver.attr.value
    return name.lower().endswith(_BACKWARD_OWNERS)


def _returned_loss(value: cst.BaseExpression) -> cst.BaseExpression:
    """``loss`` in ``return loss`` and in ``return {"loss": loss, ...}``."""
    if isinstance(value, cst.Dict):
        for element in value.elements:
            if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString):
                if element.key.evaluated_value == "loss":
                    return element.value
    return value


def _term_names(expr: cst.BaseExpression) -> Iterator[cst.Name]:
    """The names an expression is a sum, difference, product or quotient of, through unary
    signs, reductions and reshapes, subscripts and casts (``(a + 0.1 * b.mean()) / k``)."""
    if isinstance(expr, cst.Name):
        yield expr
    elif isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, _TERM_OPERATORS):
        # A factor next to a function's result is a weight, not the graph's carrier:
        # `-dist.log_prob(a) * reward` backpropagates through the log-probability, and the
        # reward (a number from the environment) need not hold any graph.
        weighted = isinstance(expr.operator, cst.Multiply)
        if not (weighted and _computed_by_a_call(expr.right)):
            yield from _term_names(expr.left)
        if not isinstance(expr.operator, cst.Divide) and not (weighted and _computed_by_a_call(expr.left)):
            yield from _term_names(expr.right)  # `loss / accum`: the divisor is no term
    elif isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, (cst.Minus, cst.Plus)):
        yield from _term_names(expr.expression)
    elif isinstance(expr, cst.Subscript):
        yield from _term_names(expr.value)
    elif isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value in _KEEPING_METHODS:
        yield from _term_names(expr.func.value)


def _computed_by_a_call(expr: cst.BaseExpression) -> bool:
    """``f(x)``, ``-dist.log_prob(a)``: a function's result, not a name's value reshaped."""
    while isinstance(expr, cst.UnaryOperation):
        expr = expr.expression
    return isinstance(expr, cst.Call) and not (
        isinstance(expr.func, cst.Attribute) and expr.func.attr.value in _KEEPING_METHODS
    )


__all__ = ["AutogradMixin"]
