"""Which values are probabilities: softmax and sigmoid outputs, the logs taken of them, the way a
value is derived from them inside a function (or a script's top-level code), the module instances
that compute or consume them, and whether a file computes in float16.

Shared by the numerical-stability rules (TL201-TL205). Recognition goes through qualified names
(``F.softmax`` after ``import torch.nn.functional as F``), tensor methods (``x.softmax(-1)``,
``x.sigmoid()``, ``p.log()``) and module instances (``nn.Softmax(dim=1)`` built inline, in a local
name or in ``self.<attr>`` of the same class).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import libcst as cst

from trainlint.analysis.value_origin import ValueOrigins

if TYPE_CHECKING:
    from trainlint.context import FileContext

ProbabilityKind = Literal["softmax", "sigmoid"]
ProducerStyle = Literal["function", "method", "module"]

_PRODUCER_FUNCTIONS: dict[str, ProbabilityKind] = {
    "torch.softmax": "softmax",
    "torch.nn.functional.softmax": "softmax",
    "torch.special.softmax": "softmax",
    "torch.sigmoid": "sigmoid",
    "torch.nn.functional.sigmoid": "sigmoid",
    "torch.special.expit": "sigmoid",
}
_PRODUCER_MODULES: dict[str, ProbabilityKind] = {
    "torch.nn.Softmax": "softmax",
    "torch.nn.modules.activation.Softmax": "softmax",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
_PRODUCER_MODULE_NAMES = frozenset(_PRODUCER_MODULES)
# Tensor methods and torch functions that only select or reshape values: a probability stays one.
_SELECTING_METHODS = frozenset({"gather", "take_along_dim", "index_select", "masked_select"})
_SELECTING_FUNCTIONS = frozenset({"torch.gather", "torch.take_along_dim", "torch.index_select", "torch.masked_select"})
# Shape methods move values without changing them: log(p.view(-1)) == log(p).view(-1) exactly.
SHAPE_METHODS = frozenset(
    {"squeeze", "unsqueeze", "view", "reshape", "flatten", "contiguous", "view_as", "reshape_as", "expand",
     "expand_as", "permute", "transpose", "t"}
)
_CAST_METHODS = frozenset({"float", "double", "to", "type"})
_RESHAPING_METHODS = SHAPE_METHODS | _CAST_METHODS
_FLOOR_METHODS = frozenset({"clamp", "clamp_min", "clip", "clamp_", "clamp_min_", "clip_"})
_POSITIVE_CONSTANT_FUNCTIONS = frozenset({"torch.ones_like", "torch.ones"})
# d/dx log(x + eps) = 1/(x + eps) exceeds float16's largest finite value (65504) once x + eps <
# 1/65504, so an eps below this cannot keep a float16 gradient finite at x = 0 (measured: eps 1e-5
# gives a NaN gradient, 2e-5 does not). It is also below float16's smallest normal, 6.1e-5.
FLOAT16_SAFE_EPS = 1 / 65504
_MAX_DEPTH = 12


@dataclass(frozen=True)
class Producer:
    """A call that outputs probabilities. ``input`` is its logits argument; ``constructor`` is the
    ``nn.Softmax(...)`` call for the module style."""

    kind: ProbabilityKind
    call: cst.Call
    style: ProducerStyle
    input: cst.BaseExpression
    constructor: cst.Call | None = None


@dataclass
class Trace:
    """How a value derives from probabilities: the producers it comes from, the positive constants
    added on the way (``p + eps``), and whether it passed through ``1 - p`` or ``torch.where``
    (whose other branch may be a positive constant such as ``1.0`` or ``torch.ones_like(p)``)."""

    producers: list[Producer] = field(default_factory=list)
    eps: list[float] = field(default_factory=list)
    complement: bool = False
    selected: bool = False

    def merge(self, other: Trace) -> Trace:
        return Trace(
            [*self.producers, *other.producers],
            [*self.eps, *other.eps],
            self.complement or other.complement,
            self.selected or other.selected,
        )

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(p.kind for p in self.producers)


def positional_argument(call: cst.Call, index: int, keyword: str | None = None) -> cst.Arg | None:
    """The argument at a position (before any keyword or star), or the one passed by keyword."""
    positional = [a for a in call.args if a.keyword is None and a.star == ""]
    if index < len(positional) and all(a.keyword is None and a.star == "" for a in call.args[: index + 1]):
        return positional[index]
    if keyword is not None:
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value == keyword:
                return arg
    return None


def is_atomic(expr: cst.BaseExpression) -> bool:
    """True when the expression can take ``.method()`` or ``[...]`` without parentheses."""
    return bool(expr.lpar) or isinstance(
        expr, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.List, cst.Tuple, cst.Dict, cst.Set)
    )


def numeric_literal(expr: cst.BaseExpression) -> float | None:
    """The value of ``1e-8``, ``3``, ``-1``; None for anything else."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        try:
            return float(expr.evaluated_value)
        except (ValueError, OverflowError):
            return None
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        inner = numeric_literal(expr.expression)
        return None if inner is None else -inner
    return None


def format_float(value: float) -> str:
    """``1e-6`` rather than Python's ``1e-06``."""
    text = f"{value:g}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)


class Probabilities:
    """Probability facts for one file (``ctx.get(Probabilities)``)."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.values = ctx.get(ValueOrigins)
        self._construction_cache: dict[frozenset[str], tuple[set[cst.Call], set[str]]] = {}

    # -- calls -----------------------------------------------------------------------------------
    def producer(self, expr: cst.BaseExpression) -> Producer | None:
        """The softmax/sigmoid call this expression is, if it is one."""
        if not isinstance(expr, cst.Call):
            return None
        constructor = self.module_kind(expr.func, _PRODUCER_MODULE_NAMES)
        if constructor is not None:
            kind = _PRODUCER_MODULES[self.ctx.qualified_name(constructor.func) or ""]
            argument = positional_argument(expr, 0, "input")
            if argument is None or len(expr.args) != 1:
                return None
            return Producer(kind, expr, "module", argument.value, constructor)
        qualified = self.ctx.qualified_name(expr.func)
        if qualified is not None:
            kind = _PRODUCER_FUNCTIONS.get(qualified)
            argument = positional_argument(expr, 0, "input")
            if kind is None or argument is None or any(a.keyword and a.keyword.value == "out" for a in expr.args):
                return None
            return Producer(kind, expr, "function", argument.value)
        return self._method_producer(expr)

    def _method_producer(self, call: cst.Call) -> Producer | None:
        func = call.func
        if not isinstance(func, cst.Attribute) or self._is_module_or_self(func.value):
            return None
        name = func.attr.value
        if name == "sigmoid" and not call.args:
            return Producer("sigmoid", call, "method", func.value)
        if name == "softmax" and call.args and self._looks_like_dim(call):
            return Producer("softmax", call, "method", func.value)
        return None

    @staticmethod
    def _looks_like_dim(call: cst.Call) -> bool:
        """``x.softmax(-1)``, ``x.softmax(dim=1)``: the first argument is a dim, not a tensor."""
        first = call.args[0]
        if first.keyword is not None:
            return first.keyword.value == "dim"
        return first.star == "" and not isinstance(first.value, (cst.Call, cst.BinaryOperation, cst.Subscript))

    def _is_module_or_self(self, receiver: cst.BaseExpression) -> bool:
        """True for ``torch``/``np`` and other imported names, and for bare ``self``: their
        ``.softmax(...)`` is a function or a submodule, not a tensor method."""
        if isinstance(receiver, cst.Name) and receiver.value in {"self", "cls"}:
            return True
        return self.ctx.qualified_name(receiver) is not None

    def module_constructor(self, callee: cst.BaseExpression) -> cst.Call | None:
        """The call that built the module instance ``callee`` refers to: ``nn.BCELoss()`` for
        ``nn.BCELoss()(...)``, for a local ``criterion`` bound once to it, or for ``self.loss``
        assigned once in the class. None when unknown or bound to several things."""
        if isinstance(callee, cst.Call):
            return callee
        if isinstance(callee, cst.Name):
            leaves = self.values.origins(callee)
            return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], cst.Call) else None
        if isinstance(callee, cst.Attribute) and isinstance(callee.value, cst.Name) and callee.value.value == "self":
            class_def = self.ctx.enclosing(callee, cst.ClassDef)
            if class_def is None:
                return None
            values = self.values.attribute_values(class_def, callee.attr.value)
            if values is None or len(values) != 1 or not isinstance(values[0], cst.Call):
                return None
            return values[0]
        return None

    def module_kind(self, callee: cst.BaseExpression, qualified_names: frozenset[str]) -> cst.Call | None:
        """The constructor of ``callee`` when it builds one of ``qualified_names``. Only callees
        that may be bound to such a construction in this file are followed (a cheap filter:
        most calls in a file are not module instances)."""
        constructions, bound_names = self._constructions(qualified_names)
        if isinstance(callee, cst.Call):
            return callee if callee in constructions else None
        name = callee.attr.value if isinstance(callee, cst.Attribute) else getattr(callee, "value", None)
        if name not in bound_names:
            return None
        constructor = self.module_constructor(callee)
        return constructor if constructor in constructions else None

    def _constructions(self, qualified_names: frozenset[str]) -> tuple[set[cst.Call], set[str]]:
        """The calls that construct one of the modules, and the names and ``self`` attributes
        they are assigned to."""
        found = self._construction_cache.get(qualified_names)
        if found is None:
            calls = {c for c in self.ctx.nodes.of(cst.Call) if self.ctx.qualified_name(c.func) in qualified_names}
            names: set[str] = set()
            for call in calls:
                parent = self.ctx.parent(call)
                if isinstance(parent, cst.Assign):
                    targets = [t.target for t in parent.targets]
                else:
                    targets = [parent.target] if isinstance(parent, cst.AnnAssign) else []
                for node in targets:
                    if isinstance(node, cst.Name):
                        names.add(node.value)
                    elif isinstance(node, cst.Attribute):
                        names.add(node.attr.value)
            found = self._construction_cache[qualified_names] = (calls, names)
        return found

    def log_argument(self, call: cst.Call) -> cst.BaseExpression | None:
        """``x`` for ``torch.log(x)`` and ``x.log()``; None for any other call."""
        qualified = self.ctx.qualified_name(call.func)
        if qualified == "torch.log":
            argument = positional_argument(call, 0, "input")
            return argument.value if argument is not None and len(call.args) == 1 else None
        func = call.func
        if (
            qualified is None
            and isinstance(func, cst.Attribute)
            and func.attr.value == "log"
            and not call.args
            and not self._is_module_or_self(func.value)
        ):
            return func.value
        return None

    def log_calls(self) -> Iterator[tuple[cst.Call, cst.BaseExpression]]:
        """Every ``torch.log(x)`` / ``x.log()`` with its argument, in source order."""
        for call in self.ctx.nodes.of(cst.Call):
            argument = self.log_argument(call)
            if argument is not None:
                yield call, argument

    # -- constants -------------------------------------------------------------------------------
    def constant(self, expr: cst.BaseExpression, depth: int = 0) -> float | None:
        """A numeric value known in the file: a literal, or a name bound once to one (locally or at
        module level), or ``self.<attr>`` assigned one literal in the class."""
        literal = numeric_literal(expr)
        if literal is not None or depth > 3:
            return literal
        if isinstance(expr, cst.Name):
            return self._name_constant(expr, depth)
        if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            class_def = self.ctx.enclosing(expr, cst.ClassDef)
            values = self.values.attribute_values(class_def, expr.attr.value) if class_def else None
            if values and len(values) == 1:
                return self.constant(values[0], depth + 1)
        return None

    def _name_constant(self, name: cst.Name, depth: int) -> float | None:
        leaves = self.values.origins(name)
        if len(leaves) == 1 and not isinstance(leaves[0], cst.Name):
            return self.constant(leaves[0], depth + 1)
        if len(leaves) == 1 and leaves[0] is name:  # a global read inside a function
            return self._module_constants.get(name.value)
        return None  # a parameter, or bound to several things

    @cached_property
    def _module_constants(self) -> dict[str, float]:
        """Module-level names assigned exactly once, to a numeric literal (``EPS = 1e-8``)."""
        found: dict[str, list[float | None]] = {}
        for line in self.ctx.module.body:
            if not isinstance(line, cst.SimpleStatementLine):
                continue
            for statement in line.body:
                if isinstance(statement, cst.Assign) and len(statement.targets) == 1:
                    target = statement.targets[0].target
                    if isinstance(target, cst.Name):
                        found.setdefault(target.value, []).append(numeric_literal(statement.value))
                elif isinstance(statement, cst.AnnAssign) and isinstance(statement.target, cst.Name):
                    value = numeric_literal(statement.value) if statement.value is not None else None
                    found.setdefault(statement.target.value, []).append(value)
        return {k: v[0] for k, v in found.items() if len(v) == 1 and v[0] is not None}

    def positive_constant(self, expr: cst.BaseExpression) -> float | None:
        value = self.constant(expr)
        return value if value is not None and value > 0 else None

    # -- where a value comes from ----------------------------------------------------------------
    def trace(self, expr: cst.BaseExpression, depth: int = 0) -> Trace | None:
        """How ``expr`` derives from softmax/sigmoid outputs inside its function, through names,
        indexing, ``gather``, reshapes and casts, ``torch.where``, ``1 - p`` and ``p + eps``; None
        when any part of it may be something else, or passes a floor (``clamp``, ``max``)."""
        if depth > _MAX_DEPTH:
            return None
        producer = self.producer(expr)
        if producer is not None:
            return Trace([producer])
        if isinstance(expr, cst.Name):
            return self._trace_name(expr, depth)
        if isinstance(expr, cst.Subscript):
            return self.trace(expr.value, depth + 1)
        if isinstance(expr, cst.BinaryOperation):
            return self._trace_arithmetic(expr, depth)
        if isinstance(expr, cst.Call):
            return self._trace_call(expr, depth)
        return None

    def _trace_name(self, name: cst.Name, depth: int) -> Trace | None:
        leaves = self.values.origins(name)
        if not leaves or any(isinstance(leaf, cst.Name) for leaf in leaves):
            return None  # a parameter, a global or an unpacked name: unknown
        return self._merge_all(leaves, depth, allow_constants=False)

    def _merge_all(self, parts: list[cst.BaseExpression], depth: int, allow_constants: bool) -> Trace | None:
        merged: Trace | None = None
        constants = 0
        for part in parts:
            if allow_constants and self._is_positive_constant_tensor(part):
                constants += 1
                continue
            found = self.trace(part, depth + 1)
            if found is None:
                return None
            merged = found if merged is None else merged.merge(found)
        return merged

    def _is_positive_constant_tensor(self, expr: cst.BaseExpression) -> bool:
        if self.positive_constant(expr) is not None:
            return True
        return isinstance(expr, cst.Call) and self.ctx.qualified_name(expr.func) in _POSITIVE_CONSTANT_FUNCTIONS

    def _trace_arithmetic(self, expr: cst.BinaryOperation, depth: int) -> Trace | None:
        if isinstance(expr.operator, cst.Subtract) and numeric_literal(expr.left) == 1.0:
            found = self.trace(expr.right, depth + 1)
            return None if found is None else Trace(found.producers, found.eps, True, found.selected)
        if isinstance(expr.operator, cst.Add):
            for value, eps in ((expr.left, expr.right), (expr.right, expr.left)):
                amount = self.positive_constant(eps)
                if amount is not None:
                    found = self.trace(value, depth + 1)
                    if found is None:
                        return None
                    return Trace(found.producers, [*found.eps, amount], found.complement, found.selected)
        return None

    def _trace_call(self, call: cst.Call, depth: int) -> Trace | None:
        qualified = self.ctx.qualified_name(call.func)
        if qualified in _SELECTING_FUNCTIONS:
            source = positional_argument(call, 0, "input")
            return None if source is None else self.trace(source.value, depth + 1)
        if qualified == "torch.where" and len(call.args) == 3 and all(a.keyword is None for a in call.args):
            found = self._merge_all([call.args[1].value, call.args[2].value], depth, allow_constants=True)
            return None if found is None else Trace(found.producers, found.eps, found.complement, True)
        func = call.func
        if qualified is None and isinstance(func, cst.Attribute) and not self._is_module_or_self(func.value):
            method = func.attr.value
            if method in _SELECTING_METHODS or method in _RESHAPING_METHODS:
                return self.trace(func.value, depth + 1)
        return None

    def is_floor(self, expr: cst.BaseExpression) -> bool:
        """``x.clamp(min=...)``, ``torch.clamp(x, ...)``, ``torch.max(x, eps)`` and the like."""
        if not isinstance(expr, cst.Call):
            return False
        qualified = self.ctx.qualified_name(expr.func)
        if qualified in {"torch.clamp", "torch.clip", "torch.clamp_min", "torch.max", "torch.maximum", "torch.fmax"}:
            return True
        func = expr.func
        return qualified is None and isinstance(func, cst.Attribute) and func.attr.value in _FLOOR_METHODS

    # -- spelling fixes --------------------------------------------------------------------------
    def functional(self, attr: str) -> str | None:
        """How to spell ``torch.nn.functional.<attr>`` here without a new import: ``F.<attr>``
        through an existing alias, ``<attr>`` when imported by name, else the full path through
        an imported ``torch``; None when none of these is available."""
        bindings = self.ctx.imports.bindings
        aliases = sorted(name for name, target in bindings.items() if target == "torch.nn.functional")
        if aliases:
            return f"{'F' if 'F' in aliases else aliases[0]}.{attr}"
        if bindings.get(attr) == f"torch.nn.functional.{attr}":
            return attr
        torch_names = sorted(name for name, target in bindings.items() if target == "torch")
        if torch_names:
            return f"{'torch' if 'torch' in torch_names else torch_names[0]}.nn.functional.{attr}"
        return None

    def renamed_callee(self, func: cst.BaseExpression, new_attr: str) -> str | None:
        """``F.log_softmax`` for ``F.softmax``, ``x.log_softmax`` for ``x.softmax``: the same
        spelling with the last name changed; for a bare imported name, the functional spelling."""
        if isinstance(func, cst.Attribute):
            return self.ctx.code(func.with_changes(attr=cst.Name(new_attr)))
        qualified = self.ctx.qualified_name(func) or ""
        if qualified.startswith("torch.nn.functional."):
            return self.functional(new_attr)
        if qualified.startswith("torch.") and qualified.count(".") == 1:
            torch_names = sorted(n for n, t in self.ctx.imports.bindings.items() if t == "torch")
            return f"{torch_names[0]}.{new_attr}" if torch_names else None
        return None

    def code_without_parens(self, expr: cst.BaseExpression) -> str:
        return self.ctx.code(expr.with_changes(lpar=[], rpar=[])) if expr.lpar else self.ctx.code(expr)

    def receiver_code(self, expr: cst.BaseExpression) -> str:
        """Code for ``expr`` placed before ``.method()``: parenthesized unless atomic."""
        return self.ctx.code(expr) if is_atomic(expr) else f"({self.ctx.code(expr)})"

    # -- precision -------------------------------------------------------------------------------
    @cached_property
    def computes_in_float16(self) -> bool:
        """True when the file shows float16 computation: ``torch.float16``/``torch.half``,
        ``.half()``, a ``GradScaler``, or an ``autocast`` that is neither bfloat16 nor on CPU."""
        ctx = self.ctx
        for attribute in ctx.nodes.of(cst.Attribute):
            if ctx.qualified_name(attribute) in {"torch.float16", "torch.half"}:
                return True
        for call in ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "half" and not call.args:
                return True
            qualified = ctx.qualified_name(func) or ""
            if qualified.endswith(".GradScaler"):
                return True
            if qualified.endswith(".autocast") and qualified != "torch.cpu.amp.autocast":
                text = ctx.code(call)
                if "bfloat16" not in text and "'cpu'" not in text and '"cpu"' not in text:
                    return True
        return False
