"""TL302: every parameter clamped in place right after initialization."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.model_structure import ModelStructure, number
from trainlint.analysis.values import Scopes
from trainlint.context import FileContext
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

_CLAMPS = frozenset({"clamp_", "clip_"})
_PARAMETER_ITERATORS = frozenset({"parameters", "named_parameters"})
# Calls that make a function part of training, not of building: a clamp next to them is a
# projection step (WGAN's weight clipping), not a change of the initialization.
_TRAINING_CALLS = frozenset({"backward", "step", "manual_backward"})


@dataclass(frozen=True)
class _ClampLoop:
    loop: cst.For
    clamp: cst.Call
    owner: cst.BaseExpression  # `self` in `self.parameters()`


def _is_init_name(name: str) -> bool:
    lowered = name.lower()
    return "init" in lowered or lowered == "reset_parameters"


class ClampParametersAfterInit(Rule):
    """## What it does
    Finds a loop that clamps every parameter of a model in place right after it was initialized:
    `for p in self.parameters(): p.data.clamp_(-0.5, 0.5)` in `__init__`, in an init function
    (`init_weights`, `reset_parameters`, a function passed to `model.apply`), or where the model
    is built, before any training. Weight clipping inside a training step, after
    `optimizer.step()` (the WGAN critic's `p.data.clamp_(-c, c)`), is a projection that the
    algorithm needs and is not reported.

    ## Why is this bad?
    Initialization schemes choose each tensor's distribution on purpose: Kaiming/Xavier scale
    weights by fan-in so activations keep their variance, biases start at 0, and normalization
    layers start with weight 1. Clamping everything to [-0.5, 0.5] afterwards ignores all of it:
    every BatchNorm/LayerNorm weight initialised to 1 becomes 0.5, halving each norm layer's
    output (0.5^k after k of them in a path), embedding and first-layer weights drawn with a
    standard deviation near or above 0.5 pile up at the bounds, and the per-layer scaling that
    keeps deep networks trainable is lost. Nothing is gained: the optimizer moves the weights out
    of the range at the first step.

    The fix removes the loop. It is unsafe: it changes the weights the model starts from.

    ## Fix safety
    Unsafe: removing the clamp changes the initial weights and so everything the model learns
    from them; a clamp can also be deliberate (a constraint the architecture relies on).
    """

    code = "TL302"
    name = "clamp-parameters-after-init"
    summary = "All parameters clamped in place after initialization (destroys the init)"
    level = "warning"
    fix_applicability = "unsafe"
    triggers = ("clamp", "clip")
    examples = (
        Example(
            code='''
            import torch.nn as nn


            class Classifier(nn.Module):
                def __init__(self, dim, classes):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, classes))
                    for p in self.parameters():
                        p.data.clamp_(-0.5, 0.5)

                def forward(self, x):
                    return self.net(x)
            ''',
            expect=[(9, 13)],
            fixed='''
            import torch.nn as nn


            class Classifier(nn.Module):
                def __init__(self, dim, classes):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, classes))

                def forward(self, x):
                    return self.net(x)
            ''',
            unsafe=True,
        ),
    )
    valid_examples = (
        '''
        def train_critic(critic, optimizer, real, fake, clip_value=0.01):
            optimizer.zero_grad()
            loss = -critic(real).mean() + critic(fake).mean()
            loss.backward()
            optimizer.step()
            for p in critic.parameters():
                p.data.clamp_(-clip_value, clip_value)
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for loop in ctx.nodes.of(cst.For):
            found = _clamp_loop(loop)
            if found is None or not self._after_initialization(ctx, found):
                continue
            low, high = (_code_or(ctx, bound) for bound in _bounds(found.clamp))
            yield ctx.report(
                self,
                found.clamp,
                f"every parameter of `{ctx.code(found.owner)}` is clamped to [{low}, {high}] right after "
                "initialization: this overrides the init's distribution (norm weights set to 1 become "
                f"{high}, fan-in scaled weights are cut)",
                fix=_removal(ctx, loop),
            )

    # -- where the loop runs -----------------------------------------------------------------------
    def _after_initialization(self, ctx: FileContext, found: _ClampLoop) -> bool:
        function = ctx.enclosing(found.loop, cst.FunctionDef)
        if function is not None and _is_init_function(ctx, function):
            return True
        if _inside_loop(ctx, found.loop, function) or _trains(ctx, function):
            return False
        if _loads_weights_before(ctx, found.loop, function):
            return False
        return _built_here(ctx, found.owner, function)


def _clamp_loop(loop: cst.For) -> _ClampLoop | None:
    """``for p in m.parameters():`` whose body only clamps ``p`` in place with two bounds."""
    iterator = loop.iter
    if not (
        isinstance(iterator, cst.Call)
        and isinstance(iterator.func, cst.Attribute)
        and iterator.func.attr.value in _PARAMETER_ITERATORS
    ):
        return None
    variable = _loop_variable(loop.target, iterator.func.attr.value == "named_parameters")
    if variable is None:
        return None
    clamps = [_clamp_of(statement, variable) for statement in _flat_statements(loop.body)]
    if not clamps or any(c is None for c in clamps):
        return None
    return _ClampLoop(loop, clamps[0], iterator.func.value)  # type: ignore[arg-type]


def _loop_variable(target: cst.BaseExpression, named: bool) -> str | None:
    if named:
        if isinstance(target, cst.Tuple) and len(target.elements) == 2:
            target = target.elements[1].value
        else:
            return None
    return target.value if isinstance(target, cst.Name) else None


def _flat_statements(block: cst.BaseSuite) -> Iterator[cst.CSTNode]:
    """Small statements of a block, looking inside ``with`` and ``if`` bodies."""
    if isinstance(block, cst.SimpleStatementSuite):
        yield from block.body
        return
    for statement in block.body:  # type: ignore[attr-defined]
        if isinstance(statement, cst.SimpleStatementLine):
            yield from statement.body
        elif isinstance(statement, cst.With) or isinstance(statement, cst.If) and statement.orelse is None:
            yield from _flat_statements(statement.body)
        else:
            yield statement


def _clamp_of(statement: cst.CSTNode, variable: str) -> cst.Call | None:
    """The two-sided in-place clamp of ``p``/``p.data`` that the statement is, else None."""
    if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call):
        call = statement.value
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in _CLAMPS and _is_parameter(func.value, variable):
            return call if _two_sided(call) else None
    if isinstance(statement, cst.Assign) and len(statement.targets) == 1 and isinstance(statement.value, cst.Call):
        # p.data = p.data.clamp(-0.5, 0.5)
        call = statement.value
        func = call.func
        if (
            _is_parameter(statement.targets[0].target, variable)
            and isinstance(func, cst.Attribute)
            and func.attr.value in ("clamp", "clip")
            and _is_parameter(func.value, variable)
            and _two_sided(call)
        ):
            return call
    return None


def _is_parameter(expr: cst.BaseExpression, variable: str) -> bool:
    return dotted_name(expr) in (variable, f"{variable}.data")


def _bounds(call: cst.Call) -> tuple[cst.BaseExpression | None, cst.BaseExpression | None]:
    positional = [a.value for a in call.args if a.keyword is None and not a.star]
    keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    low = keywords.get("min", positional[0] if positional else None)
    high = keywords.get("max", positional[1] if len(positional) > 1 else None)
    return low, high


def _two_sided(call: cst.Call) -> bool:
    low, high = _bounds(call)
    return low is not None and high is not None and not _is_none(low) and not _is_none(high)


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _code_or(ctx: FileContext, expr: cst.BaseExpression | None) -> str:
    if expr is None:
        return "?"
    value = number(expr)
    return f"{value:g}" if value is not None else ctx.code(expr)


# -- context ------------------------------------------------------------------------------------
def _is_init_function(ctx: FileContext, function: cst.FunctionDef) -> bool:
    """``__init__``, an init-named function, or a method that ``__init__`` calls."""
    if _is_init_name(function.name.value):
        return True
    owner = ctx.get(ModelStructure).class_of(function)
    if owner is None or owner.init is None:
        return False
    for node in ctx.nodes.of(cst.Call):
        func = node.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value == function.name.value
            and dotted_name(func.value) == "self"
            and ctx.enclosing(node, cst.FunctionDef) is owner.init
        ):
            return True
    return False


def _inside_loop(ctx: FileContext, loop: cst.For, function: cst.FunctionDef | None) -> bool:
    for ancestor in ctx.ancestors(loop):
        if ancestor is function:
            return False
        if isinstance(ancestor, (cst.For, cst.While)):
            return True
    return False


def _trains(ctx: FileContext, function: cst.FunctionDef | None) -> bool:
    """True when the function runs a backward or an optimizer step: a clamp there is part of the
    step (WGAN), whichever comes first. Module-level code is judged by its loops instead."""
    if function is None:
        return False
    return any(
        isinstance(call.func, cst.Attribute)
        and call.func.attr.value in _TRAINING_CALLS
        and ctx.enclosing(call, cst.FunctionDef) is function
        for call in ctx.nodes.of(cst.Call)
    )


def _loads_weights_before(ctx: FileContext, loop: cst.For, function: cst.FunctionDef | None) -> bool:
    """True when weights are loaded (``load_state_dict``, a checkpoint) before the loop in the
    same scope: the clamp then acts on trained weights, not on the initialization."""
    loop_start = ctx.order(loop)[0]
    for call in ctx.nodes.of(cst.Call):
        name = dotted_name(call.func) or ""
        loads = "load" in name.rpartition(".")[2].lower()
        if loads and ctx.enclosing(call, cst.FunctionDef) is function and ctx.order(call)[0] < loop_start:
            return True
    return False


def _built_here(ctx: FileContext, owner: cst.BaseExpression, function: cst.FunctionDef | None) -> bool:
    """True when the model whose parameters are clamped is constructed in the same scope."""
    if not isinstance(owner, cst.Name):
        return False
    if function is None:
        return bool(ctx.get(ModelStructure).built_by(owner))
    values = ctx.get(Scopes).assigned_values(owner)
    if not values:
        return False  # a parameter (a model built elsewhere, maybe trained already)
    structure = ctx.get(ModelStructure)
    return all(structure.built_by(value) for value in values)


# -- the fix -------------------------------------------------------------------------------------
def _removal(ctx: FileContext, loop: cst.For) -> Fix | None:
    """Remove the loop, with a ``with torch.no_grad():`` that only holds it; a block left empty
    gets ``pass``."""
    statement: cst.CSTNode = loop
    while True:
        block = ctx.parent(statement)
        if isinstance(block, cst.Module) and len(block.body) > 1:
            return ctx.fix([ctx.remove(statement)], "unsafe", "Remove the clamping loop")
        holder = ctx.parent(block) if block is not None else None
        if not isinstance(block, cst.IndentedBlock) or holder is None:
            return None
        if len(block.body) > 1:
            return ctx.fix([ctx.remove(statement)], "unsafe", "Remove the clamping loop")
        if isinstance(holder, cst.With):
            statement = holder
            continue
        return ctx.fix([_replace_with_pass(ctx, statement)], "unsafe", "Remove the clamping loop")


def _replace_with_pass(ctx: FileContext, statement: cst.CSTNode) -> Edit | None:
    if ctx.statement_indent(statement) is None:
        return None
    start, end = ctx.span(statement)
    return Edit(start, end, "pass")
