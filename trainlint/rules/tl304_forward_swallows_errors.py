"""TL304: a module's forward that catches every exception and carries on with a fallback value."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.regions import Regions
from trainlint.analysis.values import Scopes
from trainlint.context import FileContext, scope_nodes
from trainlint.findings import Finding
from trainlint.rule import Example, Rule

_BROAD = frozenset({"Exception", "BaseException"})
# What a shape, dtype or device bug raises: caught without looking at the error, it is swallowed.
_BUG_ERRORS = frozenset({"RuntimeError", "ValueError", "IndexError", "TypeError", "AssertionError"})
# Calls that make a placeholder tensor rather than compute one.
_PLACEHOLDERS = frozenset({"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "empty", "empty_like",
                           "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "tensor", "as_tensor"})
# Builtins whose call computes nothing a shape bug could break.
_INTROSPECTION = frozenset({"len", "int", "float", "str", "bool", "getattr", "hasattr", "isinstance", "print",
                            "tuple", "list", "dict", "range", "min", "max", "type", "id", "repr", "format"})


@dataclass(frozen=True)
class _Fallback:
    what: str  # "returns zeros", "keeps `x` as it was before the failing call"


class ForwardSwallowsErrors(Rule):
    """## What it does
    Finds a `try`/`except` in the `forward` of an `nn.Module` of the project (or in a method
    `forward` calls) whose handler catches every exception (bare `except:`, `except Exception`,
    `except BaseException`), or the errors a shape, dtype or device bug raises (`RuntimeError`,
    `ValueError`, `IndexError`, `TypeError`, `AssertionError`) without testing which one it got,
    and then carries on with a fallback instead of raising: it returns zeros, a constant or the
    input, assigns one, or just passes so that the variable keeps the value it had before the
    failing call (`try: x = self.attention(x) except Exception: pass`).

    A handler that raises (to add context), returns another real computation of the same thing
    (a slower attention kernel), or runs in evaluation only (`no_grad`, `if not self.training:`,
    a fallback after `assert not self.training`) is not reported, nor is a `try` around code that computes nothing (reading a shape, a length).

    ## Why is this bad?
    An exception in `forward` is a bug: a shape mismatch (`mat1 and mat2 shapes cannot be
    multiplied`), a dtype or device mix, an index out of range. Caught there, it becomes a
    silent wrong answer: the layer is skipped or replaced by zeros on every batch, the loss
    still decreases on what is left of the network, and the run looks healthy while part of the
    model never trains. The traceback that would have pointed at the line is gone. NaN does not
    raise at all, so such a handler does not catch the instability it was written for either.
    Let the exception propagate; fix the shape, or check it with an `assert` or a `raise` that
    says what was expected.

    ## Evidence
    Measured with torch 2.13 on CPU: a classifier whose residual block has a wrong projection
    size (built for 64 features where its input has 32), wrapped in `except Exception: return
    x`, trains for 40 steps without a sign of trouble (loss 0.665 -> 0.070, the block never
    ran); with the handler removed the first step raises `mat1 and mat2 shapes cannot be
    multiplied (256x32 and 64x32)` (`trainlint confirm --examples TL304`).

    There is no automatic fix: the handler hides a bug whose cause only the author can fix.
    """

    code = "TL304"
    name = "forward-swallows-errors"
    summary = "`forward` catches every exception and goes on with a fallback (a bug becomes a wrong answer)"
    level = "warning"
    fix_applicability = None
    triggers = ("except",)
    examples = (
        Example(
            code='''
            import torch
            import torch.nn as nn


            class Tagger(nn.Module):
                def __init__(self, dim, heads, classes):
                    super().__init__()
                    self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
                    self.head = nn.Linear(dim, classes)

                def forward(self, x):
                    try:
                        x, _ = self.attention(x, x, x)
                    except Exception:
                        x = torch.zeros_like(x)
                    return self.head(x)
            ''',
            expect=[(14, 9)],
        ),
    )
    valid_examples = (
        '''
        import torch.nn as nn

        class Tagger(nn.Module):
            def forward(self, x):
                try:
                    return self.encoder(x)
                except RuntimeError as error:
                    raise RuntimeError(f"encoder failed on input of shape {tuple(x.shape)}") from error
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        structure = ctx.get(ModelStructure)
        regions = ctx.get(Regions)
        for statement in ctx.nodes.of(cst.Try):
            if not _computes(ctx, statement.body):
                continue
            for handler in statement.handlers:
                caught = _caught(handler)
                if caught is None or _raises(handler):
                    continue
                owner = structure.forward_of(handler)
                if owner is None or regions.computes_no_gradient(handler) or _only_in_eval(regions, handler):
                    continue
                fallback = _fallback(ctx, statement, handler)
                if fallback is None:
                    continue
                yield ctx.report(
                    self,
                    handler,
                    f"{structure.forward_place(handler)} catches {caught} and {fallback.what}: a shape or device bug "
                    "becomes a silent wrong answer and training goes on without that computation; let it raise",
                )


# -- what the handler catches ---------------------------------------------------------------------
def _caught(handler: cst.ExceptHandler) -> str | None:
    """How the message names what the handler catches; None when it is narrow, or inspects the
    error it caught before deciding (``if "out of memory" in str(e)``)."""
    if handler.type is None:
        return "every exception (bare `except:`)"
    names = _exception_names(handler.type)
    broad = sorted(names & _BROAD)
    if broad:
        return f"`{broad[0]}`"
    bugs = sorted(names & _BUG_ERRORS)
    if bugs and not _inspects_error(handler):
        return f"`{bugs[0]}`"
    return None


def _exception_names(expr: cst.BaseExpression) -> set[str]:
    if isinstance(expr, cst.Tuple):
        return {name for element in expr.elements for name in _exception_names(element.value)}
    if isinstance(expr, cst.Name):
        return {expr.value}
    if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "builtins":
        return {expr.attr.value}
    return set()


def _inspects_error(handler: cst.ExceptHandler) -> bool:
    """The handler tests the error it caught (its message, its type)."""
    if handler.name is None or not isinstance(handler.name.name, cst.Name):
        return False
    bound = handler.name.name.value
    for node in scope_nodes(handler.body):
        if isinstance(node, (cst.If, cst.IfExp)) and any(
            isinstance(n, cst.Name) and n.value == bound for n in scope_nodes(node.test)
        ):
            return True
    return False


def _only_in_eval(regions: Regions, handler: cst.ExceptHandler) -> bool:
    """The handler runs in evaluation only: under ``if not self.training:``, or its fallback
    comes after an ``assert not self.training`` (in training the assertion raises instead)."""
    body = handler.body.body if isinstance(handler.body, cst.IndentedBlock) else ()
    return regions.runs_only_in_eval(handler) or (bool(body) and regions.runs_only_in_eval(body[-1]))


def _raises(handler: cst.ExceptHandler) -> bool:
    return any(isinstance(node, cst.Raise) for node in scope_nodes(handler.body))


# -- what the try computes and what the handler leaves -------------------------------------------------
def _computes(ctx: FileContext, body: cst.BaseSuite) -> bool:
    """The try body runs a computation a bug can break: a layer, a tensor operation, a matmul."""
    for node in scope_nodes(body):
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply):
            return True
        if isinstance(node, cst.Call):
            func = node.func
            if isinstance(func, cst.Name) and func.value in _INTROSPECTION and ctx.qualified_name(func) is None:
                continue
            if isinstance(func, (cst.Name, cst.Attribute)) and (ctx.qualified_name(func) or "").startswith(("importlib", "warnings", "logging")):
                continue
            return True
    return False


def _fallback(ctx: FileContext, statement: cst.Try, handler: cst.ExceptHandler) -> _Fallback | None:
    """What the forward goes on with after the handler: a value it returns or assigns, or the
    old value of a variable the failing code was to replace; None when the handler computes the
    result another way."""
    assigned_in_try = _assigned_names(statement.body)
    returns = [n for n in scope_nodes(handler.body) if isinstance(n, cst.Return)]
    for node in returns:
        what = _placeholder(ctx, node.value, assigned_in_try, statement)
        if what is None:
            return None
        return _Fallback(f"returns {what}")
    assigned = _assigned_values(handler.body)
    replaced = {name: value for name, value in assigned.items() if name in assigned_in_try}
    if replaced:
        name, value = next(iter(replaced.items()))
        what = _placeholder(ctx, value, assigned_in_try, statement)
        return _Fallback(f"sets `{name}` to {what}") if what is not None else None
    if assigned or _calls_something(ctx, handler):
        return None  # the handler computes something else instead
    kept = [name for name in assigned_in_try if _bound_before(ctx, name, statement) and _used_after(ctx, name, statement)]
    if kept:
        return _Fallback(f"goes on with `{kept[0]}` as it was before the failing call")
    return None


def _placeholder(ctx: FileContext, value: cst.BaseExpression | None, assigned_in_try: list[str], statement: cst.Try) -> str | None:
    """``zeros``, ``the input``, ``a constant``... when the value is a placeholder rather than a
    computation; None for a computation."""
    if value is None or isinstance(value, (cst.Integer, cst.Float, cst.SimpleString)):
        return "a constant"
    if isinstance(value, cst.Name):
        if value.value in ("None", "True", "False"):
            return "a constant"
        if value.value in assigned_in_try and not _bound_before(ctx, value.value, statement):
            return None
        return f"`{value.value}` unchanged"
    if isinstance(value, (cst.Tuple, cst.List)):
        parts = [_placeholder(ctx, e.value, assigned_in_try, statement) for e in value.elements]
        return "placeholders" if parts and all(p is not None for p in parts) else None
    if isinstance(value, cst.Call):
        func = value.func
        tail = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if tail in _PLACEHOLDERS:
            return "zeros" if "zeros" in tail else f"`{tail}(...)`"
    return None


def _assigned_names(body: cst.CSTNode) -> list[str]:
    return list(_assigned_values(body))


def _assigned_values(body: cst.CSTNode) -> dict[str, cst.BaseExpression | None]:
    """Names the block assigns, with the value when it is a single-name assignment (None for an
    element of an unpacking)."""
    found: dict[str, cst.BaseExpression | None] = {}
    for node in scope_nodes(body):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    found.setdefault(target.target.value, node.value)
                elif isinstance(target.target, (cst.Tuple, cst.List)):
                    for element in target.target.elements:
                        if isinstance(element.value, cst.Name):
                            found.setdefault(element.value.value, None)
        elif isinstance(node, (cst.AnnAssign, cst.AugAssign)) and isinstance(node.target, cst.Name):
            found.setdefault(node.target.value, node.value if isinstance(node, cst.AnnAssign) else None)
    return found


def _calls_something(ctx: FileContext, handler: cst.ExceptHandler) -> bool:
    """The handler calls something other than a logger or ``print`` (``x = self.fallback(x)``
    was caught above; a bare ``self.slow_path(x)`` call is another computation)."""
    for node in scope_nodes(handler.body):
        if isinstance(node, cst.Call):
            func = node.func
            name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
            if name in ("print", "warn", "warning", "info", "debug", "error", "exception", "log", "format"):
                continue
            return True
    return False


def _bound_before(ctx: FileContext, name: str, statement: cst.Try) -> bool:
    """The name has a value before the ``try`` runs (a parameter of the function, an earlier
    assignment)."""
    scopes = ctx.get(Scopes)
    function = scopes.function_of(statement)
    if function is None:
        return False
    start = ctx.order(statement)[0]
    return any(
        binding.kind == "parameter" or ctx.order(binding.statement)[1] < start
        for binding in scopes.records(function).get(name, ())
    )


def _used_after(ctx: FileContext, name: str, statement: cst.Try) -> bool:
    scopes = ctx.get(Scopes)
    function = scopes.function_of(statement)
    end = ctx.order(statement)[1]
    return function is not None and any(ctx.order(use)[0] > end for use in scopes.uses(name, function))
