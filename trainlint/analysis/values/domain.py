"""The answers of the value-flow engine: what an expression may be.

An answer is a :class:`Values`: a small set of abstract values, and whether the value may also be
something the engine cannot see (``unknown``). Each abstract value carries the evidence that
produced it (where it was passed, which default it came from), used in messages only: two values
that differ only in their evidence are the same value.

The kinds of value:

- :class:`Instance`: an object of a known class. ``cls`` is its qualified name
  (``torch.nn.BCELoss``, ``torch.amp.GradScaler``, ``models.gan.Discriminator``); ``site`` is the
  construction call (None for ``self``), from which the engine reads its arguments on request.
- :class:`ClassRef` and :class:`FunctionRef`: a class or a function, of the project (``site`` is
  its ``class``/``def``) or of a library (``site`` None); a function keeps the arguments a
  ``functools.partial`` fixed.
- :class:`Tensor`: a tensor with a known producer (``softmax``, ``sigmoid``, ``log_softmax``,
  ``log_sigmoid``, ``log`` for ``torch.log(x)`` of anything, ``grad`` for ``p.grad``, ``scaled`` for
  ``scaler.scale(loss)``), kept through shape-only
  operations, with what was done to it on the way (an added eps, ``1 - p``, a floor, a mask,
  a selection, ``detach``).
- :class:`Facts`: a tensor of unknown origin with a known positive floor (``x.clamp(min=1e-6)``)
  or known to carry no gradient (``x.detach()``).
- :class:`Constant`: a Python literal (a number, a string, True/False/None).
- :class:`Collection`: a tuple, list or dict literal, a tuple of returns, ``accelerator.prepare``'s
  results; ``homogeneous`` when its length is unknown and every item is ``items[0]``.
- :class:`Parameters`: the parameters of some modules (``model.parameters()``).
- :class:`Param`: a parameter of a function, symbolic; only inside a function's summary, replaced
  by the arguments at each call.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, TypeVar

import libcst as cst

if TYPE_CHECKING:
    from trainlint.context import FileContext


@dataclass(frozen=True)
class Site:
    """A node of a parsed module of the project. Compared by the node (LibCST nodes compare by
    identity), so a site is the same wherever it was reached from."""

    ctx: FileContext = field(compare=False, repr=False)
    node: cst.CSTNode

    @property
    def location(self) -> str:
        """``train.py:88`` (computes the module's positions: only for messages)."""
        line = self.ctx.range(self.node).start.line
        return f"{_short_path(self.ctx)}:{line}"

    def code(self) -> str:
        return self.ctx.code(self.node)


def _short_path(ctx: FileContext) -> str:
    """The file as the user knows it: relative to the project's root when inside it."""
    if ctx.real_path is None:
        return ctx.path
    path = ctx.real_path.resolve()
    for root in ctx.project.roots:
        if root in path.parents:
            return path.relative_to(root).as_posix()
    return ctx.path


EvidenceKind = Literal["passed", "default", "returned", "attribute", "built", "element"]


@dataclass(frozen=True)
class Evidence:
    """One step of how a value reached the expression asked about."""

    kind: EvidenceKind
    site: Site
    detail: str = ""  # the parameter or attribute name, the function

    def describe(self) -> str:
        if self.kind == "passed":
            return f"passed at {self.site.location}"
        if self.kind == "default":
            return f"the default `{self.detail}`"
        if self.kind == "returned":
            return f"returned by `{self.detail}()` at {self.site.location}"
        if self.kind == "attribute":
            return f"`{self.detail}` set at {self.site.location}"
        if self.kind == "built":
            return f"built at {self.site.location}"
        return f"from {self.site.location}"


@dataclass(frozen=True)
class Value:
    evidence: tuple[Evidence, ...] = field(default=(), compare=False, kw_only=True)

    def with_evidence(self: V, step: Evidence) -> V:
        if step in self.evidence:
            return self
        return replace(self, evidence=(step, *self.evidence))


V = TypeVar("V", bound=Value)


@dataclass(frozen=True)
class Instance(Value):
    cls: str
    site: Site | None = None  # the construction call

    @property
    def call(self) -> cst.Call | None:
        node = self.site.node if self.site is not None else None
        return node if isinstance(node, cst.Call) else None

    @property
    def name(self) -> str:
        return self.cls.rpartition(".")[2]


@dataclass(frozen=True)
class ClassRef(Value):
    """A class: of the project (``site`` is its ``class`` statement) or of a library (None)."""

    qualified: str
    site: Site | None = None
    bound: tuple[Values, ...] = ()  # what a ``functools.partial`` fixed
    bound_keywords: tuple[tuple[str, Values], ...] = ()

    @property
    def name(self) -> str:
        return self.qualified.rpartition(".")[2]


@dataclass(frozen=True)
class FunctionRef(Value):
    """A function or method: of the project (``site`` is its ``def``) or of a library (None);
    ``bound`` and ``bound_keywords`` hold what a ``functools.partial`` fixed."""

    qualified: str
    site: Site | None = None
    bound: tuple[Values, ...] = ()
    bound_keywords: tuple[tuple[str, Values], ...] = ()

    @property
    def name(self) -> str:
        return self.qualified.rpartition(".")[2]


TensorKind = Literal["softmax", "sigmoid", "log_softmax", "log_sigmoid", "log", "grad", "scaled"]
PROBABILITY_KINDS = frozenset({"softmax", "sigmoid"})


TensorStyle = Literal["function", "method", "module", "layer"]


@dataclass(frozen=True)
class Tensor(Value):
    """``site`` is the call that produced it: ``F.softmax(x, 1)``, ``x.sigmoid()``, a module's
    call ``self.act(h)`` (style "module", ``module`` its construction ``nn.Sigmoid()``), or the
    call of an ``nn.Sequential`` whose last layer is the activation (style "layer")."""

    kind: TensorKind
    site: Site
    offsets: tuple[float, ...] = ()  # positive constants added: ``p + 1e-7``
    complement: bool = False  # ``1 - p``
    masked: bool = False  # through ``torch.where``, whose other branch may be anything
    floored: bool = False  # through ``clamp``/``max`` with a floor
    selected: bool = False  # indexed, gathered or masked-selected
    detached: bool = False  # ``.detach()``: no gradient flows back through it
    style: TensorStyle = "function"
    module: Site | None = None  # the activation module's construction (styles "module", "layer")

    @property
    def is_probability(self) -> bool:
        return self.kind in PROBABILITY_KINDS


@dataclass(frozen=True)
class Facts(Value):
    """A tensor of unknown origin with what is known of it: a positive ``floor`` it stays above
    (``x.clamp(min=1e-6)``, ``torch.maximum(x, eps)``, plus an eps), and whether it is
    ``detached`` from the graph (``.detach()``, or computed from detached tensors and constants
    only: no gradient flows back through it)."""

    floor: float | None = None
    detached: bool = False


@dataclass(frozen=True)
class Constant(Value):
    value: float | int | bool | str | None


CollectionKind = Literal["tuple", "list", "dict"]


@dataclass(frozen=True)
class Collection(Value):
    kind: CollectionKind
    items: tuple[Values, ...]
    keys: tuple[str | None, ...] = ()  # for a dict: the string keys, None where not a string
    homogeneous: bool = False  # unknown length: every item is items[0]

    def item(self, index: int | str) -> Values:
        if self.homogeneous:
            return self.items[0] if self.items else UNKNOWN
        if isinstance(index, str):
            for key, value in zip(self.keys, self.items):
                if key == index:
                    return value
            return UNKNOWN
        if -len(self.items) <= index < len(self.items):
            return self.items[index]
        return UNKNOWN

    def every_item(self) -> Values:
        return Values.union(self.items) if self.items else UNKNOWN


@dataclass(frozen=True)
class Parameters(Value):
    owners: Values  # the modules whose parameters these are


@dataclass(frozen=True)
class Param(Value):
    function: cst.FunctionDef = field(repr=False)
    name: str


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Values:
    """What an expression may be: the known values, and whether it may be something else.

    ``untraced`` says why it may be something else: True when code the engine cannot follow
    computes it (an unknown call, ``x += 1``); False when it only comes from outside the project
    (a parameter no visible code passes, an attribute no code of the class sets), where what the
    project's own names say of it is all there is to go on."""

    items: tuple[Value, ...] = ()
    unknown: bool = False
    untraced: bool = False

    @staticmethod
    def of(*items: Value) -> Values:
        return Values(tuple(dict.fromkeys(items)))

    @staticmethod
    def union(parts: Iterable[Values]) -> Values:
        items: dict[Value, None] = {}
        unknown = untraced = False
        for part in parts:
            unknown = unknown or part.unknown
            untraced = untraced or part.untraced
            for item in part.items:
                if item not in items:
                    items[item] = None
        return Values(tuple(items), unknown, untraced)

    def __or__(self, other: Values) -> Values:
        return Values.union((self, other))

    def __iter__(self) -> Iterator[Value]:
        return iter(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def map(self, function: Callable[[Value], Values]) -> Values:
        """Each value transformed; what is unknown stays unknown, for the same reason."""
        rest = [Values((), True, self.untraced)] if self.unknown else []
        return Values.union([function(item) for item in self.items] + rest)

    def with_evidence(self, step: Evidence) -> Values:
        return Values(tuple(item.with_evidence(step) for item in self.items), self.unknown, self.untraced)

    def of_type(self, kind: type[V]) -> list[V]:
        return [item for item in self.items if isinstance(item, kind)]

    def must(self, predicate: Callable[[Value], bool]) -> bool:
        """Every value that may reach satisfies it, and nothing unknown reaches."""
        return bool(self.items) and not self.unknown and all(predicate(item) for item in self.items)

    def may(self, predicate: Callable[[Value], bool]) -> bool:
        return any(predicate(item) for item in self.items)

    def without(self, predicate: Callable[[Value], bool]) -> Values:
        return Values(tuple(item for item in self.items if not predicate(item)), self.unknown, self.untraced)

    def constants(self) -> list[float | int | bool | str | None]:
        return [item.value for item in self.items if isinstance(item, Constant)]


UNKNOWN = Values((), True, True)  # computed by code the engine cannot follow
EXTERNAL = Values((), True, False)  # given from outside the project (see Values.untraced)
NOTHING = Values()


def is_none(value: Value) -> bool:
    return isinstance(value, Constant) and value.value is None


def number(value: Value) -> float | None:
    """The value of a numeric constant (not a bool)."""
    if isinstance(value, Constant) and isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
        return float(value.value)
    return None


def evidence_text(values: Iterable[Value]) -> str:
    """`` (passed at train.py:88)``: the first evidence of the first value that has some."""
    for value in values:
        if value.evidence:
            return f" ({value.evidence[0].describe()})"
    return ""
