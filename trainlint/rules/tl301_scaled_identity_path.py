"""TL301: a residual connection whose identity path is multiplied by a constant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.model_structure import ModelClass, ModelStructure, number, self_attribute
from trainlint.analysis.values import Instance, Scopes, ValueFlow, evidence_text
from trainlint.analysis.values import number as value_number
from trainlint.analysis.values.scopes import FOLLOWED_KINDS
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule

# Tensor methods that move or view data without computing: `x.view(n, -1)` is still `x`.
_SHAPE_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten", "unsqueeze",
    "squeeze", "clone", "to", "float", "type_as", "view_as", "reshape_as", "expand", "expand_as",
    "detach", "movedim",
})
# Submodules that carry the identity path: `self.downsample(x)`, `self.shortcut(x)`, `self.proj(x)`.
_SHORTCUT_WORDS = ("down", "shortcut", "skip", "proj", "identity", "match")
_SHORTCUT_MODULES = frozenset({
    "torch.nn.Identity", "torch.nn.AvgPool1d", "torch.nn.AvgPool2d", "torch.nn.AvgPool3d",
    "torch.nn.MaxPool1d", "torch.nn.MaxPool2d", "torch.nn.MaxPool3d", "torch.nn.Upsample",
})
_SHORTCUT_FUNCTIONS = frozenset({
    "torch.nn.functional.avg_pool1d", "torch.nn.functional.avg_pool2d", "torch.nn.functional.avg_pool3d",
    "torch.nn.functional.max_pool1d", "torch.nn.functional.max_pool2d", "torch.nn.functional.max_pool3d",
    "torch.nn.functional.interpolate", "torch.nn.functional.pad", "torch.repeat_interleave",
})
# Functions through which a block's value stays its output stream: elementwise activations,
# dropout, normalisation, views (`return F.relu(out + identity)`).
_STREAM_FUNCTIONS = frozenset({
    f"torch.nn.functional.{name}" for name in (
        "relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "selu", "mish", "hardswish", "tanh", "sigmoid",
        "dropout", "dropout1d", "dropout2d", "dropout3d", "layer_norm", "group_norm", "batch_norm",
        "instance_norm", "normalize", "pad",
    )
} | {
    f"torch.{name}" for name in (
        "relu", "tanh", "sigmoid", "squeeze", "unsqueeze", "transpose", "reshape", "flatten", "permute", "movedim",
    )
})
# Containers a block may return its output in: `return x, skip`, `return {"out": x}`.
_RETURNED_CONTAINERS = (cst.Element, cst.Tuple, cst.List, cst.DictElement, cst.Dict, cst.IfExp)
# Expressions that need no parentheses as an operand of `*`.
_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float)


@dataclass(frozen=True)
class _Scaled:
    """``factor * operand`` written as ``c * x``, ``x * c`` or ``x.mul(c)``, with 0 < c < 1."""

    node: cst.BaseExpression
    factor: cst.BaseExpression
    operand: cst.BaseExpression
    value: float


class ScaledIdentityPath(Rule):
    """## What it does
    Finds a residual connection in a `forward` method whose identity path is multiplied by a
    constant: `out + 0.1 * residual`, `0.1 * x + self.block(x)`, `0.05 * (out + identity)`, or the
    same through a constant attribute set in `__init__` (`self.residual_scale = 0.1`). The
    identity path is found by data flow inside `forward`: the input parameter, or a name bound to
    it or to one projection/downsample of it (`identity = self.downsample(x)`), added to a branch
    that computes more from the same input. Scaling the *branch* (`x + 0.1 * self.block(x)`,
    EDSR's `res_scale`, LayerScale's `gamma * f(x)`, ReZero's `alpha * f(x)`) is the intended
    design and is not reported, nor is an interpolation that scales both terms
    (`0.9 * h + 0.1 * f(x)`).

    The sum must be what the block passes on: returned, maybe through activations, dropout,
    normalisation, submodules, views and further sums. A scaled sum used for something else (a
    convolutional seq2seq attention's query, scored against the encoder) does not decay over
    depth and is not reported.

    A constant attribute may be set in `__init__` directly or from a constructor parameter
    (`self.residual_scale = residual_scale`): then every construction of the class in the project
    must pass the same value, or none and keep the default, and the message says which.

    ## Why is this bad?
    A residual block computes `x + f(x)` so that the input and its gradient pass through
    unchanged however deep the network is. With `0.1 * x + f(x)` the identity signal is scaled
    by 0.1 per block, 0.1^depth in all: after 10 blocks the input reaches the output scaled by
    1e-10, after 50 blocks by 1e-50, below the smallest positive float32 (1.4e-45), so it is
    gone. The gradient through the identity path is scaled by 0.1 per block in the same way, so
    the early layers learn only through the branches, as in a plain deep network without skip
    connections. Scaling the branch instead keeps the identity path at 1, which is what
    stabilises deep residual networks.

    The fix drops the constant factor from the identity path (and keeps it on the branch in
    `0.05 * (out + identity)`, which becomes `0.05 * out + identity`).

    ## Fix safety
    Unsafe: it changes the function the block computes. `out + c * x` becomes `out + x` and
    `c * (out + x)` becomes `c * out + x`, so a checkpoint trained with the factor computes
    something else once loaded into the fixed model: retrain or fine-tune. A scaled sum can also be
    a deliberate average (`0.5 * (x + f(x))`), which the fix turns into a different network.
    """

    code = "TL301"
    name = "scaled-identity-path"
    summary = "Residual identity path multiplied by a constant (signal decays as c^depth)"
    level = "error"
    fix_applicability = "unsafe"
    triggers = ("forward",)
    examples = (
        Example(
            code='''
            import torch.nn as nn


            class BasicBlock(nn.Module):
                def __init__(self, channels):
                    super().__init__()
                    self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
                    self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
                    self.relu = nn.ReLU()

                def forward(self, x):
                    residual = x
                    out = self.relu(self.conv1(x))
                    out = self.conv2(out)
                    return self.relu(out + 0.1 * residual)
            ''',
            expect=[(15, 32)],
            unsafe=True,
            fixed='''
            import torch.nn as nn


            class BasicBlock(nn.Module):
                def __init__(self, channels):
                    super().__init__()
                    self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
                    self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
                    self.relu = nn.ReLU()

                def forward(self, x):
                    residual = x
                    out = self.relu(self.conv1(x))
                    out = self.conv2(out)
                    return self.relu(out + residual)
            ''',
        ),
        Example(
            code='''
            import torch.nn as nn


            class ScaledSkip(nn.Module):
                def __init__(self, dim):
                    super().__init__()
                    self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                    self.residual_scale = 0.1

                def forward(self, x):
                    return self.residual_scale * x + self.mlp(x)
            ''',
            expect=[(11, 16)],
            unsafe=True,
            fixed='''
            import torch.nn as nn


            class ScaledSkip(nn.Module):
                def __init__(self, dim):
                    super().__init__()
                    self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                    self.residual_scale = 0.1

                def forward(self, x):
                    return x + self.mlp(x)
            ''',
        ),
    )
    valid_examples = (
        '''
        import torch.nn as nn

        class Block(nn.Module):
            def forward(self, x):
                return x + 0.1 * self.body(x)
        ''',
        '''
        import torch
        import torch.nn as nn

        class ReZero(nn.Module):
            def __init__(self, f):
                super().__init__()
                self.f = f
                self.alpha = nn.Parameter(torch.zeros(1))

            def forward(self, x):
                return x + self.alpha * self.f(x)
        ''',
        '''
        import torch.nn as nn

        class LeakyCell(nn.Module):
            def forward(self, x, h):
                return 0.9 * h + 0.1 * self.cell(x, h)
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        blocks: dict[cst.FunctionDef, _ResidualBlock | None] = {}
        for node in self._candidates(ctx):
            function = ctx.enclosing(node, cst.FunctionDef)
            if function is None:
                continue
            if function not in blocks:
                blocks[function] = _ResidualBlock.of_forward(ctx, function)
            block = blocks[function]
            if block is None:
                continue
            if isinstance(node, cst.AugAssign):
                yield from self._check_sum(ctx, block, node, node.target, node.value)
            elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
                yield from self._check_sum(ctx, block, node, node.left, node.right)
            else:
                yield from self._check_scaled_sum(ctx, block, node)

    @staticmethod
    def _candidates(ctx: FileContext) -> Iterator[cst.BaseExpression | cst.AugAssign]:
        """Sums (``a + b``, ``a += b``) and products (``c * (a + b)``, ``(a + b).mul(c)``)."""
        for operation in ctx.nodes.of(cst.BinaryOperation):
            if isinstance(operation.operator, (cst.Add, cst.Multiply)):
                yield operation
        for augmented in ctx.nodes.of(cst.AugAssign):
            if isinstance(augmented.operator, cst.AddAssign):
                yield augmented
        for call in ctx.nodes.of(cst.Call):
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "mul":
                yield call

    def _check_sum(
        self, ctx: FileContext, block: _ResidualBlock, node: cst.CSTNode, left: cst.BaseExpression,
        right: cst.BaseExpression,
    ) -> Iterator[Finding]:
        # `c * x + f(x)` / `f(x) + c * x`: the identity term is scaled. The data flow inside
        # `forward` is checked first; what the factor is (asked of the engine, maybe across the
        # project) only for a sum that is a residual.
        for scaled_side, other in ((left, right), (right, left)):
            for factor, operand in block.factor_pairs(scaled_side):
                if not block.is_identity_of(operand, other, node):
                    continue
                scaled = block.scaled_by(scaled_side, factor, operand)
                if scaled is None or block.has_constant_factor(other):
                    continue  # not shrinking, or an interpolation `a * h + b * f(x)`
                if not block.passes_on(node):
                    return  # used for something else (an attention query): no decay over depth
                yield ctx.report(
                    self,
                    scaled.node,
                    _message(ctx, scaled),
                    fix=ctx.fix([ctx.replace(scaled.node, ctx.code(scaled.operand))], "unsafe",
                                f"Drop the factor `{ctx.code(scaled.factor)}` from the identity path"),
                )
                return

    def _check_scaled_sum(self, ctx: FileContext, block: _ResidualBlock, expr: cst.BaseExpression) -> Iterator[Finding]:
        for factor, inner in block.factor_pairs(expr):
            if not (isinstance(inner, cst.BinaryOperation) and isinstance(inner.operator, cst.Add)):
                continue
            for identity, branch in ((inner.left, inner.right), (inner.right, inner.left)):
                if not block.is_identity_of(identity, branch, inner):
                    continue
                scaled = block.scaled_by(expr, factor, inner)
                if (
                    scaled is not None and not block.has_constant_factor(identity)
                    and not block.has_constant_factor(branch) and block.passes_on(expr)
                ):
                    yield ctx.report(
                        self, scaled.node, _message(ctx, scaled, identity), fix=_split_fix(ctx, scaled, identity, branch)
                    )
                    return


class _ResidualBlock:
    """The data flow of one ``forward``: which values carry its input unchanged (the stream)."""

    def __init__(self, ctx: FileContext, flow: Scopes, function: cst.FunctionDef, owner: ModelClass) -> None:
        self.ctx = ctx
        self.flow = flow
        self.values = ctx.get(ValueFlow)
        self.function = function
        self.owner = owner
        params = function.params
        names = [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]
        self.inputs = frozenset(names[1:])  # all but `self`
        # The stream is the first input: later ones are conditions or state carried over time
        # (a spiking neuron's `mem = 0.9 * mem + self.fc(x)` decays over time, not depth).
        self.stream_input = names[1] if len(names) > 1 else None

    @classmethod
    def of_forward(cls, ctx: FileContext, function: cst.FunctionDef) -> _ResidualBlock | None:
        """The block of a ``forward`` method; None for any other function."""
        owner = _owner_class(ctx, function)
        if function.name.value != "forward" or owner is None:
            return None
        return cls(ctx, ctx.get(Scopes), function, ctx.get(ModelStructure).class_for(owner))

    # -- constant factors ------------------------------------------------------------------------
    def constant(self, expr: cst.BaseExpression) -> float | None:
        """The one number ``expr`` is wherever the project builds the class: a literal, a name or
        a constant attribute (``self.residual_scale = 0.1``, or set from a constructor parameter
        whose default and the arguments of every construction in the project agree; a
        construction outside the project, from a config, is assumed to keep the default), or
        arithmetic on them (``1 - self.leak``); else None."""
        value = number(expr)
        if value is not None:
            return value
        values = self.values.values(expr)
        numbers = {value_number(v) for v in values}
        if values.untraced or len(numbers) != 1 or None in numbers:
            return None
        return numbers.pop()

    @staticmethod
    def factor_pairs(expr: cst.BaseExpression) -> list[tuple[cst.BaseExpression, cst.BaseExpression]]:
        """``(factor, operand)`` candidates of ``c * x``, ``x * c`` and ``x.mul(c)``, by syntax."""
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Multiply):
            return [(expr.left, expr.right), (expr.right, expr.left)]
        if (
            isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "mul"
            and len(expr.args) == 1 and expr.args[0].keyword is None and not expr.args[0].star
        ):
            return [(expr.args[0].value, expr.func.value)]
        return []

    def _factors(self, expr: cst.BaseExpression) -> Iterator[tuple[cst.BaseExpression, cst.BaseExpression, float]]:
        """``(factor, operand, value)`` for ``c * x``, ``x * c`` and ``x.mul(c)`` with a constant ``c``."""
        for factor, operand in self.factor_pairs(expr):
            value = self.constant(factor)
            if value is not None:
                yield factor, operand, value

    def scaled_by(self, expr: cst.BaseExpression, factor: cst.BaseExpression, operand: cst.BaseExpression) -> _Scaled | None:
        """``expr`` as ``factor * operand`` when the factor is a shrinking constant (0 < c < 1)."""
        value = self.constant(factor)
        return _Scaled(expr, factor, operand, value) if value is not None and 0 < value < 1 else None

    def has_constant_factor(self, expr: cst.BaseExpression) -> bool:
        """True for any constant times something: the other term of an interpolation
        (``0.9 * h + 0.1 * f(x)``, ``(1 - a) * h + a * u``)."""
        return any(True for _ in self._factors(expr))

    # -- the block's output --------------------------------------------------------------------------
    def passes_on(self, node: cst.CSTNode) -> bool:
        """True when the value of ``node`` (a residual sum) may become the block's output as the
        stream: returned, maybe through further sums, constant factors, activations, dropout,
        normalisation, submodules applied to it and views, or bound to a name whose uses do so.
        Only then does the next block receive it, so that a factor on its identity compounds
        with depth; a sum that feeds an attention score or a matrix product does not."""
        return self._passes_on(node, set())

    def _passes_on(self, node: cst.CSTNode, seen: set[cst.CSTNode]) -> bool:
        if isinstance(node, cst.AugAssign):  # `out += 0.1 * identity`
            return self._bound_name_passes_on(node, seen)
        current = node
        while True:
            parent = self.ctx.parent(current)
            if parent is None or isinstance(parent, cst.Return):
                return parent is not None
            if isinstance(parent, (cst.Assign, cst.AugAssign, cst.AnnAssign)):
                return self._bound_name_passes_on(parent, seen)
            if isinstance(parent, cst.Arg):
                call = self.ctx.parent(parent)
                if not (isinstance(call, cst.Call) and call.args and call.args[0] is parent and self._keeps_stream(call)):
                    return False
                current = call
            elif isinstance(parent, cst.Attribute):  # `(out + x).view(...)`
                call = self.ctx.parent(parent)
                if not (isinstance(call, cst.Call) and call.func is parent and parent.attr.value in _SHAPE_METHODS):
                    return False
                current = call
            elif isinstance(parent, cst.BinaryOperation) or isinstance(parent, _RETURNED_CONTAINERS):
                current = parent
            else:
                return False

    def _keeps_stream(self, call: cst.Call) -> bool:
        """``call`` passes its first argument on as the stream: a submodule of the block applied
        to it (``self.norm(x)``, ``self.act(x)``), or a function that keeps it elementwise."""
        return self_attribute(call.func) is not None or self.ctx.qualified_name(call.func) in _STREAM_FUNCTIONS

    def _bound_name_passes_on(self, statement: cst.Assign | cst.AugAssign | cst.AnnAssign, seen: set[cst.CSTNode]) -> bool:
        if statement in seen:
            return False
        seen.add(statement)
        targets = (
            [t.target for t in statement.targets] if isinstance(statement, cst.Assign) else [statement.target]
        )
        return any(
            isinstance(target, cst.Name)
            and any(self._passes_on(use, seen) for use in self.flow.uses_of(statement, target.value))
            for target in targets
        )

    # -- identity paths ----------------------------------------------------------------------------
    def is_identity_of(self, identity: cst.BaseExpression, branch: cst.BaseExpression, site: cst.CSTNode) -> bool:
        """True when ``identity`` carries the block's input (the residual stream) and ``branch``
        computes something from the inputs: ``identity + branch`` is a residual sum."""
        statement = self._statement(site)
        return (
            self.is_stream(identity, statement, set())
            and self.is_derived(branch, statement, set())
            and not self.is_stream(branch, statement, set())
        )

    def _statement(self, node: cst.CSTNode) -> cst.CSTNode:
        found = self.flow.statement_of(node, self.function)
        return found if found is not None else node

    def is_stream(self, expr: cst.BaseExpression, site: cst.CSTNode, visiting: set[cst.CSTNode]) -> bool:
        """True when ``expr`` is the input passed on without computation: an input parameter, a
        name bound to it, a view or slice of it, a shortcut/downsample of it
        (``self.downsample(x)``), or an earlier residual sum (``x = x + f(x)``). ``site`` is the
        statement being checked: its own binding (a loop-carried ``x = c * x + f(x)``) is the
        stream of the previous iteration and is not followed."""
        if expr in visiting:
            return False
        visiting.add(expr)
        if isinstance(expr, cst.Name):
            return self._all_bindings(expr, site, visiting, self.is_stream)
        if isinstance(expr, cst.Call):
            return self._is_stream_call(expr, site, visiting)
        if isinstance(expr, cst.BinaryOperation):
            if isinstance(expr.operator, (cst.Add, cst.Subtract)):  # a residual sum carries the stream on
                return self.is_stream(expr.left, site, visiting) or self.is_stream(expr.right, site, visiting)
            if isinstance(expr.operator, (cst.Multiply, cst.Divide)):
                return (self.constant(expr.right) is not None and self.is_stream(expr.left, site, visiting)) or (
                    self.constant(expr.left) is not None and self.is_stream(expr.right, site, visiting)
                )
            return False
        if isinstance(expr, cst.Subscript):
            return self.is_stream(expr.value, site, visiting)
        if isinstance(expr, cst.IfExp):
            return self.is_stream(expr.body, site, visiting) and self.is_stream(expr.orelse, site, visiting)
        return False

    def _is_stream_call(self, call: cst.Call, site: cst.CSTNode, visiting: set[cst.CSTNode]) -> bool:
        func = call.func
        first = call.args[0].value if call.args and call.args[0].keyword is None else None
        attr = self_attribute(func)
        if attr is not None:  # `self.downsample(x)`: a shortcut module applied to the stream
            return first is not None and self._is_shortcut(func) and self.is_stream(first, site, visiting)
        if isinstance(func, cst.Attribute) and func.attr.value in _SHAPE_METHODS:
            return self.is_stream(func.value, site, visiting)
        if self.ctx.qualified_name(func) in _SHORTCUT_FUNCTIONS:
            return first is not None and self.is_stream(first, site, visiting)
        return False

    def _is_shortcut(self, submodule: cst.Attribute) -> bool:
        lowered = submodule.attr.value.lower()
        return any(word in lowered for word in _SHORTCUT_WORDS) or self.values.values(submodule).must(
            lambda v: isinstance(v, Instance) and v.cls in _SHORTCUT_MODULES
        )

    def is_derived(self, expr: cst.BaseExpression, site: cst.CSTNode, visiting: set[cst.CSTNode]) -> bool:
        """True when the value of ``expr`` depends on the block's inputs at all."""
        if expr in visiting:
            return False
        visiting.add(expr)
        if isinstance(expr, cst.Name):
            return self._any_binding(expr, site, visiting)
        parts: list[cst.BaseExpression] = []
        if isinstance(expr, cst.Call):
            if isinstance(expr.func, cst.Attribute) and self_attribute(expr.func) is None:
                parts.append(expr.func.value)
            for arg in expr.args:
                value = arg.value
                parts += [e.value for e in value.elements] if isinstance(value, (cst.List, cst.Tuple)) else [value]
        elif isinstance(expr, cst.BinaryOperation):
            parts = [expr.left, expr.right]
        elif isinstance(expr, cst.UnaryOperation):
            parts = [expr.expression]
        elif isinstance(expr, cst.Subscript):
            parts = [expr.value]
        elif isinstance(expr, cst.IfExp):
            parts = [expr.body, expr.orelse]
        elif isinstance(expr, cst.Attribute) and self_attribute(expr) is None:
            parts = [expr.value]
        return any(self.is_derived(part, site, visiting) for part in parts)

    def _values(self, name: cst.Name, site: cst.CSTNode) -> list[cst.BaseExpression | bool] | None:
        """What each binding reaching ``name`` gives: an expression to follow, True/False for the
        stream input/another parameter; None when one binding cannot be followed."""
        reaching = self.flow.reaching(name, self.function)
        found: list[cst.BaseExpression | bool] = []
        for binding in reaching.bindings:
            if binding.kind == "parameter":
                found.append(binding.name == self.stream_input)
            elif binding.statement is site:
                continue  # the residual stream carried round a loop
            elif binding.kind in FOLLOWED_KINDS and binding.value is not None:
                found.append(binding.value)
            elif binding.kind == "augmented":
                found.append(binding.target)  # `x += f(x)` keeps x's stream
            else:
                return None  # unpacked or bound by a loop: not followed
        if reaching.unresolved and not found:
            return None
        return found

    def _all_bindings(
        self, name: cst.Name, site: cst.CSTNode, visiting: set[cst.CSTNode],
        test: Callable[[cst.BaseExpression, cst.CSTNode, set[cst.CSTNode]], bool],
    ) -> bool:
        values = self._values(name, site)
        if not values:
            return False
        return all(v if isinstance(v, bool) else test(v, site, visiting) for v in values)

    def _any_binding(self, name: cst.Name, site: cst.CSTNode, visiting: set[cst.CSTNode]) -> bool:
        reaching = self.flow.reaching(name, self.function)
        for binding in reaching.bindings:
            if binding.kind == "parameter" and binding.name in self.inputs:
                return True
            if binding.statement is site:
                continue
            value = binding.value
            if value is None and isinstance(binding.statement, cst.Assign):
                value = binding.statement.value  # `out, _ = self.attn(x, x, x)`: unpacked from it
            if value is None:
                continue
            if self.is_derived(value, site, visiting) or (
                binding.kind == "augmented" and self.is_derived(binding.target, site, visiting)
            ):
                return True
        return False


def _owner_class(ctx: FileContext, function: cst.FunctionDef) -> cst.ClassDef | None:
    body = ctx.parent(function)
    owner = ctx.parent(body) if body is not None else None
    return owner if isinstance(owner, cst.ClassDef) else None


def _message(ctx: FileContext, scaled: _Scaled, identity: cst.BaseExpression | None = None) -> str:
    identity = identity if identity is not None else scaled.operand
    factor = f"{scaled.value:g}"
    origin = "" if number(scaled.factor) is not None else evidence_text(ctx.get(ValueFlow).values(scaled.factor))
    return (
        f"the identity path `{ctx.code(identity)}` of this residual sum is multiplied by {factor}{origin}: after 10 "
        f"such blocks the input and its gradient are scaled by {factor}^10 = {scaled.value ** 10:.1e}; "
        "scale the branch, not the skip connection"
    )


def _split_fix(ctx: FileContext, scaled: _Scaled, identity: cst.BaseExpression, branch: cst.BaseExpression) -> Fix | None:
    """``c * (out + identity)`` -> ``c * out + identity`` (operands in their written order)."""
    branch_code = ctx.code(branch)
    if not isinstance(branch, _ATOMS) and not branch.lpar:
        branch_code = f"({branch_code})"
    factor = ctx.code(scaled.factor)
    scaled_branch = f"{branch_code}.mul({factor})" if isinstance(scaled.node, cst.Call) else f"{factor} * {branch_code}"
    inner = scaled.operand
    assert isinstance(inner, cst.BinaryOperation)
    identity_code = ctx.code(identity)
    text = f"{identity_code} + {scaled_branch}" if inner.left is identity else f"{scaled_branch} + {identity_code}"
    parent = ctx.parent(scaled.node)
    if isinstance(parent, (cst.BinaryOperation, cst.UnaryOperation, cst.Attribute, cst.Subscript)) and not scaled.node.lpar:
        text = f"({text})"
    message = f"Keep `{factor}` on the branch only (the block then computes a different function)"
    return ctx.fix([ctx.replace(scaled.node, text)], "unsafe", message)
