"""Whether a value is used only to choose: which indices, which order, which mask.

A cost matrix for label assignment (``cost = cls_cost + 3.0 * -torch.log(iou + 1e-8)``, then
``_, idx = torch.topk(cost, k)``) never reaches a loss: only the indices it ranks do, and they
carry no gradient. A NaN gradient or an overflow of its derivative cannot hurt training there.
The question follows the value through arithmetic, subscripts and names assigned from it (in one
function, a few assignments deep) and answers yes only when every use ends in a comparison, an
index-returning call (``argmin``, ``argsort``), the index half of ``topk``/``min``/``max``/``sort``
(``_, idx = ...``), its shape (``*_like``, ``.shape``, ``.size()``) or a ``del``.
"""

from __future__ import annotations

import libcst as cst

from trainlint.analysis.values import Scopes
from trainlint.context import FileContext

_INDEX_CALLS = frozenset({"argmin", "argmax", "argsort"})
_VALUE_AND_INDEX_CALLS = frozenset({"topk", "min", "max", "sort", "kthvalue"})
_SHAPE_CALLS = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "size", "dim"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})
_MAX_ASSIGNMENTS = 4


def used_only_to_select(ctx: FileContext, expr: cst.BaseExpression, depth: int = 0) -> bool:
    """Every use of ``expr``'s value only chooses indices, an order or a mask."""
    node: cst.CSTNode = expr
    parent = ctx.parent(node)
    while isinstance(parent, (cst.BinaryOperation, cst.UnaryOperation)) or (
        isinstance(parent, cst.Subscript) and parent.value is node
    ):
        node, parent = parent, ctx.parent(parent)
    if isinstance(parent, (cst.Comparison, cst.ComparisonTarget)):
        return True
    if isinstance(parent, cst.Arg):
        call = ctx.parent(parent)
        return isinstance(call, cst.Call) and _selects(ctx, call)
    if isinstance(parent, cst.Attribute) and parent.value is node:
        if parent.attr.value in _SHAPE_ATTRIBUTES:
            return True
        call = ctx.parent(parent)
        return isinstance(call, cst.Call) and call.func is parent and _selects(ctx, call)
    if isinstance(parent, cst.Assign) and depth < _MAX_ASSIGNMENTS:
        targets = parent.targets
        if len(targets) == 1 and isinstance(targets[0].target, cst.Name):
            return _every_use_selects(ctx, parent, targets[0].target, depth + 1)
    return False


def _selects(ctx: FileContext, call: cst.Call) -> bool:
    name = _callee(ctx, call)
    if name in _INDEX_CALLS or name in _SHAPE_CALLS:
        return True
    if name in _VALUE_AND_INDEX_CALLS:
        return _keeps_only_indices(ctx, call)
    return False


def _callee(ctx: FileContext, call: cst.Call) -> str | None:
    qualified = ctx.qualified_name(call.func)
    if qualified is not None:
        return qualified.rpartition(".")[2] if qualified.startswith("torch.") else None
    return call.func.attr.value if isinstance(call.func, cst.Attribute) else None


def _keeps_only_indices(ctx: FileContext, call: cst.Call) -> bool:
    """``_, idx = torch.topk(...)`` or ``torch.min(...)[1]`` / ``.indices``."""
    parent = ctx.parent(call)
    if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
        target = parent.targets[0].target
        if isinstance(target, (cst.Tuple, cst.List)) and target.elements:
            first = target.elements[0].value
            return isinstance(first, cst.Name) and first.value == "_"
    if isinstance(parent, cst.Attribute) and parent.attr.value == "indices":
        return True
    if isinstance(parent, cst.Subscript) and len(parent.slice) == 1:
        index = parent.slice[0].slice
        return isinstance(index, cst.Index) and isinstance(index.value, cst.Integer) and index.value.value == "1"
    return False


def _every_use_selects(ctx: FileContext, assign: cst.Assign, target: cst.Name, depth: int) -> bool:
    uses = ctx.get(Scopes).uses_of(assign, target.value)
    return bool(uses) and all(
        isinstance(ctx.parent(n), cst.Del) or used_only_to_select(ctx, n, depth) for n in uses
    )
