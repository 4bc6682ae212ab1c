"""What a training step does, in what order, on which optimizer and which GradScaler.

One ``TrainingStep`` per function or method that runs a backward or an optimizer step itself.
Its events (backward, ``scaler.unscale_``, gradient inspections, clipping, ``scaler.step``,
``opt.step``, ``scaler.update``, ``zero_grad``, early ``continue``/``return``) are listed in source
order, with calls to helpers defined in the same module inlined where they are called, and
``paths()`` walks them through ``if``/``else``, ``try``, ``match`` and loops so that two calls in
exclusive branches are never seen together. Rules ask this analysis; they never walk the tree
for these facts themselves.

When a loop repeats the step (``for batch in loader:`` around the backward and the optimizer
step), the step is that loop's body: a ``continue`` or ``break`` of that loop, or a ``return``,
that bypasses part of the step is a SKIP event and ends its path.

Scalers are told apart by how they were made: a ``GradScaler`` constructor (any import path or
alias; ``enabled=False`` written literally makes it no scaler at all), a parameter or an
attribute named like a scaler that is used like one. A receiver used like a scaler but made by an
unknown call is *uncertain*: its events are listed, it is not in ``TrainingStep.scalers``, and
rules stay quiet about it.

API (stable; extended, never renamed): ``EventKind``, ``StepEvent``, ``SkipGuard``,
``ScalerInfo``, ``OptimizerInfo``, ``TrainingStep``, ``TrainingSteps`` (``ctx.get(TrainingSteps)``;
``all_steps()`` includes the script's top-level loop), the kind sets ``BACKWARD_KINDS`` and
``STEP_KINDS``, path facts ``backwards_feeding``, ``events_after``, ``clears_gradients_of``,
``TrainingStep.paths_through``, ``in_helper`` for messages, and for fixes
``unscale_insertion``, ``statement_in_step`` and ``removal_edit``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.values import Instance, Scopes, Tensor, ValueFlow, Values, is_none
from trainlint.analysis.values.torch_semantics import DEFAULT_INIT_SCALE, GRAD_SCALERS, is_optimizer_class
from trainlint.context import child_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext
    from trainlint.findings import Edit

MAX_PATHS = 256  # paths() stops here (a step with 9 independent ifs already has 512)
HELPER_DEPTH = 2  # helpers of helpers are followed, one level further is not


class EventKind(Enum):
    BACKWARD = "backward"  # loss.backward(), torch.autograd.backward(loss)
    SCALED_BACKWARD = "scaled_backward"  # scaler.scale(loss).backward()
    # accelerator.backward(loss), fabric.backward(loss), self.manual_backward(loss): the framework
    # may scale the loss itself, so rules about GradScaler scaling treat it as neither kind above.
    FRAMEWORK_BACKWARD = "framework_backward"
    UNSCALE = "unscale"  # scaler.unscale_(opt)
    GRAD_INSPECT = "grad_inspect"  # reads gradient values: isnan/isfinite/norm/logging of .grad
    CLIP = "clip"  # torch.nn.utils.clip_grad_norm_ / clip_grad_value_
    SCALER_STEP = "scaler_step"  # scaler.step(opt)
    OPT_STEP = "opt_step"  # opt.step()
    SCALER_UPDATE = "scaler_update"  # scaler.update()
    ZERO_GRAD = "zero_grad"  # opt.zero_grad(), model.zero_grad(), p.grad.zero_(), p.grad = None / a fresh value, del p.grad
    SKIP = "skip"  # continue / return / break that leaves the rest of the step


# A function holding one of these itself (not through a helper) is a TrainingStep.
BACKWARD_KINDS = frozenset({EventKind.BACKWARD, EventKind.SCALED_BACKWARD, EventKind.FRAMEWORK_BACKWARD})
CORE_KINDS = BACKWARD_KINDS | {EventKind.OPT_STEP, EventKind.SCALER_STEP}
STEP_KINDS = frozenset({EventKind.OPT_STEP, EventKind.SCALER_STEP})  # the optimizer's update, either way
# Events that finish a step: an exit that bypasses one of them skips the step.
_FINISHING_KINDS = frozenset(
    {EventKind.OPT_STEP, EventKind.SCALER_STEP, EventKind.SCALER_UPDATE, EventKind.ZERO_GRAD}
)

GRAD_SCALER_CONSTRUCTORS = GRAD_SCALERS
CLIP_FUNCTIONS = frozenset(
    {
        "torch.nn.utils.clip_grad_norm_",
        "torch.nn.utils.clip_grad_value_",
        "torch.nn.utils.clip_grad_norm",
        "torch.nn.utils.clip_grad.clip_grad_norm_",
        "torch.nn.utils.clip_grad.clip_grad_value_",
        "torch.nn.utils.clip_grad.clip_grad_norm",
    }
)
_FINITENESS_CALLS = frozenset({"isnan", "isinf", "isfinite", "isposinf", "isneginf"})
# Calls and methods that turn gradient values into a number someone looks at.
_INSPECTING_METHODS = frozenset(
    {"norm", "max", "min", "amax", "amin", "mean", "std", "var", "item", "tolist", "numpy", "any", "all",
     "median", "nansum", "count_nonzero", *_FINITENESS_CALLS}
)
_INSPECTING_CALLS = frozenset(
    {"norm", "vector_norm", "matrix_norm", "get_total_norm", "max", "min", "amax", "amin", "mean", "std", "var",
     "float", "any", "all", "allclose", "isclose", "count_nonzero", "print", "log", "log_dict", "log_metrics",
     "info", "debug", "warning", "warn", "error", "add_scalar", "add_scalars", "add_histogram", "histogram",
     *_FINITENESS_CALLS}
)
# Operations that pass gradient values on unchanged in meaning (a norm of their result still reads them).
_PASSING_METHODS = frozenset(
    {"detach", "clone", "float", "double", "half", "cpu", "cuda", "to", "view", "reshape", "flatten", "ravel",
     "contiguous", "abs", "pow", "square", "sqrt", "sum", "data", "T", "values"}
)
_PASSING_CALLS = frozenset(
    {"stack", "cat", "concat", "hstack", "vstack", "tensor", "as_tensor", "abs", "sum", "sqrt", "pow", "square",
     "flatten", "list", "tuple", "sorted", "parameters_to_vector"}
)
_OPTIMIZER_NAME = re.compile(r"optimi[sz]er|^optim(_|$)|(^|_)opt(_|$)|^opt[a-z0-9]{0,2}$|_opt[a-z0-9]?$")


class _Unknown:
    """A value whose origin cannot be followed (tuple unpacking, ``with ... as``)."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True)
class _ExpressionFacts:
    reads_grad_values: bool  # a `.grad` (not an `is None` test), a clip, a helper reading them
    tests_finiteness: bool  # isnan/isinf/isfinite, itself or in a helper
    names: frozenset[str]  # every dotted name it mentions

    def reads_grads(self, grad_names: Iterable[str]) -> bool:
        return self.reads_grad_values or not self.names.isdisjoint(grad_names)

    def checks_finiteness(self, finite_names: Iterable[str]) -> bool:
        return self.tests_finiteness or not self.names.isdisjoint(finite_names)


@dataclass(frozen=True)
class SkipGuard:
    """What the ``if`` tests around a skip look at (for SKIP events)."""

    test: cst.BaseExpression | None = field(repr=False)  # the innermost enclosing `if` test inside the step
    checks_finiteness: bool = False  # isnan/isinf/isfinite (of anything: loss, gradients, a norm), or a flag set by one
    reads_grads: bool = False  # the tests read gradient values (directly, via a norm or a flag set from them)


@dataclass(frozen=True, eq=False)
class StepEvent:
    """One event of a step. Compared by identity."""

    kind: EventKind
    node: cst.CSTNode  # the call (or continue/return/break statement); inside the helper when inlined
    statement: cst.CSTNode  # the statement a fix edits, in the step's own function (the helper's call site)
    scaler: str | None = None  # "self.scaler" as written in the step's function
    optimizer: str | None = None  # "self.optimizer" / "opt" for unscale_/step/zero_grad (and clip, when known)
    via_helper: cst.FunctionDef | None = None  # the helper (outermost) the event was found in
    target: cst.BaseExpression | None = None  # the loss of a backward, the params of a clip, the `.grad` read
    call_site: cst.Call | None = None  # the call of the helper in the step's function, when inlined
    local_statement: cst.CSTNode | None = None  # the statement holding `node`, in whatever function holds it
    guard: SkipGuard | None = None  # for SKIP: what its enclosing `if` tests look at
    skip_keyword: str | None = None  # for SKIP: "continue" | "return" | "break"
    # for GRAD_INSPECT: a NaN/Inf test, whose verdict is the same before and after unscaling
    # (only acting on it, by skipping or zeroing, goes behind the scaler's back)
    scale_invariant: bool = False
    # for GRAD_INSPECT: the value read goes into isnan/isinf/isfinite (``math.isfinite(norm.item())``)
    tests_finiteness: bool = False

    @property
    def anchor(self) -> cst.CSTNode:
        """The node to report: the helper's call when inlined, else the event's own node."""
        return self.call_site if self.call_site is not None else self.node


@dataclass(frozen=True)
class ScalerInfo:
    expr: str  # "self.scaler" as written
    constructor: str | None  # "torch.cuda.amp.GradScaler"; None when known by usage (a parameter `scaler`)
    enabled: bool | None  # True: always on; None: depends on a runtime value (`enabled=self.amp`)
    init_scale: float | None = DEFAULT_INIT_SCALE  # the scale it starts with; None when unknown

    def scale_text(self) -> str:
        """``65536x at start`` (``1024x`` for ``GradScaler(init_scale=1024)``), for messages."""
        if self.init_scale is None:
            return "its initial scale"
        return f"{self.init_scale:g}x at start"


@dataclass(frozen=True)
class OptimizerInfo:
    expr: str  # "self.optimizer" as written
    constructor: str | None  # "torch.optim.AdamW"; None when known by usage or name
    params_code: str | None  # "model.parameters()" when the constructor is seen
    params: cst.BaseExpression | None = field(default=None, compare=False)  # that expression's node, in this file
    instance: Instance | None = field(default=None, compare=False)  # the engine's value of the optimizer
    params_values: Values | None = field(default=None, compare=False)  # what its parameters are


# ---------------------------------------------------------------------------------------------
# The step's control flow: a small tree of items, walked by paths().


@dataclass(eq=False)
class _Branch:
    """Exactly one alternative runs (if/else, try body/handlers, match cases)."""

    alternatives: list[list[_Item]]
    # For `if flag:` / `if not flag:` on a plain name or attribute: the flag, and its value in
    # each alternative. Two ifs on the same flag take matching branches on one path (a flag such
    # as `self.use_amp` does not change inside a step).
    flag: str | None = None
    flag_values: tuple[bool, ...] = ()


@dataclass(eq=False)
class _Loop:
    """A loop inside the step: its body runs zero times or once (for path purposes)."""

    body: list[_Item]
    node: cst.CSTNode


@dataclass(eq=False)
class _Inline:
    """A helper's body at its call site: its ``return`` ends the helper, not the step."""

    body: list[_Item]


@dataclass(eq=False)
class _Exit:
    keyword: str  # "return" | "continue" | "break" | "raise"
    node: cst.CSTNode
    loop: cst.CSTNode | None  # the loop a continue/break leaves
    statement: cst.CSTNode
    event: StepEvent | None = None  # set when it is a SKIP of the step


_Item = StepEvent | _Branch | _Loop | _Inline | _Exit
_Flags = tuple[tuple[str, bool], ...]  # the flags a path has decided, in order


@dataclass(frozen=True)
class _Outcome:
    events: tuple[StepEvent, ...]
    exit: _Exit | None  # what ended it; None: it fell off the end
    flags: _Flags = ()

    def key(self) -> tuple[int, ...]:
        return (*(id(e) for e in self.events), id(self.exit), hash(self.flags))


def _run(items: Sequence[_Item], limit: int, flags: _Flags = ()) -> list[_Outcome]:
    """Every way through ``items``: the events met and the exit that ended it."""
    outcomes = [_Outcome((), None, flags)]
    for item in items:
        following: dict[tuple[int, ...], _Outcome] = {}
        for outcome in outcomes:
            if outcome.exit is not None:
                following.setdefault(outcome.key(), outcome)
                continue
            for more in _item_outcomes(item, limit, outcome.flags):
                joined = _Outcome(outcome.events + more.events, more.exit, more.flags)
                following.setdefault(joined.key(), joined)
            if len(following) > limit:
                break
        outcomes = list(following.values())[: limit + 1]
    return outcomes


def _item_outcomes(item: _Item, limit: int, flags: _Flags) -> list[_Outcome]:
    if isinstance(item, StepEvent):
        return [_Outcome((item,), None, flags)]
    if isinstance(item, _Exit):
        return [_Outcome((item.event,) if item.event is not None else (), item, flags)]
    if isinstance(item, _Branch):
        return _branch_outcomes(item, limit, flags)
    if isinstance(item, _Inline):
        return [
            _Outcome(o.events, None if o.exit is not None and o.exit.keyword == "return" else o.exit, o.flags)
            for o in _run(item.body, limit, flags)
        ]
    # a loop: skipped, or its body once; its own continue/break fall through to after the loop
    outcomes = [_Outcome((), None, flags)]
    for o in _run(item.body, limit, flags):
        own = o.exit is not None and o.exit.keyword in ("continue", "break") and o.exit.loop is item.node
        outcomes.append(_Outcome(o.events, None if own else o.exit, o.flags))
    return outcomes


def _branch_outcomes(branch: _Branch, limit: int, flags: _Flags) -> list[_Outcome]:
    decided = dict(flags).get(branch.flag) if branch.flag is not None else None
    outcomes = []
    for index, alternative in enumerate(branch.alternatives):
        taken = flags
        if branch.flag is not None:
            value = branch.flag_values[index]
            if decided is not None and decided != value:
                continue  # this path already took the other side of the same flag
            if decided is None:
                taken = (*flags, (branch.flag, value))
        outcomes.extend(_run(alternative, limit, taken))
    return outcomes


def _flatten(items: Iterable[_Item]) -> Iterator[StepEvent]:
    for item in items:
        if isinstance(item, StepEvent):
            yield item
        elif isinstance(item, _Exit):
            if item.event is not None:
                yield item.event
        elif isinstance(item, _Branch):
            for alternative in item.alternatives:
                yield from _flatten(alternative)
        else:
            yield from _flatten(item.body)


def clears_gradients_of(event: StepEvent, optimizer: str | None) -> bool:
    """A zero_grad that clears this optimizer's gradients. One of unknown reach
    (``model.zero_grad()``, ``p.grad = None``) counts too: rules relying on it then stay quiet."""
    return event.kind is EventKind.ZERO_GRAD and (event.optimizer is None or event.optimizer == optimizer)


def backwards_feeding(path: Sequence[StepEvent]) -> dict[StepEvent, list[StepEvent]]:
    """For each optimizer step on the path (``opt.step()`` or ``scaler.step(opt)``), the
    backwards whose gradients it applies.

    Steps that follow each other share the backwards before them (``scaler.step(opt_d)``,
    ``scaler.step(opt_g)`` after two backwards); a backward that an earlier group of steps already
    applied does not feed a later one; a zero_grad of the optimizer drops the backwards before it.
    """
    feeding: dict[StepEvent, list[StepEvent]] = {}
    pending: list[int] = []  # backwards since the last group of steps, by index on the path
    group: list[int] = []  # backwards feeding the current group of steps
    in_group = False
    for index, event in enumerate(path):
        if event.kind in BACKWARD_KINDS:
            pending.append(index)
            in_group = False
        elif event.kind in STEP_KINDS:
            if not in_group:
                group, pending, in_group = pending, [], True
            feeding[event] = [
                path[b]
                for b in group
                if not any(clears_gradients_of(e, event.optimizer) for e in path[b + 1 : index])
            ]
    return feeding


def runs_a_closure(event: StepEvent) -> bool:
    """``opt.step(closure)`` (LBFGS and friends): the closure zeroes and recomputes the gradients
    itself, so nothing placed before the step in the loop body acts on the gradients it uses."""
    call = event.node
    return event.kind is EventKind.OPT_STEP and isinstance(call, cst.Call) and bool(call.args)


def events_after(path: Sequence[StepEvent], event: StepEvent) -> Sequence[StepEvent]:
    """The events that follow ``event`` on the path (nothing when it is not on it)."""
    for index, candidate in enumerate(path):
        if candidate is event:
            return path[index + 1 :]
    return ()


def scale_text(step: TrainingStep, scaler: str) -> str:
    """``65536x at start`` for a scaler of the step, ``1024x`` when it is built with
    ``init_scale=1024``: the scale the code sets, for messages."""
    info = step.scalers.get(scaler)
    return info.scale_text() if info is not None else ScalerInfo(scaler, None, None).scale_text()


def in_helper(event: StepEvent) -> str:
    """`` (in `_optimizer_step()`)`` for an event found in a helper, else nothing (for messages)."""
    return f" (in `{event.via_helper.name.value}()`)" if event.via_helper is not None else ""


@dataclass
class TrainingStep:
    """A function whose body (or whose loop body, when a loop repeats the step) is one step."""

    function: cst.FunctionDef  # the cst.Module for TrainingSteps.script_step (top-level script code)
    events: list[StepEvent]  # source order, helpers inlined at their call sites
    scalers: dict[str, ScalerInfo]  # the known (enabled or maybe-enabled) GradScalers used in the step
    optimizers: dict[str, OptimizerInfo]  # the optimizers the step uses
    loop: cst.For | cst.While | None  # the loop that repeats the step, when there is one
    uncertain_scalers: frozenset[str] = frozenset()  # used like scalers but of unknown origin: stay quiet
    helpers: frozenset[cst.FunctionDef] = frozenset()  # functions inlined into this step
    _items: list[_Item] = field(default_factory=list, repr=False)
    _paths: list[list[StepEvent]] | None = field(default=None, repr=False)
    _truncated: bool = field(default=False, repr=False)

    def paths(self) -> Iterator[list[StepEvent]]:
        """Every feasible path through one execution of the step (if/else, try, loop bodies run
        zero or once); a SKIP (early continue/return/break) ends its path; paths that raise are
        left out. Two ``if``s whose tests call nothing and read the same thing (``if
        self.use_amp:`` twice; ``if x is None:`` then ``if x is not None:``; ``==`` then ``!=``)
        take matching sides on every path. Bounded: at most MAX_PATHS paths (see ``truncated``)."""
        yield from (list(path) for path in self._walked_paths())

    @property
    def truncated(self) -> bool:
        """The step has more than MAX_PATHS paths and ``paths()`` lists only some: unsure."""
        self._walked_paths()
        return self._truncated

    def _walked_paths(self) -> list[list[StepEvent]]:
        if self._paths is None:
            outcomes = _run(self._items, MAX_PATHS)
            self._truncated = len(outcomes) > MAX_PATHS
            distinct: dict[tuple[int, ...], list[StepEvent]] = {}
            for outcome in outcomes[:MAX_PATHS]:
                if outcome.exit is None or outcome.exit.keyword != "raise":
                    distinct.setdefault(tuple(id(e) for e in outcome.events), list(outcome.events))
            self._paths = list(distinct.values())
        return self._paths

    def paths_through(self, event: StepEvent) -> list[list[StepEvent]]:
        """The paths on which the event runs."""
        return [path for path in self.paths() if any(e is event for e in path)]

    def scaler_of(self, event: StepEvent) -> ScalerInfo | None:
        """The known GradScaler of a scaler event (None when unknown, uncertain or disabled)."""
        return self.scalers.get(event.scaler) if event.scaler is not None else None

    def of_kind(self, *kinds: EventKind) -> list[StepEvent]:
        return [e for e in self.events if e.kind in kinds]

    def index(self, event: StepEvent) -> int:
        """The event's position in source order (``events``)."""
        for position, candidate in enumerate(self.events):
            if candidate is event:
                return position
        raise ValueError("event is not in this step")


# ---------------------------------------------------------------------------------------------
# Module-wide facts: functions, classes, what names and attributes are assigned.




def _body(scope: cst.CSTNode) -> cst.CSTNode:
    """What runs when a function is called; for a script (a Module), its top-level code."""
    return scope.body if isinstance(scope, cst.FunctionDef) else scope  # type: ignore[return-value]


def _descendants(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (not ``node`` itself), nested function and class bodies excluded."""
    stack = child_nodes(node)[::-1]
    while stack:
        current = stack.pop()
        yield current
        if not isinstance(current, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            stack.extend(child_nodes(current)[::-1])


def _call_name(call: cst.Call) -> str | None:
    """``isnan`` for ``torch.isnan(...)``, ``log`` for ``self.log(...)``, ``print`` for ``print``."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def _last_part(text: str) -> str:
    return text.rsplit(".", 1)[-1]


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _keyword(call: cst.Call, name: str) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    return None


# Objects whose ``.backward(loss)`` runs the loss's backward and leaves the optimizer step to the
# caller: Accelerate's ``Accelerator`` and Lightning's ``Fabric``, by the names their docs use.
# (A DeepSpeed engine's ``backward`` is not one: its ``engine.step()`` steps and zeroes itself.)
_FRAMEWORK_BACKWARD_OWNERS = ("accelerator", "fabric")


def _is_framework_backward(receiver: str, method: str) -> bool:
    if method == "manual_backward":  # LightningModule.manual_backward(loss)
        return receiver == "self"
    return receiver.rpartition(".")[2].lower() in _FRAMEWORK_BACKWARD_OWNERS


def _first_positional(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is None and not arg.star:
            return arg.value
        break
    return None


def _literal_bool(expr: cst.BaseExpression | None) -> bool | None:
    if isinstance(expr, cst.Name) and expr.value in ("True", "False"):
        return expr.value == "True"
    return None


def _parameters(function: cst.FunctionDef) -> list[cst.Param]:
    params = function.params
    return [*params.posonly_params, *params.params, *params.kwonly_params]


def _is_static(function: cst.FunctionDef) -> bool:
    return any(isinstance(d.decorator, cst.Name) and d.decorator.value == "staticmethod" for d in function.decorators)


class _Module:
    """Who defines what in this file, and where names and ``self`` attributes get their values."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self.scopes = ctx.get(Scopes)
        self.top_functions: dict[str, cst.FunctionDef] = {}
        self.classes: dict[str, cst.ClassDef] = {}
        for statement in ctx.module.body:
            if isinstance(statement, cst.FunctionDef):
                self.top_functions[statement.name.value] = statement
            elif isinstance(statement, cst.ClassDef):
                self.classes[statement.name.value] = statement
        self._function_cache: dict[cst.CSTNode, cst.FunctionDef | None | _Unknown] = {}
        self.unscaled_receivers = {
            text
            for call in ctx.nodes.of(cst.Call)
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "unscale_"
            and (text := dotted_name(call.func.value)) is not None
        }
        self.scaler_arguments = self._scaler_call_arguments()
        self._scaler_cache: dict[cst.BaseExpression, tuple[str, ScalerInfo | None]] = {}
        self._optimizer_cache: dict[cst.BaseExpression, OptimizerInfo | None] = {}
        self._derived_cache: dict[cst.FunctionDef, tuple[frozenset[str], frozenset[str]]] = {}
        self._reads_cache: dict[cst.FunctionDef, tuple[bool, bool]] = {}
        self._facts_cache: dict[cst.CSTNode, _ExpressionFacts] = {}

    # -- where things are ----------------------------------------------------------------------
    def function_of(self, node: cst.CSTNode) -> cst.FunctionDef | None:
        """The function whose body holds the node (None: module or class level, or a lambda)."""
        found = self._function_cache.get(node, _UNKNOWN)
        if found is _UNKNOWN:
            found = None
            for ancestor in self.ctx.ancestors(node):
                if isinstance(ancestor, cst.FunctionDef):
                    found = ancestor
                    break
                if isinstance(ancestor, (cst.ClassDef, cst.Lambda)):
                    break
            self._function_cache[node] = found
        return found  # type: ignore[return-value]

    def class_of(self, function: cst.FunctionDef | None) -> cst.ClassDef | None:
        if function is None:
            return None
        parent = self.ctx.parent(function)
        grandparent = self.ctx.parent(parent) if parent is not None else None
        return grandparent if isinstance(grandparent, cst.ClassDef) else None

    def _classes_upward(self, cls: cst.ClassDef) -> Iterator[cst.ClassDef]:
        """The class and its base classes defined in this module (nearest first)."""
        seen: set[int] = set()
        queue = [cls]
        while queue:
            current = queue.pop(0)
            if id(current) in seen:
                continue
            seen.add(id(current))
            yield current
            for base in current.bases:
                if isinstance(base.value, cst.Name) and base.value.value in self.classes:
                    queue.append(self.classes[base.value.value])

    def method(self, cls: cst.ClassDef, name: str) -> cst.FunctionDef | None:
        for current in self._classes_upward(cls):
            for statement in current.body.body:
                if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
                    return statement
        return None

    def helper_for(self, call: cst.Call, caller: cst.FunctionDef) -> tuple[cst.FunctionDef, bool] | None:
        """The function of this module a call runs, and whether it is a bound method (skip self)."""
        func = call.func
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self":
            cls = self.class_of(caller)
            found = self.method(cls, func.attr.value) if cls is not None else None
            return (found, not _is_static(found)) if found is not None else None
        if isinstance(func, cst.Name):
            for statement in caller.body.body if isinstance(caller.body, cst.IndentedBlock) else ():
                if isinstance(statement, cst.FunctionDef) and statement.name.value == func.value:
                    return statement, False
            found = self.top_functions.get(func.value)
            return (found, False) if found is not None else None
        return None

    def _scaler_call_arguments(self) -> set[str]:
        """Texts passed to ``X.step(...)``/``X.unscale_(...)`` where X is named like a scaler."""
        found = set()
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in ("step", "unscale_"):
                receiver = dotted_name(func.value)
                argument = _first_positional(call)
                if receiver and "scaler" in _last_part(receiver).lower() and argument is not None:
                    text = dotted_name(argument)
                    if text:
                        found.add(text)
        return found

    # -- what a receiver is (asked of the value-flow engine) -------------------------------------
    def is_scalerish(self, text: str) -> bool:
        return "scaler" in _last_part(text).lower() or text in self.unscaled_receivers

    def _receiver_values(self, receiver: cst.BaseExpression) -> Values:
        return self.flow.values(receiver)

    def scaler_status(self, receiver: cst.BaseExpression, text: str) -> tuple[str, ScalerInfo | None]:
        """("known", info) | ("disabled", None) | ("uncertain", None) | ("none", None)."""
        if receiver not in self._scaler_cache:
            self._scaler_cache[receiver] = self._scaler_status(receiver, text)
        return self._scaler_cache[receiver]

    def _scaler_status(self, receiver: cst.BaseExpression, text: str) -> tuple[str, ScalerInfo | None]:
        values = self._receiver_values(receiver)
        named_like_one = "scaler" in _last_part(text).lower()
        scalers = [v for v in values.of_type(Instance) if v.cls in GRAD_SCALER_CONSTRUCTORS]
        if any(not is_none(v) and v not in scalers for v in values):
            return "uncertain", None  # some other object: timm's NativeScaler, a DeepSpeed engine
        if not scalers:
            if not values.unknown:
                return "none", None  # only ever None
            if named_like_one and not values.untraced:  # given from outside: judged by its name
                return "known", ScalerInfo(text, None, None, None)
            return "uncertain", None
        enabled = [self.flow.scaler_enabled(s) for s in scalers]
        if all(e is False for e in enabled):
            return ("disabled", None) if not values.unknown else ("uncertain", None)
        on = [s for s, e in zip(scalers, enabled) if e is not False]
        scales = {self.flow.scaler_init_scale(s) for s in on}
        all_on = not values.unknown and all(e is True for e in enabled) and not any(is_none(v) for v in values)
        return "known", ScalerInfo(
            text, on[0].cls, True if all_on else None, scales.pop() if len(scales) == 1 else None
        )

    def optimizer_info(self, receiver: cst.BaseExpression, text: str) -> OptimizerInfo | None:
        if receiver not in self._optimizer_cache:
            self._optimizer_cache[receiver] = self._optimizer_info(receiver, text)
        return self._optimizer_cache[receiver]

    def _optimizer_info(self, receiver: cst.BaseExpression, text: str) -> OptimizerInfo | None:
        last = _last_part(text).lower()
        if "sched" in last:
            return None
        values = self._receiver_values(receiver)
        if any(isinstance(v, Instance) and ("lr_scheduler" in v.cls or "Scheduler" in v.cls) for v in values):
            return None
        optimizers = [v for v in values.of_type(Instance) if is_optimizer_class(v.cls)]
        if optimizers:
            # `for opt in optimizers:` is each of them: what they train together is their union,
            # and a fix that spells one optimizer's parameters applies only to a single one.
            params = Values.union(self.flow.construction_argument(o, 0, "params") or Values() for o in optimizers)
            instance = optimizers[0]
            call = instance.call if len(optimizers) == 1 else None
            node = _params_of(call) if call is not None else None
            local = node is not None and instance.site is not None and instance.site.ctx is self.ctx
            code = instance.site.ctx.code(node) if node is not None and instance.site is not None else None
            return OptimizerInfo(text, instance.cls, code, node if local else None, instance, params)
        named_like_one = bool(_OPTIMIZER_NAME.search(last)) or text in self.scaler_arguments
        return OptimizerInfo(text, None, None) if named_like_one else None

    def optimizer_for_params(self, params_code: str, function: cst.FunctionDef | None) -> str | None:
        """The one optimizer visible from ``function`` built over exactly these parameters
        (``clip_grad_norm_(self.netD.parameters())`` -> ``self.opt_d``)."""
        scopes = {function, self.class_of(function), None}
        matches = {text for scope, text in self._optimizers_by_params.get(params_code, ()) if scope in scopes}
        return matches.pop() if len(matches) == 1 else None

    @cached_property
    def _optimizers_by_params(self) -> dict[str, list[tuple[cst.CSTNode | None, str]]]:
        """Optimizer constructions assigned to a name or ``self.<attr>``, by their params code."""
        found: dict[str, list[tuple[cst.CSTNode | None, str]]] = {}
        for call in self.ctx.nodes.of(cst.Call):
            if not is_optimizer_class(self.ctx.qualified_name(call.func) or ""):
                continue
            parent = self.ctx.parent(call)
            if not isinstance(parent, cst.Assign) or len(parent.targets) != 1:
                continue
            text = dotted_name(parent.targets[0].target)
            params = _params_of(call)
            if text is None or params is None:
                continue
            function = self.function_of(call)
            scope: cst.CSTNode | None = function
            if "." in text:
                head, _, rest = text.partition(".")
                if head != "self" or "." in rest:
                    continue
                scope = self.class_of(function)
            found.setdefault(self.ctx.code(params), []).append((scope, text))
        return found

    # -- names holding gradient values ----------------------------------------------------------
    def derived_names(self, function: cst.FunctionDef) -> tuple[frozenset[str], frozenset[str]]:
        """Names holding values computed from gradients, and names holding a finiteness verdict
        (``found_inf = True`` under ``if torch.isnan(p.grad).any():`` counts for both)."""
        if function not in self._derived_cache:
            self._derived_cache[function] = frozenset(), frozenset()
            if function in self._functions_near_grads:
                self._derived_cache[function] = self._derived_names(function)
        return self._derived_cache[function]

    @cached_property
    def _functions_near_grads(self) -> frozenset[cst.FunctionDef]:
        """Functions that read `.grad`, clip or test finiteness, and those calling them: only
        these can hold names derived from gradients (the rest need no walk)."""
        direct = set()
        for attribute in self.ctx.nodes.of(cst.Attribute):
            if attribute.attr.value == "grad" or attribute.attr.value in _FINITENESS_CALLS:
                direct.add(self.function_of(attribute))
        for call in self.ctx.nodes.of(cst.Call):
            name = _call_name(call)
            if name in _FINITENESS_CALLS or (name or "").startswith("clip_grad"):
                direct.add(self.function_of(call))
        near = set(direct)
        for _ in range(HELPER_DEPTH):
            for call in self.ctx.nodes.of(cst.Call):
                caller = self.function_of(call)
                if caller is None or caller in near:
                    continue
                found = self.helper_for(call, caller)
                if found is not None and found[0] in near:
                    near.add(caller)
        if None in near:
            near.add(self.ctx.module)  # module-level script code
        near.discard(None)
        return frozenset(near)  # type: ignore[arg-type]

    def _derived_names(self, function: cst.FunctionDef) -> tuple[frozenset[str], frozenset[str]]:
        bindings: list[tuple[list[str], list[_ExpressionFacts]]] = []
        for node in _descendants(_body(function)):
            if isinstance(node, (cst.Assign, cst.AnnAssign, cst.AugAssign)) and node.value is not None:
                targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
                names = [n for t in targets for n in _bound_texts(t)]
                facts = [self.facts(node.value, function)]
                if _literal_bool(node.value) is not None:  # `found_inf = True` under a check is a verdict
                    facts += [self.facts(test, function) for test in self._tests_around(node, function)]
                bindings.append((names, facts))
            elif isinstance(node, (cst.For, cst.CompFor)):
                bindings.append((list(_bound_texts(node.target)), [self.facts(node.iter, function)]))
        grad: set[str] = set()
        finite: set[str] = set()
        changed = True
        while changed:
            changed = False
            for names, facts in bindings:
                reads = any(f.reads_grads(grad) for f in facts)
                checks = any(f.checks_finiteness(finite) for f in facts)
                for name in names:
                    if reads and name not in grad:
                        grad.add(name)
                        changed = True
                    if checks and name not in finite:
                        finite.add(name)
                        changed = True
        return frozenset(grad), frozenset(finite)

    def _tests_around(self, node: cst.CSTNode, function: cst.FunctionDef) -> list[cst.BaseExpression]:
        tests = []
        child = node
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                break
            if isinstance(ancestor, cst.If) and child is not ancestor.test:
                tests.append(ancestor.test)
            child = ancestor
        return tests

    def facts(self, expr: cst.CSTNode, function: cst.FunctionDef) -> _ExpressionFacts:
        """What an expression touches, found in one walk and kept."""
        found = self._facts_cache.get(expr)
        if found is None:
            found = self._facts_cache[expr] = self._collect_facts(expr, function)
        return found

    def _collect_facts(self, expr: cst.CSTNode, function: cst.FunctionDef) -> _ExpressionFacts:
        grad = helper_reads = finiteness = False
        names: set[str] = set()
        for node in (expr, *_descendants(expr)):
            if isinstance(node, (cst.Name, cst.Attribute)):
                text = dotted_name(node)
                if text is not None:
                    names.add(text)
                if isinstance(node, cst.Attribute) and node.attr.value == "grad" and not self._is_none_test(node):
                    grad = True
            elif isinstance(node, cst.Call):
                if _call_name(node) in _FINITENESS_CALLS:
                    finiteness = True
                if self.ctx.qualified_name(node.func) in CLIP_FUNCTIONS:
                    grad = True
                reads, checks = self._helper_reads(node, function)
                helper_reads, finiteness = helper_reads or reads, finiteness or checks
        return _ExpressionFacts(grad or helper_reads, finiteness, frozenset(names))

    def reads_grads(self, expr: cst.CSTNode, function: cst.FunctionDef) -> bool:
        """Whether an expression uses gradient values: a ``.grad`` (not an ``is None`` test), a
        name holding them, a clip's result, or a call of a helper that reads them."""
        return self.facts(expr, function).reads_grads(self.derived_names(function)[0])

    def checks_finiteness(self, expr: cst.CSTNode, function: cst.FunctionDef) -> bool:
        """Whether an expression tests for NaN/Inf (of anything), itself or through a flag or helper."""
        return self.facts(expr, function).checks_finiteness(self.derived_names(function)[1])

    def _is_none_test(self, node: cst.CSTNode) -> bool:
        parent = self.ctx.parent(node)
        if isinstance(parent, cst.ComparisonTarget):
            parent = self.ctx.parent(parent)
        return isinstance(parent, cst.Comparison) and any(
            isinstance(t.operator, (cst.Is, cst.IsNot)) for t in parent.comparisons
        )

    def _helper_reads(self, call: cst.Call, function: cst.FunctionDef) -> tuple[bool, bool]:
        """(reads gradients, checks finiteness) for a call of a helper of this module."""
        found = self.helper_for(call, function)
        if found is None or found[0] is function:
            return False, False
        helper = found[0]
        if helper not in self._reads_cache:
            self._reads_cache[helper] = (False, False)
            nodes = list(_descendants(helper.body))
            reads = any(
                (isinstance(n, cst.Attribute) and n.attr.value == "grad" and not self._is_none_test(n))
                or (isinstance(n, cst.Call) and self.ctx.qualified_name(n.func) in CLIP_FUNCTIONS)
                for n in nodes
            )
            checks = any(isinstance(n, cst.Call) and _call_name(n) in _FINITENESS_CALLS for n in nodes)
            self._reads_cache[helper] = (reads, checks)
        return self._reads_cache[helper]

    def value_use(self, node: cst.CSTNode, function: cst.FunctionDef) -> cst.CSTNode | None:
        """Where a read of gradient values (``p.grad`` or a name holding them) is turned into
        something looked at: a norm, a NaN/Inf test, a comparison, a log line. None when the
        value is only passed on (``all_reduce``, ``mul_``, collected in a list) or tested for None."""
        current = node
        for _ in range(64):
            parent = self.ctx.parent(current)
            if parent is None:
                return None
            if isinstance(parent, cst.Attribute) and parent.value is current:
                call = self.ctx.parent(parent)
                is_call = isinstance(call, cst.Call) and call.func is parent
                if parent.attr.value in _INSPECTING_METHODS:
                    return call if is_call else parent
                if parent.attr.value not in _PASSING_METHODS:
                    return None
                current = call if is_call else parent
            elif isinstance(parent, (cst.Subscript, cst.BinaryOperation, cst.UnaryOperation, cst.BooleanOperation, cst.IfExp)):
                current = parent
            elif isinstance(parent, (cst.ComparisonTarget, cst.Comparison)):
                comparison = parent if isinstance(parent, cst.Comparison) else self.ctx.parent(parent)
                return None if self._is_none_test(current) else comparison
            elif isinstance(parent, cst.Arg):
                call = self.ctx.parent(parent)
                if not isinstance(call, cst.Call) or self.ctx.qualified_name(call.func) in CLIP_FUNCTIONS:
                    return None
                name = _call_name(call)
                if name in _INSPECTING_CALLS:
                    return call
                if name not in _PASSING_CALLS:
                    return None
                current = call
            elif isinstance(parent, (cst.Element, cst.StarredElement, cst.DictElement)):
                current = self.ctx.parent(parent) or parent
            elif isinstance(parent, (cst.List, cst.Tuple, cst.Set, cst.Dict)) or (
                isinstance(parent, (cst.ListComp, cst.GeneratorExp, cst.SetComp)) and parent.elt is current
            ):
                current = parent
            elif isinstance(parent, cst.FormattedStringExpression):
                return self.ctx.parent(parent)
            else:
                return None
        return None


def _params_of(constructor: cst.Call) -> cst.BaseExpression | None:
    """The parameters an optimizer constructor is given (``params=`` or its first argument)."""
    return _keyword(constructor, "params") or _first_positional(constructor)


def _is_grad(expr: cst.BaseExpression) -> bool:
    """``p.grad`` or ``p.grad.data`` (``p.data`` is the parameter itself)."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "data":
        expr = expr.value
    return isinstance(expr, cst.Attribute) and expr.attr.value == "grad"


def _grad_targets(target: cst.BaseExpression) -> list[cst.Attribute]:
    """The ``x.grad`` attributes an assignment or ``del`` target names (also inside tuples)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return [g for element in target.elements for g in _grad_targets(element.value)]
    return [target] if isinstance(target, cst.Attribute) and target.attr.value == "grad" else []


def _bound_texts(target: cst.BaseExpression) -> Iterator[str]:
    if isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _bound_texts(element.value)
        return
    text = dotted_name(target)
    if text is not None:
        yield text


# ---------------------------------------------------------------------------------------------
# Building one function's items.


@dataclass
class _BuildState:
    """Shared by a step's builder and the builders of the helpers it inlines."""

    root: cst.FunctionDef
    counter: int = 0
    order: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = field(default_factory=dict)
    exits: list[tuple[_Exit, tuple[tuple[int, int], ...], int]] = field(default_factory=list)
    scalers: dict[str, ScalerInfo] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)
    optimizers: dict[str, OptimizerInfo] = field(default_factory=dict)
    helpers: set[cst.FunctionDef] = field(default_factory=set)


class _Builder:
    """Turns one function's body into items; a helper it calls gets a builder of its own that
    shares the state and reports events at the outermost call site."""

    def __init__(
        self,
        module: _Module,
        state: _BuildState,
        function: cst.FunctionDef,
        *,
        depth: int = 0,
        substitutions: dict[str, str] | None = None,
        call_site: cst.Call | None = None,
        call_statement: cst.CSTNode | None = None,
        via_helper: cst.FunctionDef | None = None,
        chain: tuple[cst.FunctionDef, ...] = (),
    ) -> None:
        self.module = module
        self.ctx = module.ctx
        self.state = state
        self.function = function
        self.depth = depth
        self.substitutions = substitutions or {}
        self.call_site = call_site
        self.call_statement = call_statement
        self.via_helper = via_helper
        self.chain = (*chain, function)
        self.loops: list[cst.CSTNode] = []
        self.statement: cst.CSTNode = function
        self.nesting: tuple[tuple[int, int], ...] = ()

    # -- statements --------------------------------------------------------------------------
    def block(self, body: cst.BaseSuite | Sequence[cst.BaseStatement]) -> list[_Item]:
        statements: Sequence[cst.CSTNode]
        if isinstance(body, cst.IndentedBlock):
            statements = body.body
        elif isinstance(body, cst.SimpleStatementSuite):
            statements = [body]
        else:
            statements = body  # type: ignore[assignment]
        items: list[_Item] = []
        for statement in statements:
            items.extend(self.compound(statement))
        return items

    def branch(self, node: cst.CSTNode, alternatives: list[Sequence[cst.CSTNode] | cst.BaseSuite | None]) -> _Branch:
        built = []
        outer = self.nesting
        for index, alternative in enumerate(alternatives):
            self.nesting = (*outer, (id(node), index))
            built.append(self.block(alternative) if alternative is not None else [])
        self.nesting = outer
        flag = self.decision_key(node.test) if isinstance(node, cst.If) else None
        if flag is None:
            return _Branch(built)
        return _Branch(built, flag=flag[0], flag_values=(flag[1], not flag[1]))

    def decision_key(self, test: cst.BaseExpression) -> tuple[str, bool] | None:
        """The key and side of an ``if`` test, spelled as the step's function would: a helper's
        parameter is renamed to the caller's argument; a test of the helper's own variables
        is a decision of this call of the helper only."""
        decision = _decision(test)
        if decision is None:
            return None
        if self.depth == 0:
            return decision.key, decision.value
        if decision.dotted:
            head = decision.key.partition(".")[0]
            if head in self.substitutions or head == "self":
                return self.subst(decision.key) or decision.key, decision.value
        if any(self._local_to_helper(name) for name in _free_names(test) - {"self"}):
            return f"{decision.key} @{id(self)}", decision.value
        return decision.key, decision.value

    def _local_to_helper(self, name: str) -> bool:
        """A name of the helper being inlined: a parameter the caller did not name, or assigned here."""
        if name in self.substitutions:
            return True
        return name in self.module.scopes.records(self.function)

    def compound(self, statement: cst.CSTNode) -> list[_Item]:
        self.statement = statement
        if isinstance(statement, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
            items: list[_Item] = []
            for small in statement.body:
                self.statement = statement
                items.extend(self.small(small, statement))
            return items
        if isinstance(statement, cst.If):
            items = self.expression(statement.test)
            orelse = statement.orelse
            other: Sequence[cst.CSTNode] | cst.BaseSuite | None = None
            if isinstance(orelse, cst.If):
                other = [orelse]
            elif isinstance(orelse, cst.Else):
                other = orelse.body
            return [*items, self.branch(statement, [statement.body, other])]
        if isinstance(statement, (cst.For, cst.While)):
            header = self.expression(statement.iter if isinstance(statement, cst.For) else statement.test)
            self.loops.append(statement)
            body = self.block(statement.body)
            self.loops.pop()
            after = self.block(statement.orelse.body) if statement.orelse is not None else []
            return [*header, _Loop(body, statement), *after]
        if isinstance(statement, (cst.Try, cst.TryStar)):
            body = [*statement.body.body, *(statement.orelse.body.body if statement.orelse is not None else [])]
            alternatives: list[Sequence[cst.CSTNode] | cst.BaseSuite | None] = [body]
            alternatives.extend(handler.body for handler in statement.handlers)
            items = [self.branch(statement, alternatives)]
            if statement.finalbody is not None:
                items.extend(self.block(statement.finalbody.body))
            return items
        if isinstance(statement, cst.With):
            items = [i for item in statement.items for i in self.expression(item.item)]
            return [*items, *self.block(statement.body)]
        if isinstance(statement, cst.Match):
            items = self.expression(statement.subject)
            cases: list[Sequence[cst.CSTNode] | cst.BaseSuite | None] = [case.body for case in statement.cases]
            cases.append(None)
            return [*items, self.branch(statement, cases)]
        return []  # nested def/class: not run here

    def small(self, small: cst.BaseSmallStatement, statement: cst.CSTNode) -> list[_Item]:
        if isinstance(small, (cst.Return, cst.Continue, cst.Break, cst.Raise)):
            items: list[_Item] = []
            value = small.value if isinstance(small, cst.Return) else small.exc if isinstance(small, cst.Raise) else None
            if value is not None:
                items.extend(self.expression(value))
            keyword = {cst.Return: "return", cst.Continue: "continue", cst.Break: "break", cst.Raise: "raise"}[type(small)]
            loop = self.loops[-1] if keyword in ("continue", "break") and self.loops else None
            exit_ = _Exit(keyword, small, loop, statement)
            if self.depth == 0:
                self.state.exits.append((exit_, self.nesting, self._tick()))
            return [*items, exit_]
        if isinstance(small, cst.Expr):
            return self.expression(small.value)
        if isinstance(small, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            items = self.expression(small.value) if small.value is not None else []
            if isinstance(small, cst.Assign) and self._replaces_gradients(small.value):
                for target in small.targets:
                    items.extend(self.event(EventKind.ZERO_GRAD, g, target=g.value) for g in _grad_targets(target.target))
            return items
        if isinstance(small, cst.Del):
            return [self.event(EventKind.ZERO_GRAD, g, target=g.value) for g in _grad_targets(small.target)]
        if isinstance(small, cst.Assert):
            return self.expression(small.test)
        return []

    def _replaces_gradients(self, value: cst.BaseExpression) -> bool:
        """``p.grad = None``, ``= torch.zeros_like(p)``, ``= g`` from ``torch.autograd.grad``:
        the accumulated gradient is dropped. ``p.grad = p.grad / world_size`` keeps it."""
        return not any(
            isinstance(n, cst.Attribute) and n.attr.value == "grad" and self.ctx.qualified_name(n) != "torch.autograd.grad"
            for n in (value, *_descendants(value))
        )

    # -- expressions -------------------------------------------------------------------------
    def expression(self, expr: cst.BaseExpression) -> list[_Item]:
        """Events of an expression in evaluation order; one GRAD_INSPECT at most per expression."""
        items: list[_Item] = []
        inspected = False
        grad_names = self.module.derived_names(self.function)[0]
        for node in _evaluation_order(expr):
            if isinstance(node, cst.Call):
                items.extend(self.call(node))
            elif not inspected and self._holds_grads(node, grad_names):
                use = self.module.value_use(node, self.function)
                if use is not None:
                    invariant = isinstance(use, cst.Call) and _call_name(use) in _FINITENESS_CALLS
                    finite = invariant or self._in_finiteness_test(use)
                    items.append(self.event(EventKind.GRAD_INSPECT, use, target=node, scale_invariant=invariant, tests_finiteness=finite))  # type: ignore[arg-type]
                    inspected = True
        return items

    def _in_finiteness_test(self, use: cst.CSTNode) -> bool:
        """The inspection sits in an isnan/isinf/isfinite call of the same statement."""
        for ancestor in self.ctx.ancestors(use):
            if isinstance(ancestor, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                return False
            if isinstance(ancestor, cst.Call) and _call_name(ancestor) in _FINITENESS_CALLS:
                return True
        return False

    def _holds_grads(self, node: cst.CSTNode, grad_names: frozenset[str]) -> bool:
        if isinstance(node, cst.Attribute) and node.attr.value == "grad":
            return True
        if isinstance(node, (cst.Name, cst.Attribute)) and grad_names:
            return dotted_name(node) in grad_names
        return False

    def call(self, call: cst.Call) -> list[_Item]:
        func = call.func
        qualified = self.ctx.qualified_name(func)
        if qualified == "torch.autograd.backward":  # before `X.backward()`: its target is the loss
            tensors = _keyword(call, "tensors") or _first_positional(call)
            return [self.backward(call, tensors)] if tensors is not None else []
        if isinstance(func, cst.Attribute):
            found = self.method_call(call, func.attr.value, func.value)
            if found is not None:
                return found
        if qualified in CLIP_FUNCTIONS:
            params = _keyword(call, "parameters") or _first_positional(call)
            optimizer = self.module.optimizer_for_params(self.ctx.code(params), self.function) if params is not None else None
            return [self.event(EventKind.CLIP, call, optimizer=self.subst(optimizer), target=params)]
        return self.inline(call)

    def method_call(self, call: cst.Call, method: str, receiver: cst.BaseExpression) -> list[_Item] | None:
        if method in ("backward", "manual_backward"):
            positional = _first_positional(call)
            text = dotted_name(receiver)
            if positional is not None and text is not None and _is_framework_backward(text, method):
                return [self.event(EventKind.FRAMEWORK_BACKWARD, call, target=positional)]
            if method == "manual_backward":
                return None
            if positional is not None and text is not None and "loss" not in text.lower():
                return None  # engine.backward(loss) and the like: unknown objects that may step themselves
            return [self.backward(call, receiver)]
        text = dotted_name(receiver)
        if text is None:
            return None
        if method == "zero_" and _is_grad(receiver):
            return [self.event(EventKind.ZERO_GRAD, call, target=receiver)]
        if method in ("unscale_", "update", "step", "scale") and self.module.is_scalerish(text):
            found = self.scaler_call(call, method, receiver, text)
            if found is not None:
                return found
        if method == "step" and len(call.args) <= 1 and self.optimizer(receiver, text) is not None:
            return [self.event(EventKind.OPT_STEP, call, optimizer=self.subst(text), target=receiver)]
        if method == "zero_grad":
            optimizer = self.subst(text) if self.optimizer(receiver, text) is not None else None
            return [self.event(EventKind.ZERO_GRAD, call, optimizer=optimizer, target=receiver)]
        return None

    def scaler_call(self, call: cst.Call, method: str, receiver: cst.BaseExpression, text: str) -> list[_Item] | None:
        status = self.scaler(receiver, text)
        argument = _first_positional(call)
        argument_text = self.subst(dotted_name(argument)) if argument is not None else None
        if status == "none":
            return None
        if status == "disabled":
            if method == "step" and argument is not None and argument_text is not None:
                self.optimizer(argument, dotted_name(argument) or "")
                return [self.event(EventKind.OPT_STEP, call, optimizer=argument_text, target=argument)]
            return []
        kinds = {"unscale_": EventKind.UNSCALE, "update": EventKind.SCALER_UPDATE, "step": EventKind.SCALER_STEP}
        if method == "scale" or (method in ("unscale_", "step") and argument is None):
            return []
        if argument is not None and method != "update":
            self.optimizer(argument, dotted_name(argument) or "", by_use=True)
        return [self.event(kinds[method], call, scaler=self.subst(text), optimizer=argument_text, target=argument)]

    def backward(self, call: cst.Call, tensor: cst.BaseExpression) -> StepEvent:
        scaler, loss = self._scaled(tensor)
        if scaler is not None:
            receiver, text = scaler
            status = self.scaler(receiver, text)
            if status in ("known", "uncertain"):
                return self.event(EventKind.SCALED_BACKWARD, call, scaler=self.subst(text), target=loss)
        return self.event(EventKind.BACKWARD, call, target=loss if scaler is not None else tensor)

    def _scaled(self, tensor: cst.BaseExpression) -> tuple[tuple[cst.BaseExpression, str] | None, cst.BaseExpression]:
        """((scaler, its text), loss) when the tensor is ``scaler.scale(loss)`` (or a name
        holding it)."""
        while isinstance(tensor, cst.BinaryOperation):
            tensor = tensor.left
        scaler, loss = self._scaled_value(tensor)
        if scaler is not None:
            return scaler, loss
        for value in self.module.flow.values(tensor).of_type(Tensor):  # `scaled = scaler.scale(loss)`
            if value.kind == "scaled" and value.site.ctx is self.ctx and isinstance(value.site.node, cst.Call):
                scaler, _ = self._scaled_value(value.site.node)
                if scaler is not None:
                    return scaler, tensor
        return None, tensor

    def _scaled_value(self, value: cst.BaseExpression) -> tuple[tuple[cst.BaseExpression, str] | None, cst.BaseExpression]:
        if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "scale":
            text = dotted_name(value.func.value)
            loss = _first_positional(value)
            if text is not None and loss is not None and self.module.is_scalerish(text):
                return (value.func.value, text), loss
        return None, value

    # -- helpers ---------------------------------------------------------------------------------
    def inline(self, call: cst.Call) -> list[_Item]:
        if self.depth >= HELPER_DEPTH:
            return []
        found = self.module.helper_for(call, self.function)
        if found is None or found[0] in self.chain:
            return []
        helper, bound = found
        builder = _Builder(
            self.module,
            self.state,
            helper,
            depth=self.depth + 1,
            substitutions=self._arguments(call, helper, bound),
            call_site=self.call_site or call,
            call_statement=self.call_statement or self.statement,
            via_helper=self.via_helper or helper,
            chain=self.chain,
        )
        builder.nesting = self.nesting
        body = builder.block(helper.body)
        if not any(True for _ in _flatten(body)):
            return []
        self.state.helpers.add(helper)
        return [_Inline(body)]

    def _arguments(self, call: cst.Call, helper: cst.FunctionDef, bound: bool) -> dict[str, str]:
        """Helper parameter -> the caller's expression text, for names the caller can spell."""
        params = [*helper.params.posonly_params, *helper.params.params]
        if bound:
            params = params[1:]
        by_name = {p.name.value: p for p in _parameters(helper)}
        mapping: dict[str, str] = {}
        for index, arg in enumerate(call.args):
            if arg.star:
                break
            name = arg.keyword.value if arg.keyword is not None else (params[index].name.value if index < len(params) else None)
            text = dotted_name(arg.value)
            if name is not None and name in by_name and text is not None:
                mapping[name] = self.subst(text) or text
        return mapping

    # -- naming --------------------------------------------------------------------------------
    def subst(self, text: str | None) -> str | None:
        """The text as the step's own function spells it (helper parameters replaced)."""
        if text is None:
            return None
        head, dot, rest = text.partition(".")
        if head in self.substitutions:
            return self.substitutions[head] + dot + rest
        return text

    def scaler(self, receiver: cst.BaseExpression, text: str) -> str:
        spelled = self.subst(text) or text
        status, info = self.module.scaler_status(receiver, text)
        if status == "known" and info is not None:
            self.state.scalers[spelled] = dataclasses.replace(info, expr=spelled)
        elif status == "uncertain":
            self.state.uncertain.add(spelled)
        return status

    def optimizer(self, receiver: cst.BaseExpression, text: str, by_use: bool = False) -> OptimizerInfo | None:
        if not text:
            return None
        spelled = self.subst(text) or text
        info = self.module.optimizer_info(receiver, text)
        if info is None and by_use:
            info = OptimizerInfo(spelled, None, None)
        if info is not None:
            self.state.optimizers[spelled] = dataclasses.replace(info, expr=spelled)
        return info

    # -- events --------------------------------------------------------------------------------
    def _tick(self) -> int:
        self.state.counter += 1
        return self.state.counter

    def event(self, kind: EventKind, node: cst.CSTNode, **fields: object) -> StepEvent:
        event = StepEvent(
            kind=kind,
            node=node,
            statement=self.call_statement or self.statement,
            via_helper=self.via_helper,
            call_site=self.call_site,
            local_statement=self.statement,
            **fields,  # type: ignore[arg-type]
        )
        self.state.order[id(event)] = (self._tick(), self.nesting)
        return event


_NEGATED_COMPARISONS: dict[type, type] = {cst.IsNot: cst.Is, cst.NotEqual: cst.Equal, cst.NotIn: cst.In}
_SIDE_EFFECTS = (cst.Call, cst.Await, cst.NamedExpr, cst.Yield, cst.Lambda)


@dataclass(frozen=True)
class _Decision:
    """What an ``if`` test decides, as a key that two tests share when they cannot differ."""

    key: str  # "self.use_amp"; "x == 0"; "(i + 1) % accum == 0"
    value: bool  # the key's truth inside the ``if`` body
    dotted: bool  # the key is a name or attribute chain (a helper's parameter can be renamed)


def _decision(test: cst.BaseExpression) -> _Decision | None:
    """``self.use_amp`` True for ``if self.use_amp:``, False for ``if not self.use_amp:``;
    ``if scaler is not None:`` tests ``scaler`` like ``if scaler:``; ``a != b`` is ``a == b``
    negated and ``x not in s`` is ``x in s`` negated. None for a test that calls, assigns or
    awaits anything: its value may change between two ``if``s."""
    if isinstance(test, _SIDE_EFFECTS) or any(isinstance(n, _SIDE_EFFECTS) for n in _descendants(test)):
        return None
    value = True
    while isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        test, value = test.expression, not value
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        target = test.comparisons[0]
        negated = _NEGATED_COMPARISONS.get(type(target.operator))
        if negated is not None:
            value = not value
            target = target.with_changes(operator=negated())
        subject = dotted_name(test.left)
        if subject is not None and _is_none(target.comparator) and isinstance(target.operator, cst.Is):
            return _Decision(subject, not value, True)  # `x is None` is `not x` for a scaler or a flag
        test = test.with_changes(comparisons=[target])
    text = dotted_name(test)
    if text is not None:
        return _Decision(text, value, True)
    return _Decision(_canonical_code(test), value, False)


def _free_names(expr: cst.BaseExpression) -> set[str]:
    """The names an expression reads (``self`` and ``x`` in ``self.a == x``, not ``a``)."""
    attributes = {id(n.attr) for n in (expr, *_descendants(expr)) if isinstance(n, cst.Attribute)}
    return {n.value for n in (expr, *_descendants(expr)) if isinstance(n, cst.Name) and id(n) not in attributes}


def _canonical_code(expr: cst.CSTNode) -> str:
    """The expression's code, whitespace collapsed and outer parentheses dropped."""
    if getattr(expr, "lpar", None):
        expr = expr.with_changes(lpar=[], rpar=[])
    return " ".join(cst.Module(body=[]).code_for_node(expr).split())


def _evaluation_order(expr: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Calls, attributes and names of an expression, operands before the operation (a call's
    receiver and arguments before the call); lambdas and nested scopes are not entered.
    Iterative, so a long chain such as ``a + b + ... + z`` cannot exhaust the stack."""
    stack: list[tuple[cst.CSTNode, bool]] = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        if isinstance(node, (cst.Lambda, cst.FunctionDef, cst.ClassDef)):
            continue
        if isinstance(node, (cst.Call, cst.Attribute, cst.Name)):
            stack.append((node, True))
        stack.extend((child, False) for child in reversed(child_nodes(node)))


# ---------------------------------------------------------------------------------------------
# The analysis.


class TrainingSteps:
    """All training steps of a file: ``ctx.get(TrainingSteps).steps``."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.module = _Module(ctx)
        candidates = self._candidates()
        built = [step for scope in candidates if (step := self._build(scope)) is not None]
        inlined = {helper for step in built for helper in step.helpers}
        kept = [step for step in built if step.function not in inlined]
        # Steps in functions and methods; `function` is always a cst.FunctionDef here.
        self.steps: list[TrainingStep] = [step for step in kept if isinstance(step.function, cst.FunctionDef)]
        # The step of a script's top-level code (`for batch in loader:` at module level, as in
        # nanoGPT's train.py), whose `function` is the cst.Module; None when there is none.
        self.script_step: TrainingStep | None = next((s for s in kept if isinstance(s.function, cst.Module)), None)

    def all_steps(self) -> list[TrainingStep]:
        """The steps of functions and methods, then the script's top-level step if any."""
        return [*self.steps, *([self.script_step] if self.script_step is not None else [])]

    def _candidates(self) -> list[cst.FunctionDef | cst.Module]:
        """Functions (or the module's top-level code) that call ``.backward``/``.step`` themselves."""
        found: dict[cst.FunctionDef | cst.Module, None] = {}
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            name = func.attr.value if isinstance(func, cst.Attribute) else None
            if name in ("backward", "manual_backward", "step") or self.ctx.qualified_name(func) == "torch.autograd.backward":
                function = self.module.function_of(call)
                if function is not None:
                    found.setdefault(function, None)
                elif self.ctx.enclosing(call, cst.ClassDef) is None and self.ctx.enclosing(call, cst.Lambda) is None:
                    found.setdefault(self.ctx.module, None)
        return list(found)

    def _build(self, function: cst.FunctionDef | cst.Module) -> TrainingStep | None:
        state = _BuildState(root=function)  # type: ignore[arg-type]
        builder = _Builder(self.module, state, function)  # type: ignore[arg-type]
        items = builder.block(function.body)
        own = [e for e in _flatten(items) if e.via_helper is None and e.kind in CORE_KINDS]
        if not own:
            return None
        loop = self._step_loop(function, [e for e in _flatten(items) if e.kind in CORE_KINDS])
        scope = _find_loop_body(items, loop) if loop is not None else items
        if scope is None:
            loop, scope = None, items
        self._mark_skips(scope, loop, state)
        return TrainingStep(
            function=function,
            events=list(_flatten(scope)),
            scalers=dict(state.scalers),
            optimizers=dict(state.optimizers),
            loop=loop,  # type: ignore[arg-type]
            uncertain_scalers=frozenset(state.uncertain - set(state.scalers)),
            helpers=frozenset(state.helpers),
            _items=scope,
        )

    def _step_loop(self, function: cst.FunctionDef, core: list[StepEvent]) -> cst.For | cst.While | None:
        """The innermost loop of the function around every backward and optimizer step."""
        common: list[cst.CSTNode] | None = None
        for event in core:
            loops = [a for a in self._ancestors_within(event.statement, function) if isinstance(a, (cst.For, cst.While))]
            loops = [loop for loop in loops if not _in_orelse(self.ctx, event.statement, loop)]
            common = loops if common is None else [loop for loop in common if loop in loops]
        return common[0] if common else None  # type: ignore[return-value]

    def _ancestors_within(self, node: cst.CSTNode, function: cst.FunctionDef) -> Iterator[cst.CSTNode]:
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                return
            yield ancestor

    def _mark_skips(self, scope: list[_Item], loop: cst.CSTNode | None, state: _BuildState) -> None:
        """An exit of the step that bypasses a finishing event (step, update, zero_grad) is a SKIP."""
        finishing = [state.order[id(e)] for e in _flatten(scope) if e.kind in _FINISHING_KINDS]
        scope_exits = {id(x) for x in _exits(scope)}
        for exit_, nesting, order in state.exits:
            if id(exit_) not in scope_exits or exit_.keyword == "raise":
                continue
            if exit_.keyword in ("continue", "break") and exit_.loop is not loop:
                continue
            bypasses = any(seq > order or _exclusive(n, nesting) for seq, n in finishing)
            if bypasses:
                exit_.event = StepEvent(
                    kind=EventKind.SKIP,
                    node=exit_.node,
                    statement=exit_.statement,
                    local_statement=exit_.statement,
                    guard=self._guard(exit_, state.root, loop),
                    skip_keyword=exit_.keyword,
                )

    def _guard(self, exit_: _Exit, function: cst.FunctionDef, loop: cst.CSTNode | None) -> SkipGuard:
        tests = []
        child: cst.CSTNode = exit_.node
        for ancestor in self.ctx.ancestors(exit_.node):
            if ancestor is function or ancestor is loop:
                break
            if isinstance(ancestor, cst.If) and child is not ancestor.test:
                tests.append(ancestor.test)
            child = ancestor
        return SkipGuard(
            test=tests[0] if tests else None,
            checks_finiteness=any(self.module.checks_finiteness(t, function) for t in tests),
            reads_grads=any(self.module.reads_grads(t, function) for t in tests),
        )


def _exits(items: Iterable[_Item]) -> Iterator[_Exit]:
    for item in items:
        if isinstance(item, _Exit):
            yield item
        elif isinstance(item, _Branch):
            for alternative in item.alternatives:
                yield from _exits(alternative)
        elif isinstance(item, _Loop):
            yield from _exits(item.body)


def _exclusive(first: tuple[tuple[int, int], ...], second: tuple[tuple[int, int], ...]) -> bool:
    """Whether two places lie in different alternatives of one branch."""
    alternatives = dict(first)
    return any(node in alternatives and alternatives[node] != index for node, index in second)


def _in_orelse(ctx: FileContext, node: cst.CSTNode, loop: cst.CSTNode) -> bool:
    orelse = getattr(loop, "orelse", None)
    return orelse is not None and any(a is orelse for a in ctx.ancestors(node))


def _find_loop_body(items: Iterable[_Item], loop: cst.CSTNode) -> list[_Item] | None:
    for item in items:
        if isinstance(item, _Loop):
            if item.node is loop:
                return item.body
            found = _find_loop_body(item.body, loop)
        elif isinstance(item, _Branch):
            found = next((f for a in item.alternatives if (f := _find_loop_body(a, loop)) is not None), None)
        else:
            continue
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# Shared fix helpers (rules that insert or remove scaler calls).


def removal_edit(ctx: FileContext, statement: cst.CSTNode) -> Edit | None:
    """Delete a one-call statement line; when it is the only statement of an ``if`` without
    ``else`` whose test calls nothing, delete that ``if`` instead. None when neither is safe."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    block = ctx.parent(statement)
    owner = ctx.parent(block) if block is not None else None
    if isinstance(block, cst.IndentedBlock) and len(block.body) == 1:
        if isinstance(owner, cst.If) and owner.orelse is None and not _calls_anything(owner.test):
            parent = ctx.parent(owner)
            if isinstance(parent, cst.IndentedBlock) and len(parent.body) > 1:
                return ctx.remove(owner)
        return None
    return ctx.remove(statement)


def statement_in_step(ctx: FileContext, step: TrainingStep, event: StepEvent) -> cst.CSTNode:
    """The statement of the step's own block that holds the event: a line inside a loop of the
    step (``for p in model.parameters():``) gives that loop, so code inserted before it runs
    once per step, not once per parameter."""
    outermost = event.statement
    for ancestor in ctx.ancestors(event.statement):
        if ancestor is step.loop or ancestor is step.function:
            break
        if isinstance(ancestor, (cst.For, cst.While)):
            outermost = ancestor
    return outermost


def _calls_anything(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Call) or any(isinstance(n, cst.Call) for n in _descendants(expr))


def unscale_insertion(step: TrainingStep, at: StepEvent, scaler: str, optimizer: str) -> list[StepEvent] | None:
    """Whether ``scaler.unscale_(optimizer)`` may be run right at ``at`` (after a backward, or
    before a clip), and which later ``unscale_`` calls of the same optimizer it makes redundant.

    Safe when, on every path through ``at``: no ``unscale_`` of that optimizer already ran since
    the last update; after ``at`` the path reaches ``scaler.update()`` or a skip on a gradient or
    NaN/Inf test (TL109 adds the update there), so the next step does not unscale twice; and each
    later ``unscale_`` to remove is reached only through ``at``. Returns the calls to remove, or
    None when it is not safe (gradient accumulation that skips the update, for example)."""
    removals: dict[int, StepEvent] = {}
    for path in step.paths():
        position = next((i for i, e in enumerate(path) if e is at), None)
        if position is None:
            continue
        later = path[position + 1 :]
        if any(_unscales(e, scaler, optimizer) for e in _since_update(path[:position], scaler)):
            return None
        if not _reaches_update_or_checked_skip(later, scaler):
            return None
        for event in later:
            if _unscales(event, scaler, optimizer):
                removals[id(event)] = event
    for path in step.paths():  # a removed call must never run without ``at`` before it
        seen_at = False
        for event in path:
            seen_at = seen_at or event is at
            if id(event) in removals and not seen_at:
                return None
    return list(removals.values())


def _unscales(event: StepEvent, scaler: str, optimizer: str) -> bool:
    return event.kind is EventKind.UNSCALE and event.scaler == scaler and event.optimizer == optimizer


def _since_update(events: Sequence[StepEvent], scaler: str) -> Sequence[StepEvent]:
    for index in range(len(events) - 1, -1, -1):
        if events[index].kind is EventKind.SCALER_UPDATE and events[index].scaler == scaler:
            return events[index + 1 :]
    return events


def _reaches_update_or_checked_skip(events: Sequence[StepEvent], scaler: str) -> bool:
    for event in events:
        if event.kind is EventKind.SCALER_UPDATE and event.scaler == scaler:
            return True
        if event.kind is EventKind.SKIP:
            guard = event.guard
            return guard is not None and (guard.checks_finiteness or guard.reads_grads)
    return False
