"""Which values are probabilities: softmax and sigmoid outputs as the value-flow engine sees them
(through names, parameters, ``self`` attributes, returns and a model's ``forward``), the logs
taken of them, the loss modules that consume them, and whether a file computes in float16.

Shared by the numerical-stability rules (TL201-TL205). What a value *is* comes from the engine
(:class:`trainlint.analysis.values.ValueFlow`); this module turns its answers into the shapes the
rules ask about (a producer a fix can rewrite, a trace of what was done to a probability) and
holds the spelling helpers their fixes share.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import libcst as cst

from trainlint.analysis.values import Facts, Instance, Site, Tensor, ValueFlow, Values, evidence_text, number
from trainlint.analysis.values.torch_semantics import SHAPE_METHODS as _SHAPE_METHODS

if TYPE_CHECKING:
    from trainlint.context import FileContext

ProbabilityKind = Literal["softmax", "sigmoid"]
ProducerStyle = Literal["function", "method", "module", "layer"]
SHAPE_METHODS = _SHAPE_METHODS
_FLOOR_METHODS = frozenset({"clamp", "clamp_min", "clip", "clamp_", "clamp_min_", "clip_"})
_LIBRARIES = frozenset({"torch", "numpy", "math", "scipy", "sklearn", "torchvision", "transformers", "timm"})
# d/dx log(x + eps) = 1/(x + eps) exceeds float16's largest finite value (65504) once x + eps <
# 1/65504, so an eps below this cannot keep a float16 gradient finite at x = 0 (measured: eps 1e-5
# gives a NaN gradient, 2e-5 does not). It is also below float16's smallest normal, 6.1e-5.
FLOAT16_SAFE_EPS = 1 / 65504


@dataclass(frozen=True)
class Producer:
    """A call that outputs probabilities. ``input`` is its logits argument (None for the last
    layer of an ``nn.Sequential``: its logits are inside); ``constructor`` is the ``nn.Softmax(...)``
    construction for the module styles. ``local`` when the call is in the file being linted
    (only then can a fix rewrite it); ``tensor`` is the engine's value, for messages."""

    kind: ProbabilityKind
    call: cst.Call
    style: ProducerStyle
    input: cst.BaseExpression | None
    constructor: cst.Call | None = None
    local: bool = True
    tensor: Tensor | None = field(default=None, compare=False)

    def where(self) -> str:
        """`` (`nn.Sigmoid()` at models/gan.py:12, passed at train.py:40)`` for a producer outside
        the expression the message is about."""
        if self.tensor is None:
            return ""
        site = self.tensor.module if self.tensor.module is not None else self.tensor.site
        found = f"`{_short_code(site)}` at {site.location}"
        trail = evidence_text([self.tensor])
        return f" ({found}{', ' + trail[2:-1] if trail else ''})"


@dataclass
class Trace:
    """How a value derives from probabilities: the producers it comes from, the positive constants
    added on the way (``p + eps``), and whether it passed through ``1 - p`` or ``torch.where``
    (whose other branch may be a positive constant such as ``1.0`` or ``torch.ones_like(p)``)."""

    producers: list[Producer] = field(default_factory=list)
    eps: list[float] = field(default_factory=list)
    complement: bool = False
    selected: bool = False
    detached: bool = False  # every producer's value was detached on the way: no gradient

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(p.kind for p in self.producers)

    @property
    def local(self) -> bool:
        return all(p.local for p in self.producers)


def _short_code(site: Site) -> str:
    """``nn.Sigmoid()`` as written; a longer call as ``F.softmax(...)``."""
    code = " ".join(site.code().split())
    if len(code) > 30 and isinstance(site.node, cst.Call):
        return f"{site.ctx.code(site.node.func)}(...)"
    return code


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
        self.flow = ctx.get(ValueFlow)

    # -- producers -------------------------------------------------------------------------------
    def producer(self, expr: cst.BaseExpression) -> Producer | None:
        """The softmax/sigmoid call this expression is, if it is one (``F.softmax(x, 1)``,
        ``x.sigmoid()``, ``self.act(h)`` with ``self.act = nn.Sigmoid()``)."""
        if not isinstance(expr, cst.Call):
            return None
        values = self.flow.values(expr)
        if len(values) != 1 or values.unknown:
            return None
        tensor = values.items[0]
        if not isinstance(tensor, Tensor) or not tensor.is_probability or tensor.site.node is not expr:
            return None
        if tensor.style == "layer" or (tensor.style == "module" and len(expr.args) != 1):
            return None  # the activation ends a model: the call is the model's, not the activation's
        producer = self.producer_of(tensor)
        return producer if producer.local else None

    def producer_of(self, tensor: Tensor) -> Producer:
        call = tensor.site.node
        assert isinstance(call, cst.Call)
        logits: cst.BaseExpression | None = None
        if tensor.style == "method" and isinstance(call.func, cst.Attribute):
            logits = call.func.value
        elif tensor.style in ("function", "module"):
            argument = positional_argument(call, 0, "input")
            logits = argument.value if argument is not None else None
        constructor = tensor.module.node if tensor.module is not None else None
        return Producer(
            kind=tensor.kind,  # type: ignore[arg-type]
            call=call,
            style=tensor.style,
            input=logits,
            constructor=constructor if isinstance(constructor, cst.Call) else None,
            local=tensor.site.ctx is self.ctx and (tensor.module is None or tensor.module.ctx is self.ctx),
            tensor=tensor,
        )

    def module_instances(self, callee: cst.BaseExpression, qualified_names: frozenset[str]) -> list[Instance]:
        """The module instances ``callee`` may be, when every one is one of ``qualified_names``
        (``nn.BCELoss()`` built inline, in a local name, in ``self.loss``, passed as a parameter,
        returned by a factory, a constructor's default, or each of several such); empty when
        unknown or anything else."""
        if not isinstance(callee, (cst.Name, cst.Attribute, cst.Call)):
            return []
        qualified = self.ctx.qualified_name(callee) if not isinstance(callee, cst.Call) else None
        if qualified is not None and qualified.split(".")[0] in _LIBRARIES:
            return []  # `F.relu`, `torch.log`: a library's function or class, not an instance
        values = self.flow.values(callee)
        # A constructor default (`loss_fn=nn.CrossEntropyLoss()`) of a class built outside the
        # project counts: a caller from outside is assumed to keep it (Values.untraced).
        if values.untraced or not values.items:
            return []
        if not all(isinstance(v, Instance) and v.cls in qualified_names for v in values):
            return []
        return values.of_type(Instance)

    # -- logs ------------------------------------------------------------------------------------
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

    def _is_module_or_self(self, receiver: cst.BaseExpression) -> bool:
        if isinstance(receiver, cst.Name) and receiver.value in {"self", "cls"}:
            return True
        return self.ctx.qualified_name(receiver) is not None

    def log_calls(self) -> Iterator[tuple[cst.Call, cst.BaseExpression]]:
        """Every ``torch.log(x)`` / ``x.log()`` with its argument, in source order."""
        for call in self.ctx.nodes.of(cst.Call):
            argument = self.log_argument(call)
            if argument is not None:
                yield call, argument

    # -- constants -------------------------------------------------------------------------------
    def constant(self, expr: cst.BaseExpression) -> float | None:
        """The one number ``expr`` may be (a literal, a name or attribute bound to one, a
        parameter whose default and arguments agree); None when it may be several or unknown."""
        literal = numeric_literal(expr)
        if literal is not None:
            return literal
        values = self.flow.values(expr)
        numbers = {number(v) for v in values}
        if values.unknown or len(numbers) != 1 or None in numbers:
            return None
        return numbers.pop()

    def floor_of(self, expr: cst.BaseExpression) -> float | None:
        """The floor ``expr`` provably stays above, when every value it may be has one (a
        ``clamp(min=c)``, a positive constant, a floored value plus an eps); else None."""
        values = self.flow.values(expr)
        floors = [v.floor if isinstance(v, Facts) else number(v) for v in values]
        if values.unknown or not floors or any(f is None or f <= 0 for f in floors):
            return None
        return min(f for f in floors if f is not None)

    def carries_no_gradient(self, expr: cst.BaseExpression) -> bool:
        """Every value ``expr`` may be is detached (``x.detach()``, computed from detached
        tensors) or a constant: no gradient flows back through it."""
        return self.flow.values(expr).must(
            lambda v: (isinstance(v, Facts) and v.detached) or (isinstance(v, Tensor) and v.detached) or number(v) is not None
        )

    def positive_constant(self, expr: cst.BaseExpression) -> float | None:
        value = self.constant(expr)
        return value if value is not None and value > 0 else None

    # -- where a value comes from ----------------------------------------------------------------
    def trace(self, expr: cst.BaseExpression) -> Trace | None:
        """How ``expr`` derives from softmax/sigmoid outputs, wherever they are (through names,
        parameters, returns, a model's ``forward``, indexing, ``gather``, reshapes, casts,
        ``torch.where``, ``1 - p`` and ``p + eps``); None when any part of it may be something
        else, or passes a floor (``clamp``, ``max``)."""
        if isinstance(expr, cst.BinaryOperation) and not isinstance(expr.operator, (cst.Add, cst.Subtract)):
            # `1 / v`, `p * mask`, `p / p.sum()`: the engine makes no probability of a product or a
            # quotient, so there is no need to ask what the operands are (a project-wide search
            # when one is a parameter)
            return None
        return self.trace_values(self.flow.values(expr))

    def trace_values(self, values: Values) -> Trace | None:
        if values.may(lambda v: isinstance(v, Tensor) and v.masked):  # torch.where(c, p, 1.0)
            values = values.without(lambda v: (number(v) or 0.0) > 0)
        if not values.must(lambda v: isinstance(v, Tensor) and v.is_probability and not v.floored):
            return None
        tensors = values.of_type(Tensor)
        floor = min(sum(t.offsets) for t in tensors)  # the smallest eps any of them has
        return Trace(
            producers=[self.producer_of(t) for t in tensors],
            eps=[floor] if floor > 0 else [],
            complement=any(t.complement for t in tensors),
            selected=any(t.masked for t in tensors),
            detached=all(t.detached or _computed_without_gradient(t) for t in tensors),
        )

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


def _computed_without_gradient(tensor: Tensor) -> bool:
    """The probabilities are computed inside ``no_grad``/``inference_mode`` (a ``with`` around
    their call, or a decorated function): nothing flows back to them, wherever they are used."""
    from trainlint.analysis.regions import Regions  # regions build on the engine, as this does

    return tensor.site.ctx.get(Regions).computes_no_gradient(tensor.site.node, depth=0)
