"""What the code did to a name between its binding and a read, besides rebinding it.

Two things the bindings alone do not say:

- **Type tests.** Utility code accepts numbers and tensors alike and converts by type::

      def add(self, v):
          if isinstance(v, Variable):   # true for every tensor
              v = v.data.sum()
          elif isinstance(v, torch.Tensor):
              v = v.sum()
          self.sum += v                 # a tensor passed in never gets here unconverted

  The answer for a name drops the tensors a binding gives it when every path from that binding
  to the read passes a false tensor test of the name: the read is in the ``elif``/``else`` (or
  ``if not isinstance(...)``) branch of a test made after the binding, or follows an
  ``if``/``elif`` chain of such tests each of whose branches rebinds the name or leaves
  (``return``, ``raise``, ``continue``, ``break``).

- **Entries rewritten in place.** ``for key, value in losses.items(): losses[key] = value.item()``
  replaces every entry of the dict; ``losses["loss"]`` read after that loop is what the loop
  stored, not what the dict was built with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.domain import Facts, Tensor, Value
from trainlint.context import child_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext
    from trainlint.analysis.values.scopes import Binding

# ``isinstance(x, T)`` is true for every tensor (``Variable`` has been ``Tensor`` since torch 0.4;
# its isinstance check says so); a subclass such as ``nn.Parameter`` does not narrow a false test.
TENSOR_TYPES = frozenset({"torch.Tensor", "torch.autograd.Variable", "torch.autograd.variable.Variable"})

_LEAVING = (cst.Return, cst.Raise, cst.Continue, cst.Break)
_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda, cst.Module)


def is_tensor(value: Value) -> bool:
    return isinstance(value, (Tensor, Facts))


class Narrowing:
    """Per module: where a read is past a false tensor test, or past a loop rewriting every entry."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self._tested: set[str] | None = None
        self._rewritten: set[str] | None = None

    def not_a_tensor(self, binding: Binding, read: cst.Name) -> bool:
        """Every path on which ``binding`` gives ``read`` its value passes a false tensor test of the name."""
        if read.value not in self._names_tested():
            return False
        child: cst.CSTNode = read
        for ancestor in self.ctx.ancestors(read):
            if isinstance(ancestor, _SCOPES):
                return False
            if isinstance(ancestor, cst.If) and not self._holds(ancestor, binding):
                held = child is ancestor.body  # else the read is in the orelse: the test was false
                if self._tensor_test(ancestor.test, read.value) is (not held):
                    return True
            if isinstance(ancestor, (cst.IndentedBlock, cst.Module)) and self._after_exiting_test(ancestor, child, binding, read.value):
                return True
            child = ancestor
        return False

    # -- the pieces ----------------------------------------------------------------------------
    def rewrites_entries_of(self, name: str) -> bool:
        """Some loop of the module rewrites the dict ``name`` entry by entry (most modules have
        none: asked before the bindings of a subscript's name are looked up)."""
        return name in self._names_rewritten()

    def _names_rewritten(self) -> set[str]:
        if self._rewritten is None:
            self._rewritten = set()
            for loop in self.ctx.nodes.of(cst.For):
                found = _dict_loop(loop)
                if found is not None and _rewrites_every_entry(loop, found[0]) is not None:
                    self._rewritten.add(found[0])
        return self._rewritten

    def _names_tested(self) -> set[str]:
        if self._tested is None:
            self._tested = {
                call.args[0].value.value
                for call in self.ctx.nodes.calls_spelled("isinstance")
                if isinstance(call.func, cst.Name) and len(call.args) == 2 and isinstance(call.args[0].value, cst.Name)
            }
        return self._tested

    def _tensor_test(self, test: cst.BaseExpression, name: str) -> bool | None:
        """True for ``isinstance(name, torch.Tensor)``, False for its negation, else None."""
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            inner = self._tensor_test(test.expression, name)
            return None if inner is None else not inner
        if not (isinstance(test, cst.Call) and isinstance(test.func, cst.Name) and test.func.value == "isinstance"):
            return None
        if len(test.args) != 2 or not (isinstance(test.args[0].value, cst.Name) and test.args[0].value.value == name):
            return None
        types = test.args[1].value
        candidates = [e.value for e in types.elements] if isinstance(types, cst.Tuple) else [types]
        qualify = self.ctx.qualified_name
        return True if any(qualify(t) in TENSOR_TYPES for t in candidates) else None

    def _holds(self, node: cst.CSTNode, binding: Binding) -> bool:
        return any(a is node for a in self.ctx.ancestors(binding.statement)) or binding.statement is node

    def _after_exiting_test(self, block: cst.IndentedBlock | cst.Module, child: cst.CSTNode, binding: Binding, name: str) -> bool:
        """An earlier statement of the block (after the binding, when the binding is in the block)
        is an ``if``/``elif`` chain of positive tensor tests whose every branch rebinds the name or leaves."""
        return any(self._tensor_chain_settles(s, name) for s in self._before_in_block(block, child, binding) if isinstance(s, cst.If))

    def _before_in_block(self, block: cst.IndentedBlock | cst.Module, child: cst.CSTNode, binding: Binding) -> list[cst.BaseStatement]:
        """The statements of the block that run after the binding and before ``child`` (a
        statement of the block) on every path from one to the other."""
        statements = list(block.body)
        end = next((i for i, s in enumerate(statements) if s is child), None)
        if end is None:
            return []
        start = next((i + 1 for i, s in enumerate(statements[:end]) if self._holds(s, binding)), 0)
        return statements[start:end]

    def _passed(self, binding: Binding, read: cst.CSTNode) -> Iterator[cst.BaseStatement]:
        """Statements every path from the binding to the read runs through: earlier statements of
        each block around the read, up to the read's function."""
        child: cst.CSTNode = read
        for ancestor in self.ctx.ancestors(read):
            if isinstance(ancestor, _SCOPES):
                return
            if isinstance(ancestor, (cst.IndentedBlock, cst.Module)):
                yield from self._before_in_block(ancestor, child, binding)
            child = ancestor

    # -- entries rewritten in place ------------------------------------------------------------
    def rewritten_entries(self, read: cst.Subscript, bindings: Iterable[Binding]) -> list[cst.BaseExpression] | None:
        """What ``d[...]`` is when every binding of ``d`` reaches the read only through a loop
        storing into every entry (``for k, v in d.items(): d[k] = v.item()``): the stored
        expressions. None when some binding may reach it unrewritten."""
        name = read.value
        if not isinstance(name, cst.Name) or not self.rewrites_entries_of(name.value):
            return None
        stored: list[cst.BaseExpression] = []
        for binding in bindings:
            found = next((e for s in self._passed(binding, read) if (e := _rewrites_every_entry(s, name.value)) is not None), None)
            if found is None:
                return None
            stored.append(found)
        return stored or None

    def _tensor_chain_settles(self, statement: cst.If, name: str) -> bool:
        branch: cst.If | cst.Else | None = statement
        while isinstance(branch, cst.If):
            if self._tensor_test(branch.test, name) is not True or not _settles(branch.body, name):
                return False
            branch = branch.orelse
        return True


def _settles(body: cst.BaseSuite, name: str) -> bool:
    """The branch rebinds ``name`` in its own statements (not a nested block) or leaves."""
    statements = body.body if isinstance(body, cst.IndentedBlock) else (body,)
    for statement in statements:
        small = statement.body if isinstance(statement, (cst.SimpleStatementLine, cst.SimpleStatementSuite)) else ()
        for line in small:
            if isinstance(line, _LEAVING):
                return True
            if isinstance(line, cst.Assign) and any(isinstance(t.target, cst.Name) and t.target.value == name for t in line.targets):
                return True
    return False


def _rewrites_every_entry(statement: cst.BaseStatement, name: str) -> cst.BaseExpression | None:
    """``for k, v in name.items():`` (or ``in name``, ``in name.keys()``, under ``enumerate``)
    whose body stores ``name[k] = expr`` before anything that may skip the rest of an iteration:
    ``expr``."""
    if not isinstance(statement, cst.For) or statement.orelse is not None:
        return None
    loop = _dict_loop(statement)
    if loop is None or loop[0] != name or not isinstance(statement.body, cst.IndentedBlock):
        return None
    key = loop[1]
    for line in statement.body.body:
        if _may_skip(line):
            return None
        small = line.body if isinstance(line, cst.SimpleStatementLine) else ()
        for assign in small:
            if isinstance(assign, cst.Assign) and len(assign.targets) == 1 and _stores_entry(assign.targets[0].target, name, key):
                return assign.value
    return None


def _dict_loop(loop: cst.For) -> tuple[str, str] | None:
    """The dict a loop runs over and the variable that takes each of its keys: ``for k in d``,
    ``for k in d.keys()``, ``for k, v in d.items()``, under ``enumerate`` or not."""
    iterable, target = loop.iter, loop.target
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) and iterable.func.value == "enumerate":
        if len(iterable.args) != 1 or not (isinstance(target, cst.Tuple) and len(target.elements) == 2):
            return None
        iterable, target = iterable.args[0].value, target.elements[1].value
    method = None
    if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Attribute) and not iterable.args:
        method, iterable = iterable.func.attr.value, iterable.func.value
    if not isinstance(iterable, cst.Name):
        return None
    if method == "items" and isinstance(target, cst.Tuple) and len(target.elements) == 2:
        target = target.elements[0].value
    elif method not in (None, "keys"):
        return None
    return (iterable.value, target.value) if isinstance(target, cst.Name) else None


def _stores_entry(target: cst.BaseExpression, name: str, key: str) -> bool:
    if not (isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name) and target.value.value == name):
        return False
    index = target.slice[0].slice if len(target.slice) == 1 else None
    return isinstance(index, cst.Index) and isinstance(index.value, cst.Name) and index.value.value == key


def _may_skip(statement: cst.BaseStatement) -> bool:
    """The statement may end the iteration early (a ``continue``, ``break``, ``return`` or ``raise`` in it)."""
    stack: list[cst.CSTNode] = [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, _LEAVING):
            return True
        if not isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):  # their returns are their own
            stack.extend(child_nodes(node))
    return False
