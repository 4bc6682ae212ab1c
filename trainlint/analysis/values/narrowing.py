"""Type tests that narrow what a name may be: where ``isinstance(v, torch.Tensor)`` was false,
``v`` is not a tensor.

Utility code accepts numbers and tensors alike and converts by type::

    def add(self, v):
        if isinstance(v, Variable):   # true for every tensor
            v = v.data.sum()
        elif isinstance(v, torch.Tensor):
            v = v.sum()
        self.sum += v                 # a tensor passed in never gets here unconverted

Without the test the engine would let a loss passed to ``add`` reach ``self.sum`` through the
``elif`` branch and through the fall-through path. The answer for a name drops the tensors a
binding gives it when every path from that binding to the read passes a false tensor test of the
name: the read is in the ``elif``/``else`` (or ``if not isinstance(...)``) branch of a test made
after the binding, or follows an ``if``/``elif`` chain of such tests each of whose branches
rebinds the name or leaves (``return``, ``raise``, ``continue``, ``break``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.domain import Facts, Tensor, Value

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


class TensorTests:
    """The tensor tests of one module: which names are tested, and where a read is past a false one."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self._tested: set[str] | None = None

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
        statements = list(block.body)
        end = next((i for i, s in enumerate(statements) if s is child), None)
        if end is None:
            return False
        start = next((i + 1 for i, s in enumerate(statements[:end]) if self._holds(s, binding)), 0)
        return any(self._tensor_chain_settles(s, name) for s in statements[start:end] if isinstance(s, cst.If))

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
