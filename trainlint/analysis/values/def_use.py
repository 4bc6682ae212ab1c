"""Def-use questions about names in one scope, for every analysis and rule: which loads a binding
reaches, what a value is computed from, whether it comes from before a block. Analyses ask these
(as methods of :class:`~trainlint.analysis.values.scopes.Scopes`); none walks a scope's names or
follows reaching bindings itself.

- ``uses_of(statement, name)``: the loads of ``name`` that the binding made by ``statement``
  reaches (``x = v`` reaches the reads of ``x`` until it is rebound on every path).
- ``assigned_values(use)``: the whole values assigned by the bindings that reach a load, or None
  when one of them is not an assignment of a whole value (a parameter, ``x += v``, unpacking, a
  loop variable).
- ``only_parameters(use)``: every binding that reaches the load is a parameter of its function.
- ``carried_into(use, block)``: the value a load reads may have been made before ``block`` ran
  (before a loop's body, or in its previous iteration), not rebound in it on every path.
- ``computed_from(expr, depth)``: what a value is computed from, nearest first: the expression,
  its operands, and what the bindings reaching the names among them give, a few bindings deep.
  It knows apex: the name of ``with amp.scale_loss(loss, optimizer) as scaled:`` is ``loss``
  times the loss scale (:data:`~.torch_semantics.LOSS_SCALING_CONTEXTS`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.torch_semantics import LOSS_SCALING_CONTEXTS

if TYPE_CHECKING:
    from trainlint.analysis.values.scopes import Binding, Scopes

# Binding kinds whose value is the whole new value of the name (``x = v``, ``x: T = v``, ``(x := v)``).
_WHOLE_VALUES = frozenset({"assign", "annotated", "walrus"})


class DefUseMixin:
    def uses_of(self: Scopes, statement: cst.CSTNode, name: str) -> list[cst.Name]:
        """The loads of ``name`` (in the scope of ``statement``, nested lambdas and comprehensions
        included) that a binding of ``name`` made by ``statement`` may give their value, in source
        order. A later rebinding of the name is not a use; ``x += 1`` and ``del x`` are."""
        owner = self._ctx.enclosing(statement, cst.FunctionDef) if isinstance(statement, cst.Param) else None
        flow = self._flow(owner or self.scope_of(statement))  # a parameter is its function's
        return [
            use for use in flow.loads.get(name, [])
            if not flow.shadowed(use) and any(b.statement is statement for b in flow.reaching(use).bindings)
        ]

    def assigned_values(self: Scopes, use: cst.Name) -> tuple[cst.BaseExpression, ...] | None:
        """What each binding reaching the load assigns, when every one assigns a whole value
        (``x = v``, ``x: T = v``, ``(x := v)``); None when one does not (a parameter, ``x += v``,
        unpacking, a loop variable); empty when none reaches (the value comes from outside the
        scope: a global, an import, a closure's name). Paths on which a name the scope binds is
        unbound raise, so they add nothing."""
        bindings = self.reaching(use).bindings
        if any(b.kind not in _WHOLE_VALUES or b.value is None for b in bindings):
            return None
        return tuple(b.value for b in bindings if b.value is not None)

    def only_parameters(self: Scopes, use: cst.Name) -> bool:
        """Every binding that reaches the load is a parameter of its function (the input as
        given), and some does."""
        bindings = self.reaching(use).bindings
        return bool(bindings) and all(b.kind == "parameter" for b in bindings)

    def carried_into(self: Scopes, use: cst.Name, block: cst.CSTNode) -> bool:
        """The value the load reads may come from before ``block`` started: a binding reaching it
        lies outside the block (before a loop, a parameter), or none reaches on some path (a
        global, a name bound only later in a loop: its previous iteration). False when the
        block rebinds the name on every path to the load (``loss = f(x)`` earlier in the same
        iteration, on each branch of an if/else)."""
        flow = self._flow(self.scope_of(use))
        if use not in flow.enter or block not in flow.enter:
            return True
        reaching = flow.reaching(use)
        return reaching.unresolved or any(not flow.contains(block, b.anchor) for b in reaching.bindings)

    def computed_from(self: Scopes, expr: cst.BaseExpression, depth: int) -> Iterator[cst.CSTNode]:
        """What ``expr``'s value is computed from, each node once, nearest first: the expression
        and its operands (through arithmetic, unary signs, subscripts, attribute and method
        receivers: ``(loss / k).mean()``; not into the arguments of calls), and for each name
        among them, up to ``depth`` bindings deep, what the bindings reaching it give: the
        assigned value (followed the same way), the loss that apex's ``amp.scale_loss`` scales,
        the call a name is unpacked from (``loss, correct = forward_pass(...)``), and the
        statement itself for an in-place update ``x op= v`` (whose operand ``v`` is not
        what ``x`` is: it is not followed)."""
        seen: set[int] = set()
        queue: deque[tuple[cst.CSTNode, int]] = deque([(expr, depth)])
        while queue:  # breadth first: a node is met first where the most depth is left
            root, left = queue.popleft()
            for node in _operands(root):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                yield node
                if not isinstance(node, cst.Name) or left <= 0:
                    continue
                for binding in self.reaching(node).bindings:
                    if binding.kind == "augmented":
                        queue.append((binding.statement, 0))
                        continue
                    source = _whole_value(binding)
                    if source is None and binding.kind == "opaque" and isinstance(binding.source, cst.Call):
                        source = binding.source  # `loss, correct = forward_pass(...)`: computed by the call
                    if source is not None:
                        queue.append((source, left - 1))


def _whole_value(binding: Binding) -> cst.BaseExpression | None:
    """The expression whose value the binding gives the name, where it is one: ``v`` of
    ``x = v``; ``loss`` of ``with amp.scale_loss(loss, opt) as x:`` (the loss times the scale)."""
    if binding.kind in _WHOLE_VALUES:
        return binding.value
    statement = binding.statement
    if not isinstance(statement, cst.With):
        return None
    for item in statement.items:
        call = item.item
        asname = item.asname.name if item.asname is not None else None
        if isinstance(asname, cst.Name) and asname.value == binding.name and isinstance(call, cst.Call) and call.args:
            func = call.func
            tail = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else None
            if tail in LOSS_SCALING_CONTEXTS:
                return call.args[0].value
    return None


def _operands(expr: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """The expression and the operands its value is computed from, through unary signs,
    subscripts, attribute receivers and method receivers; not into calls' arguments."""
    stack: list[cst.CSTNode] = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, cst.BinaryOperation):
            stack += [node.left, node.right]
        elif isinstance(node, cst.UnaryOperation):
            stack.append(node.expression)
        elif isinstance(node, (cst.Subscript, cst.Attribute)):
            stack.append(node.value)
        elif isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
            stack.append(node.func.value)
