"""Small questions about code that the step analysis asks everywhere (what a call is named, which
targets an assignment binds, the order an expression evaluates in)."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.context import child_nodes, descendants


def _body(scope: cst.CSTNode) -> cst.CSTNode:
    """What runs when a function is called; for a script (a Module), its top-level code."""
    return scope.body if isinstance(scope, cst.FunctionDef) else scope  # type: ignore[return-value]


def _descendants(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (not ``node`` itself), nested function and class bodies excluded."""
    return descendants(node, enter_scopes=False)


def _call_name(call: cst.Call) -> str | None:
    """``isnan`` for ``torch.isnan(...)``, ``log`` for ``self.log(...)``, ``print`` for ``print``."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def _last_part(text: str) -> str:
    return text.rsplit(".", 1)[-1]


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _keyword(call: cst.Call, name: str) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    return None


# Objects whose ``.backward(loss)`` runs the loss's backward and leaves the optimizer step to the
# caller: Accelerate's ``Accelerator`` and Lightning's ``Fabric``, by the names their docs use.
# (A DeepSpeed engine's ``backward`` is not one: its ``engine.step()`` steps and zeroes itself.)
_FRAMEWORK_BACKWARD_OWNERS = ("accelerator", "fabric")


def _is_framework_backward(receiver: str, method: str) -> bool:
    if method == "manual_backward":  # LightningModule.manual_backward(loss)
        return receiver == "self"
    return receiver.rpartition(".")[2].lower() in _FRAMEWORK_BACKWARD_OWNERS


def _first_positional(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is None and not arg.star:
            return arg.value
        break
    return None


def _parameters(function: cst.FunctionDef) -> list[cst.Param]:
    params = function.params
    return [*params.posonly_params, *params.params, *params.kwonly_params]


def _is_static(function: cst.FunctionDef) -> bool:
    return any(isinstance(d.decorator, cst.Name) and d.decorator.value == "staticmethod" for d in function.decorators)


def _params_of(constructor: cst.Call) -> cst.BaseExpression | None:
    """The parameters an optimizer constructor is given (``params=`` or its first argument)."""
    return _keyword(constructor, "params") or _first_positional(constructor)


def _is_grad(expr: cst.BaseExpression) -> bool:
    """``p.grad`` or ``p.grad.data`` (``p.data`` is the parameter itself)."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "data":
        expr = expr.value
    return isinstance(expr, cst.Attribute) and expr.attr.value == "grad"


def _grad_targets(target: cst.BaseExpression) -> list[cst.Attribute]:
    """The ``x.grad`` attributes an assignment or ``del`` target names (also inside tuples)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return [g for element in target.elements for g in _grad_targets(element.value)]
    return [target] if isinstance(target, cst.Attribute) and target.attr.value == "grad" else []


def _bound_texts(target: cst.BaseExpression) -> Iterator[str]:
    if isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _bound_texts(element.value)
        return
    text = dotted_name(target)
    if text is not None:
        yield text


def _evaluation_order(expr: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Calls, attributes and names of an expression, operands before the operation (a call's
    receiver and arguments before the call); lambdas and nested scopes are not entered.
    Iterative, so a long chain such as ``a + b + ... + z`` cannot exhaust the stack."""
    stack: list[tuple[cst.CSTNode, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        if isinstance(node, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            continue
        if isinstance(node, (cst.Call, cst.Attribute, cst.Name)):
            stack.append((node, True))
        stack.extend((child, False) for child in reversed(child_nodes(node)))


def _assigned_names(node: cst.CSTNode) -> set[str]:
    """The names and attribute chains that code under ``node`` assigns (``x = ``, ``self.a += ``,
    ``for i, b in``, ``with ... as f``, ``(n := ...)``), nested functions and classes excluded."""
    assigned: set[str] = set()
    for current in (node, *_descendants(node)):
        targets: list[cst.BaseExpression] = []
        if isinstance(current, cst.Assign):
            targets = [t.target for t in current.targets]
        elif isinstance(current, (cst.AugAssign, cst.AnnAssign, cst.For, cst.NamedExpr)):
            targets = [current.target]
        elif isinstance(current, cst.AsName):
            targets = [current.name]  # type: ignore[list-item]
        for target in targets:
            assigned.update(_bound_texts(target))
    return assigned
