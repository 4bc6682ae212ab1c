"""Which model a piece of training code runs, and which layers that model holds.

Two questions come up in several rules:

- "What is this class?": the classes of this file with their ``__init__`` and ``forward``.
- "Which model does this code run or train, and what does it hold?": what a model expression
  *is* comes from the value-flow engine (``model = build_model(cfg)``, ``self.model = model``
  with ``Trainer(model)`` at a call site, ``DDP(model)``, ``accelerator.prepare``); which torch
  layers a class of the project builds comes from the project index (transitively through its
  submodules and bases, this file's classes read from the text being linted).

API (``structure = ctx.get(ModelStructure)``)::

    structure.classes                       # {name: ModelClass} for top-level classes here
    structure.class_of(node)                # the innermost ModelClass a node sits in, or None
    structure.class_for(class_def)          # the ModelClass of any ClassDef (nested ones too)
    structure.forward_of(node)              # the model class whose forward pass runs the node
    structure.forward_place(node)           # "`Net.forward`" / "`Net._attend` (run by `forward`)"
    structure.models(expr)                  # the model instances an expression may hold
    structure.built_by(expr)                # frozenset of the classes/factories that built them
    structure.model_layers(expr)            # frozenset of torch layers of those models
    structure.layers_of_value(value)        # the same for one engine value
    structure.runs_in(node)                 # [ModelRun] forward passes under a node (a `with`
                                            # body, a function), following self.helper() calls
    contains(layers, CONV3D)                # helper: any of a family of layers present

A loss or activation module (``criterion = nn.BCELoss()``) is never a model. Precision first:
an expression the engine cannot follow gives no model, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values import Collection, Instance, Parameters, Value, ValueFlow, Values
from trainlint.analysis.values.torch_semantics import (
    CONTAINER_MODULES,
    CONV3D,
    LIBRARY_LAYERS,
    MODEL_FACTORIES,
    RECURRENT,
    is_activation_class,
    is_loss_class,
    is_torch_layer,
)
from trainlint.context import child_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext

_MAX_CONTENT_DEPTH = 4
# Library base classes of models (``nn.Module``, ``LightningModule``, ``PreTrainedModel``).
_MODEL_BASE_SUFFIXES = ("Module", "Model", "Network", "Net")


def contains(layers: Iterable[str], family: Iterable[str]) -> bool:
    family = frozenset(family)
    return any(layer in family for layer in layers)


@dataclass(frozen=True)
class ModelClass:
    """A class of this file."""

    name: str
    qualified: str
    node: cst.ClassDef
    init: cst.FunctionDef | None
    forward: cst.FunctionDef | None

    def method(self, name: str) -> cst.FunctionDef | None:
        for statement in self.node.body.body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
                return statement
        return None

    @property
    def methods(self) -> list[cst.FunctionDef]:
        return [s for s in self.node.body.body if isinstance(s, cst.FunctionDef)]


@dataclass(frozen=True)
class ModelRun:
    """A call that runs a model's forward pass: ``model(x)``, ``self.net.forward(x)``, ``self(x)``."""

    call: cst.Call
    model: cst.BaseExpression  # the model as written
    built_by: frozenset[str]  # qualified names of the classes/factories that built it
    layers: frozenset[str]  # of any model it may be
    instances: tuple[Instance, ...] = ()
    common_layers: frozenset[str] = frozenset()  # of every model it may be ("must"); empty when it may be unknown


def number(expr: cst.BaseExpression) -> float | None:
    """The value of a numeric literal (``0.1``, ``-1``, ``1e-1``), else None."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        return float(expr.evaluated_value)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, (cst.Minus, cst.Plus)):
        inner = number(expr.expression)
        if inner is not None:
            return -inner if isinstance(expr.operator, cst.Minus) else inner
    return None


def _of_unknown_owner(value: Value) -> bool:
    """The parameters of a module the engine cannot see, or nothing it knows as parameters."""
    if isinstance(value, Parameters):
        return not _owned_by_known_modules(value)
    return not isinstance(value, Collection)


def _owned_by_known_modules(parameters: Parameters) -> bool:
    """Every module the parameters may belong to is one the engine knows (an instance)."""
    owners = parameters.owners
    return not owners.unknown and owners.must(lambda v: isinstance(v, Instance))


def self_attribute(expr: cst.BaseExpression) -> str | None:
    """``attr`` for ``self.attr``, else None."""
    if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
        return expr.attr.value
    return None


class ModelStructure:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self.classes: dict[str, ModelClass] = {}
        self._functions: dict[str, cst.FunctionDef] = {}
        for statement in ctx.module.body:
            if isinstance(statement, cst.ClassDef):
                self.classes[statement.name.value] = self._model_class(statement)
            elif isinstance(statement, cst.FunctionDef):
                self._functions[statement.name.value] = statement
        self._nested: dict[cst.ClassDef, ModelClass] = {}
        self._module_classes: dict[str, bool] = {}
        self._forward_helpers: dict[cst.ClassDef, set[cst.FunctionDef]] = {}

    # -- classes of this file ------------------------------------------------------------------
    def _model_class(self, node: cst.ClassDef) -> ModelClass:
        methods = {s.name.value: s for s in node.body.body if isinstance(s, cst.FunctionDef)}
        return ModelClass(
            name=node.name.value,
            qualified=self.flow.qualified_of(node),
            node=node,
            init=methods.get("__init__"),
            forward=methods.get("forward"),
        )

    def class_for(self, node: cst.ClassDef) -> ModelClass:
        """The ModelClass of any class of this file, nested ones included (built once)."""
        if self.ctx.parent(node) is self.ctx.module and node.name.value in self.classes:
            return self.classes[node.name.value]
        found = self._nested.get(node)
        if found is None:
            found = self._nested[node] = self._model_class(node)
        return found

    def class_of(self, node: cst.CSTNode) -> ModelClass | None:
        """The innermost class of this file that ``node`` sits in (whose ``self`` it sees)."""
        class_def = self.ctx.enclosing(node, cst.ClassDef)
        return self.class_for(class_def) if class_def is not None else None

    def forward_of(self, node: cst.CSTNode) -> ModelClass | None:
        """The model class (an ``nn.Module`` of the project) whose forward pass runs ``node``: it
        sits in the class's ``forward``, or in a method that ``forward`` calls as
        ``self.<method>(...)`` (two calls deep at most)."""
        owner = self.class_of(node)
        function = self.flow.scopes.function_of(node)
        if owner is None or owner.forward is None or function is None or self.flow.enclosing_class(function) is not owner.node:
            return None
        if function is not owner.forward and function not in self._called_by_forward(owner):
            return None
        return owner if self.is_model(Instance(owner.qualified)) else None

    def forward_place(self, node: cst.CSTNode) -> str:
        """Where in the forward pass a node is, for messages: ```Decoder.forward``` or
        ```Decoder._attend` (run by `forward`)``."""
        owner = self.forward_of(node)
        if owner is None:
            return ""
        function = self.flow.scopes.function_of(node)
        if function is None or function is owner.forward:
            return f"`{owner.name}.forward`"
        return f"`{owner.name}.{function.name.value}` (run by `forward`)"

    def _called_by_forward(self, owner: ModelClass) -> set[cst.FunctionDef]:
        if owner.node not in self._forward_helpers:
            self._forward_helpers[owner.node] = self._forward_helpers_of(owner)
        return self._forward_helpers[owner.node]

    def _forward_helpers_of(self, owner: ModelClass) -> set[cst.FunctionDef]:
        found: set[cst.FunctionDef] = set()
        frontier = [owner.forward] if owner.forward is not None else []
        for _ in range(2):
            called = []
            for function in frontier:
                for call in _walk(function.body):
                    method = owner.method(attr) if isinstance(call, cst.Call) and (attr := self_attribute(call.func)) else None
                    if method is not None and method is not owner.forward and method not in found:
                        found.add(method)
                        called.append(method)
            frontier = called
        return found

    # -- which models an expression holds ------------------------------------------------------------
    def models(self, expr: cst.BaseExpression) -> Values:
        """The model instances ``expr`` may hold (losses, activations and non-models left out)."""
        return self.flow.values(expr).without(lambda v: not self.is_model(v))

    def is_model(self, value: Value) -> bool:
        """An instance of a module class of the project (not a loss), a torch layer that is
        neither a loss nor an activation, or a known library model factory's result."""
        if not isinstance(value, Instance):
            return False
        if is_torch_layer(value.cls):
            return not is_loss_class(value.cls) and not is_activation_class(value.cls)
        if value.cls.startswith(MODEL_FACTORIES) or any(value.cls.startswith(lib + ".") for lib in LIBRARY_LAYERS):
            return True
        return self._is_project_module(value.cls)

    def _is_project_module(self, qualified: str) -> bool:
        found = self._module_classes.get(qualified)
        if found is None:
            if self.flow.class_definition(qualified) is None or qualified.endswith(("Loss", "Criterion")):
                found = False
            else:
                library_bases = [b for b in self.flow.base_names(qualified)[1:] if self.flow.class_definition(b) is None]
                found = any(b.startswith("torch.nn.") or b.endswith(_MODEL_BASE_SUFFIXES) for b in library_bases)
            self._module_classes[qualified] = found
        return found

    def built_by(self, expr: cst.BaseExpression) -> frozenset[str]:
        """Qualified names of the classes (or library factories) that built the models ``expr``
        may hold."""
        return frozenset(v.cls for v in self.models(expr).of_type(Instance))

    def model_layers(self, expr: cst.BaseExpression) -> frozenset[str]:
        """Torch layers of the models that ``expr`` may hold (empty when unknown)."""
        layers: set[str] = set()
        for value in self.models(expr):
            layers |= self.layers_of_value(value)
        return frozenset(layers)

    def layers_of_value(self, value: Value, depth: int = 0) -> frozenset[str]:
        """Torch layers a value holds: a torch layer is itself (an ``nn.Sequential`` also holds
        what it was built with), a project class its layers transitively, the parameters of
        modules their modules' layers."""
        if isinstance(value, Parameters):
            return frozenset(layer for owner in value.owners for layer in self.layers_of_value(owner, depth + 1))
        if not isinstance(value, Instance) or depth > _MAX_CONTENT_DEPTH:
            return frozenset()
        for library, layers in LIBRARY_LAYERS.items():
            if value.cls.startswith(library + "."):
                return layers
        if is_torch_layer(value.cls):
            if value.cls in CONTAINER_MODULES or value.cls.endswith(("ModuleList", "ModuleDict")):
                return frozenset({value.cls}) | self._contents(value, depth)
            return frozenset({value.cls})
        site_ctx = value.site.ctx if value.site is not None else self.ctx
        return self.ctx.project.layers_of(value.cls, site_ctx.real_path or self.ctx.real_path)

    def trained_layers(self, params: Values) -> frozenset[str]:
        """Layers an optimizer built over ``params`` certainly trains ("must"): those of every
        known value ``params`` may be (``model.parameters()`` where ``model`` is one of several
        networks: only the layers they all have). A value of unknown owner (a model loaded with
        ``torch.load`` when resuming) adds nothing and takes nothing away. A list or parameter
        groups train the layers of each of their items."""
        alternatives = [
            self._layers_trained_by(Values.of(value), 0) for value in params if not _of_unknown_owner(value)
        ]
        return frozenset.intersection(*alternatives) if alternatives else frozenset()

    def _layers_trained_by(self, parts: Values, depth: int) -> frozenset[str]:
        """The layers of all of ``parts`` (the elements a list or parameter group may hold, each
        of which it does hold as far as the engine can tell), each part counting the layers
        every module it may belong to has."""
        layers: set[str] = set()
        if depth > _MAX_CONTENT_DEPTH:
            return frozenset()
        for value in parts:
            if isinstance(value, Parameters):
                each = [self.layers_of_value(owner) for owner in value.owners]
                if each and _owned_by_known_modules(value):
                    layers |= frozenset.intersection(*each)
            elif isinstance(value, Collection):
                items = [value.item("params")] if value.kind == "dict" else list(value.items)
                for item in items:
                    layers |= self._layers_trained_by(item, depth + 1)
        return frozenset(layers)

    def modules_in(self, params: Values, depth: int = 0) -> Values:
        """The modules whose parameters an optimizer's ``params`` hold: ``m.parameters()``,
        lists of them, parameter groups (``[{"params": m.encoder.parameters()}, ...]``)."""
        if depth > _MAX_CONTENT_DEPTH:
            return Values()
        parts: list[Values] = []
        for value in params:
            if isinstance(value, Parameters):
                parts.append(value.owners.without(lambda v: not isinstance(v, Instance)))
            elif isinstance(value, Collection):
                items = [value.item("params")] if value.kind == "dict" else list(value.items)
                parts.extend(self.modules_in(item, depth + 1) for item in items)
        return Values.union(parts)

    def layers_of(self, qualified: str) -> frozenset[str]:
        """Torch layers of a class of the project (or a torch layer itself) by qualified name."""
        if is_torch_layer(qualified):
            return frozenset({qualified})
        return self.ctx.project.layers_of(qualified, self.ctx.real_path)

    def _contents(self, container: Instance, depth: int) -> frozenset[str]:
        call = container.call
        if call is None:
            return frozenset()
        flow = self.flow.flow_of(container)
        layers: set[str] = set()
        for arg in call.args:
            values = flow.evaluate(arg.value, False)
            if arg.star == "*" or isinstance(arg.value, (cst.List, cst.Tuple)):
                values = flow.iterate(values)
            for item in values:
                layers |= self.layers_of_value(item, depth + 1)
        return frozenset(layers)

    # -- forward passes ---------------------------------------------------------------------------
    def runs_in(self, node: cst.CSTNode, follow: int = 2) -> list[ModelRun]:
        """Calls under ``node`` that run a known model, also inside ``self.helper()`` methods and
        local functions called there (``follow`` levels deep)."""
        runs: list[ModelRun] = []
        self._collect_runs(node, follow, set(), runs)
        return runs

    def _collect_runs(self, node: cst.CSTNode, follow: int, visited: set[cst.CSTNode], runs: list[ModelRun]) -> None:
        for call in _walk(node):
            if not isinstance(call, cst.Call):
                continue
            run = self._model_run(call)
            if run is not None:
                runs.append(run)
                continue
            if follow > 0:
                helper = self._local_callee(call)
                if helper is not None and helper not in visited:
                    visited.add(helper)
                    self._collect_runs(helper.body, follow - 1, visited, runs)

    def _model_run(self, call: cst.Call) -> ModelRun | None:
        model: cst.BaseExpression = call.func
        if isinstance(model, cst.Attribute) and model.attr.value == "forward":
            model = model.value
        if not isinstance(model, (cst.Name, cst.Attribute)):
            return None
        if isinstance(model, cst.Name) and model.value != "self" and self.ctx.qualified_name(model) is not None:
            return None  # a class or function called by name builds, it does not run a model
        models = self.models(model)
        instances = tuple(models.of_type(Instance))
        each = [self.layers_of_value(instance) for instance in instances]
        layers = frozenset().union(*each)
        if not layers:
            return None
        common = frozenset.intersection(*each) if each and not models.unknown else frozenset()
        return ModelRun(call, model, frozenset(i.cls for i in instances), layers, instances, common)

    def _local_callee(self, call: cst.Call) -> cst.FunctionDef | None:
        func = call.func
        if isinstance(func, cst.Name):
            return self._functions.get(func.value)
        attr = self_attribute(func)
        if attr is not None:
            owner = self.class_of(call)
            if owner is not None:
                return owner.method(attr)
        return None


# -- helpers on the tree ---------------------------------------------------------------------------
def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included); nested functions, classes and lambdas are
    other scopes and are not entered."""
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed([c for c in child_nodes(current) if not isinstance(c, _SCOPES)]))


_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)

__all__ = [
    "CONV3D", "RECURRENT", "ModelClass", "ModelRun", "ModelStructure", "contains", "number", "self_attribute",
]
