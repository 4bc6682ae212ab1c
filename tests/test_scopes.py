"""Names inside one scope, the value-flow engine's first layer: bindings, the bindings that reach
a use, and every load of a name."""

from __future__ import annotations

import textwrap

import libcst as cst

from trainlint.analysis.values import Scopes
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
    """What reaches each returned name, as code: the assigned values (for ``x += v``, ``v`` and
    the earlier values of ``x``), ``name@param`` for a parameter, the name for a binding whose
    value is not an expression (unpacking, a loop), ``name@unresolved`` when it may be unbound or
    global."""
    scopes = ctx.get(Scopes)
    function = _function(ctx, function_name)
    return [_reaching_codes(ctx, scopes, function, e) for e in _returned(ctx, function)]


def _reaching_codes(ctx: FileContext, scopes: Scopes, function: cst.FunctionDef, use: cst.BaseExpression) -> list[str]:
    if not isinstance(use, cst.Name):
        return [ctx.code(use)]
    reaching = scopes.reaching(use, function)
    found: list[str] = []
    for binding in sorted(reaching.bindings, key=lambda b: b.effect):
        if binding.kind == "parameter":
            found.append(f"{binding.name}@param")
        elif binding.kind == "augmented" and binding.value is not None:
            found.append(ctx.code(binding.value))
        elif binding.value is not None:
            found.append(ctx.code(binding.value))
        else:
            found.append(binding.name)
    if reaching.unresolved:
        found.append(f"{use.value}@unresolved")
    return found


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
    bindings = ctx.get(Scopes).bindings(_function(ctx, "f"))
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
    assert _origins(ctx, "forward") == [["self.conv(x)"], ["x", "self.downsample(x)"]]


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
    assert _origins(ctx, "f") == [["1", "2"], ["0", "total + x"], ["x", "x@unresolved"]]
    values = ctx.get(Scopes)
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
    # `out += x`: the right operand, then (reaching the target) what `out` held before
    scopes = ctx.get(Scopes)
    function = _function(ctx, "forward")
    augmented = [b for b in scopes.records(function)["out"] if b.kind == "augmented"]
    assert [ctx.code(b.value) for b in augmented] == ["x"]
    assert _reaching_codes(ctx, scopes, function, augmented[0].target) == ["self.conv(x)"]


def test_globals_are_unresolved_and_unpacking_records_its_source() -> None:
    ctx = _context(
        """
        SCALE = 0.1

        def f(pair):
            a, b = pair
            g = lambda a: a
            return SCALE, a, g
        """
    )
    assert _origins(ctx, "f") == [["SCALE@unresolved"], ["a"], ["lambda a: a"]]
    unpacked = ctx.get(Scopes).records(_function(ctx, "f"))["a"][0]
    assert (ctx.code(unpacked.source), unpacked.path) == ("pair", (0,))


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
    values = ctx.get(Scopes)
    function = _function(ctx, "f")
    uses = values.uses("p", function)
    assert [ctx.code(ctx.parent(u)).strip() for u in uses] == ["p + 1", "p += 2", "return p"]


def test_later_bindings() -> None:
    ctx = _context(
        """
        def f(logits):
            probs = logits.sigmoid()
            logits = logits * 2
            return probs
        """
    )
    values = ctx.get(Scopes)
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
    values = ctx.get(Scopes)
    probs_in_loop = next(n for n in ctx.nodes.of(cst.Name) if n.value == "probs" and ctx.code(ctx.parent(n)) == "probs")
    assert values.scope_of(probs_in_loop) is ctx.module
    assert [ctx.code(b.value) for b in values.reaching(probs_in_loop).bindings] == ["torch.softmax(logits, dim=1)"]
    assert len(values.uses("probs", ctx.module)) == 2  # the read inside helper() counts too


def test_a_chain_binding_on_every_path_through_nested_branches_and_with_bodies_hides_earlier_values() -> None:
    ctx = _context(
        """
        def f(a, b, ctx):
            y = 0
            if a:
                if b:
                    y = 1
                else:
                    y = 2
            else:
                with ctx:
                    y = 3
            z = 0
            if a:
                if b:
                    z = 1
            else:
                z = 2
            return y, z
        """
    )
    # z keeps 0 possible: `a and not b` binds nothing
    assert _origins(ctx, "f") == [["1", "2", "3"], ["0", "1", "2"]]


def test_uses_of_a_binding_are_the_loads_it_reaches() -> None:
    ctx = _context(
        """
        def f(x, flag):
            cost = x * 2
            if flag:
                print(cost)
            idx = cost.argmin()
            cost = cost[idx]
            del cost
            return x
        """
    )
    scopes = ctx.get(Scopes)
    first, second = [b.statement for b in scopes.records(_function(ctx, "f"))["cost"]]
    # the rebinding's target is no use; its right-hand side is
    def statements(statement: cst.CSTNode, name: str) -> list[str]:
        return [ctx.code(scopes.statement_of(u)).strip() for u in scopes.uses_of(statement, name)]

    assert statements(first, "cost") == ["print(cost)", "idx = cost.argmin()", "cost = cost[idx]"]
    assert statements(second, "cost") == ["del cost"]
    parameter = scopes.records(_function(ctx, "f"))["x"][0].statement
    assert statements(parameter, "x") == ["cost = x * 2", "return x"]


def test_carried_into_a_loop_body_unless_rebound_on_every_path_of_the_iteration() -> None:
    ctx = _context(
        """
        def train(loader, args):
            total = 0
            for batch in loader:
                if args.snr:
                    if args.weighted:
                        loss = f(batch)
                    else:
                        loss = g(batch)
                else:
                    loss = h(batch)
                if args.prior:
                    loss = loss + args.weight * prior
                if args.extra:
                    aux = aux + loss
                total = total + loss
        """
    )
    scopes = ctx.get(Scopes)
    loop = next(iter(ctx.nodes.of(cst.For)))

    def read(name: str, line: str) -> cst.Name:
        return next(n for n in scopes.uses(name, _function(ctx, "train")) if ctx.code(ctx.parent(n)).startswith(line))

    assert not scopes.carried_into(read("loss", "loss + args"), loop.body)
    assert scopes.carried_into(read("total", "total + loss"), loop.body)  # bound before the loop
    assert scopes.carried_into(read("aux", "aux + loss"), loop.body)  # its previous iteration (or unbound)


def test_computed_from_follows_names_through_their_bindings_and_apex_scale_loss() -> None:
    ctx = _context(
        """
        from apex import amp

        def step(model, x, optimizer, accum, weights):
            raw = model(x)
            loss = raw / accum
            with amp.scale_loss(loss, optimizer) as scaled_loss:
                scaled_loss.backward()
            weights *= 0.5
            return (weights * raw).sum()
        """
    )
    scopes = ctx.get(Scopes)
    scaled = next(n for n in ctx.nodes.of(cst.Name) if n.value == "scaled_loss" and isinstance(ctx.parent(n), cst.Attribute))
    found = [ctx.code(n) for n in scopes.computed_from(scaled, depth=4)]
    # the `as` name is the loss it scales; `loss` is `raw / accum`; `raw` is what the model gives
    assert found == ["scaled_loss", "loss", "raw / accum", "accum", "raw", "model(x)"]
    assert [ctx.code(n) for n in scopes.computed_from(scaled, depth=1)] == ["scaled_loss", "loss"]
    returned = _returned(ctx, _function(ctx, "step"))[0]
    # an in-place update is what the name is computed from; its operand is not followed
    assert "weights *= 0.5" in [ctx.code(n) for n in scopes.computed_from(returned, depth=4)]
