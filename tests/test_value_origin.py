"""Where a value comes from inside a function: the shared ValueOrigins analysis."""

from __future__ import annotations

import textwrap

import libcst as cst

from trainlint.analysis.value_origin import ValueOrigins
from trainlint.context import FileContext
from trainlint.project import ProjectIndex
from trainlint.source import SourceText


def _context(code: str) -> FileContext:
    text = textwrap.dedent(code).lstrip("\n")
    return FileContext("t.py", SourceText(text), cst.parse_module(text), ProjectIndex([]))


def _function(ctx: FileContext, name: str) -> cst.FunctionDef:
    return next(f for f in ctx.nodes.of(cst.FunctionDef) if f.name.value == name)


def _returned(ctx: FileContext, function: cst.FunctionDef) -> list[cst.BaseExpression]:
    returns = [r for r in ctx.nodes.of(cst.Return) if ctx.enclosing(r, cst.FunctionDef) is function]
    value = returns[-1].value
    assert value is not None
    return [e.value for e in value.elements] if isinstance(value, cst.Tuple) else [value]


def _origins(ctx: FileContext, function_name: str) -> list[list[str]]:
    """The origins of each returned expression, as code; parameters marked with ``@param``."""
    values = ctx.get(ValueOrigins)
    function = _function(ctx, function_name)
    return [
        [ctx.code(o) + ("@param" if isinstance(ctx.parent(o), cst.Param) else "") for o in values.origins(e, function)]
        for e in _returned(ctx, function)
    ]


def test_bindings_lists_every_simple_assignment_in_the_function() -> None:
    ctx = _context(
        """
        def f(x):
            a = b = x + 1
            c: int = 2
            c += 3
            d, e = x
            if (w := a * 2):
                pass
            return a
        """
    )
    bindings = ctx.get(ValueOrigins).bindings(_function(ctx, "f"))
    assert {k: [ctx.code(v) for v in vs] for k, vs in bindings.items()} == {
        "a": ["x + 1"], "b": ["x + 1"], "c": ["2", "3"], "w": ["a * 2"],
    }


def test_a_later_assignment_in_straight_line_code_hides_the_earlier_one() -> None:
    ctx = _context(
        """
        def forward(self, x):
            out = self.conv1(x)
            out = self.bn(out)
            return out
        """
    )
    assert _origins(ctx, "forward") == [["self.bn(out)"]]


def test_a_conditional_assignment_keeps_the_earlier_value_possible() -> None:
    ctx = _context(
        """
        def forward(self, x):
            identity = x
            if self.downsample is not None:
                identity = self.downsample(x)
            out = self.conv(x)
            return out, identity
        """
    )
    assert _origins(ctx, "forward") == [["self.conv(x)"], ["x@param", "self.downsample(x)"]]


def test_branches_and_loops() -> None:
    ctx = _context(
        """
        def f(xs, flag):
            if flag:
                y = 1
            else:
                y = 2
            total = 0
            for x in xs:
                total = total + x
            return y, total, x
        """
    )
    # y is bound on both branches; after the loop, x may be unbound (empty xs) or the target
    assert _origins(ctx, "f") == [["1", "2"], ["0", "total + x"], ["x", "x"]]
    values = ctx.get(ValueOrigins)
    function = _function(ctx, "f")
    loop_use = next(n for n in values.uses("total", function))
    reaching = values.reaching(loop_use, function)
    assert sorted(ctx.code(b.value) for b in reaching.bindings) == ["0", "total + x"]
    assert not reaching.unresolved


def test_augmented_assignment_adds_its_operand_to_the_earlier_value() -> None:
    ctx = _context(
        """
        def forward(self, x):
            out = self.conv(x)
            out += x
            return out
        """
    )
    assert _origins(ctx, "forward") == [["x@param", "self.conv(x)"]]


def test_globals_unpacking_and_lambdas_are_unresolved_leaves() -> None:
    ctx = _context(
        """
        SCALE = 0.1

        def f(pair):
            a, b = pair
            g = lambda a: a
            return SCALE, a, g
        """
    )
    assert _origins(ctx, "f") == [["SCALE"], ["a"], ["lambda a: a"]]


def test_through_follows_chosen_subexpressions() -> None:
    ctx = _context(
        """
        def f(logits, idx):
            p = logits.softmax(-1)
            q = p[idx]
            return q
        """
    )
    values = ctx.get(ValueOrigins)
    function = _function(ctx, "f")

    def through(expr: cst.BaseExpression):
        return [expr.value] if isinstance(expr, cst.Subscript) else None

    (returned,) = _returned(ctx, function)
    assert [ctx.code(o) for o in values.origins(returned, function, through)] == ["logits.softmax(-1)"]


def test_uses_skip_comprehension_and_lambda_rebindings() -> None:
    ctx = _context(
        """
        def f(p):
            a = [p for p in range(3)]
            b = lambda p: p
            c = p + 1
            p += 2
            return p
        """
    )
    values = ctx.get(ValueOrigins)
    function = _function(ctx, "f")
    uses = values.uses("p", function)
    assert [ctx.code(ctx.parent(u)).strip() for u in uses] == ["p + 1", "p += 2", "return p"]


def test_attribute_values_of_self() -> None:
    ctx = _context(
        """
        import torch.nn as nn

        class Block(nn.Module):
            scale = 1.0

            def __init__(self):
                super().__init__()
                self.residual_scale = 0.1
                self.loss = nn.BCELoss()
                self.a, self.b = 1, 2

            def forward(this, x):
                this.cache = x
                return x
        """
    )
    values = ctx.get(ValueOrigins)
    block = ctx.nodes.of(cst.ClassDef)[0]

    def codes(attr: str) -> list[str] | None:
        found = values.attribute_values(block, attr)
        return None if found is None else [ctx.code(v) for v in found]

    assert codes("residual_scale") == ["0.1"]
    assert codes("loss") == ["nn.BCELoss()"]
    assert codes("scale") == ["1.0"]
    assert codes("cache") == ["x"]
    assert codes("a") is None
    assert codes("missing") == []


def test_later_bindings() -> None:
    ctx = _context(
        """
        def f(logits):
            probs = logits.sigmoid()
            logits = logits * 2
            return probs
        """
    )
    values = ctx.get(ValueOrigins)
    function = _function(ctx, "f")
    sigmoid_call = next(c for c in ctx.nodes.of(cst.Call) if ctx.code(c) == "logits.sigmoid()")
    assert [ctx.code(b.value) for b in values.later_bindings("logits", sigmoid_call, function)] == ["logits * 2"]
    assert values.later_bindings("probs", sigmoid_call, function) != []


def test_an_if_elif_else_chain_binding_every_branch_hides_earlier_values() -> None:
    ctx = _context(
        """
        def f(a):
            y = 0
            if a == 1:
                y = 1
            elif a == 2:
                y = 2
            else:
                y = 3
            z = 0
            if a:
                z = 1
            elif a is None:
                z = 2
            return y, z
        """
    )
    assert _origins(ctx, "f") == [["1", "2", "3"], ["0", "1", "2"]]


def test_top_level_script_code_is_followed_in_the_module_scope() -> None:
    ctx = _context(
        """
        import torch

        model = build()
        for x in loader:
            logits = model(x)
            probs = torch.softmax(logits, dim=1)
            loss = criterion(probs)

        def helper():
            return probs
        """
    )
    values = ctx.get(ValueOrigins)
    probs_in_loop = next(n for n in ctx.nodes.of(cst.Name) if n.value == "probs" and ctx.code(ctx.parent(n)) == "probs")
    assert values.scope_of(probs_in_loop) is ctx.module
    assert [ctx.code(o) for o in values.origins(probs_in_loop)] == ["torch.softmax(logits, dim=1)"]
    assert len(values.uses("probs", ctx.module)) == 2  # the read inside helper() counts too
