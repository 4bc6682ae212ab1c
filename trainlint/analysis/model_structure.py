"""Which model a piece of training code runs, and which layers that model holds.

Two questions come up in several rules:

- "What is this class?": the classes of this file with their ``__init__``, their ``forward``,
  the constant attributes ``__init__`` sets (``self.residual_scale = 0.1``) and the submodules
  it builds (``self.backbone = build_backbone(cfg)``).
- "Which model does this code run or train?": a model expression (``model``, ``self.model``,
  ``self.net.module``) is followed back to what built it (``model = build_model(cfg)``,
  ``model = VideoNet().cuda()``, ``self.model = model`` in ``__init__`` with ``Trainer(model)`` at
  the call site, ``model = DDP(model)``), giving the qualified names of the classes or factory
  functions that built it. Their layers come from this file's own tree for local definitions
  (the text being linted, which may differ from the disk during ``--fix``) and from
  ``ctx.project.layers_of`` for every other module of the project.

API (``structure = ctx.get(ModelStructure)``)::

    structure.classes                       # {name: ModelClass} for top-level classes here
    structure.class_of(node)                # the innermost ModelClass a node sits in, or None
    structure.class_for(class_def)          # the ModelClass of any ClassDef (nested ones too)
    structure.built_by(expr)                # frozenset of qualified names that built a model expr
    structure.model_layers(expr)            # frozenset of torch callables of that model
    structure.layers_of(qualified)          # the same for a class/factory qualified name
    structure.runs_in(node)                 # [ModelRun] forward passes under a node (a `with`
                                            # body, a function), following self.helper() calls
    contains(layers, CONV3D)                # helper: any of a family of layers present

Precision first: an expression that cannot be followed gives an empty set, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.context import child_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext

# Families of layers rules ask about (qualified names as the project index reports them).
CONV3D = frozenset({"torch.nn.Conv3d", "torch.nn.LazyConv3d", "torch.nn.functional.conv3d", "torch.conv3d",
                    "torch.nn.modules.conv.Conv3d"})
RECURRENT = frozenset({
    "torch.nn.RNN", "torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNNCell", "torch.nn.LSTMCell",
    "torch.nn.GRUCell", "torch.nn.Transformer", "torch.nn.TransformerEncoder",
    "torch.nn.TransformerDecoder", "torch.nn.TransformerEncoderLayer", "torch.nn.TransformerDecoderLayer",
})

# Library model factories whose layers are known without reading them (they are not project code).
_LIBRARY_LAYERS: Mapping[str, frozenset[str]] = {
    "torchvision.models.video": frozenset({"torch.nn.Conv3d"}),
}

# Calls that return the model they are given (as their first argument).
_WRAPPERS = frozenset({
    "torch.nn.DataParallel", "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.DistributedDataParallel", "torch.nn.parallel.distributed.DistributedDataParallel",
    "torch.compile", "torch.jit.script", "torch.jit.trace", "copy.deepcopy",
    "torch.nn.SyncBatchNorm.convert_sync_batchnorm", "torch.ao.quantization.prepare",
})
# The same for names written bare with an unresolved import (``DDP(model)`` after a star import).
_WRAPPER_TAILS = frozenset({"DataParallel", "DistributedDataParallel", "DDP", "FSDP", "FullyShardedDataParallel"})
# Methods that return the module they are called on.
_SELF_RETURNING = frozenset({
    "to", "cuda", "cpu", "float", "half", "bfloat16", "double", "train", "eval", "requires_grad_",
    "to_empty", "apply", "share_memory", "xpu", "type",
})
# Methods returning their arguments in order (``accelerator.prepare``, ``fabric.setup``, apex).
_PASSTHROUGH_METHODS = frozenset({"prepare", "setup", "initialize", "prepare_model"})
_MAX_DEPTH = 16


def contains(layers: Iterable[str], family: Iterable[str]) -> bool:
    family = frozenset(family)
    return any(layer in family for layer in layers)


@dataclass(frozen=True)
class ModelClass:
    """A top-level class of this file."""

    name: str
    qualified: str
    node: cst.ClassDef
    init: cst.FunctionDef | None
    forward: cst.FunctionDef | None
    # ``self.<attr> = <number>`` set exactly once in the class, in ``__init__``
    constants: Mapping[str, float] = field(default_factory=dict)
    # ``self.<attr> = <call>(...)`` in ``__init__``: the attribute and the call's qualified name
    submodules: Mapping[str, str] = field(default_factory=dict)

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
    layers: frozenset[str]


def number(expr: cst.BaseExpression) -> float | None:
    """The value of a numeric literal (``0.1``, ``-1``, ``1e-1``), else None."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        return float(expr.evaluated_value)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, (cst.Minus, cst.Plus)):
        inner = number(expr.expression)
        if inner is not None:
            return -inner if isinstance(expr.operator, cst.Minus) else inner
    return None


def self_attribute(expr: cst.BaseExpression) -> str | None:
    """``attr`` for ``self.attr``, else None."""
    if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
        return expr.attr.value
    return None


def _parameter_names(function: cst.FunctionDef) -> list[str]:
    params = function.params
    return [p.name.value for p in (*params.posonly_params, *params.params)]


class ModelStructure:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.prefix = ctx.module_name or "__main__"
        self.classes: dict[str, ModelClass] = {}
        self._functions: dict[str, cst.FunctionDef] = {}
        for statement in ctx.module.body:
            if isinstance(statement, cst.ClassDef):
                self.classes[statement.name.value] = self._model_class(statement)
            elif isinstance(statement, cst.FunctionDef):
                self._functions[statement.name.value] = statement
        self._nested: dict[cst.ClassDef, ModelClass] = {}
        self._nested_by_name: dict[str, ModelClass] = {}
        self._layer_cache: dict[str, frozenset[str]] = {}
        self._in_progress: set[str] = set()

    # -- classes of this file ------------------------------------------------------------------
    def _model_class(self, node: cst.ClassDef) -> ModelClass:
        methods = {s.name.value: s for s in node.body.body if isinstance(s, cst.FunctionDef)}
        init = methods.get("__init__")
        return ModelClass(
            name=node.name.value,
            qualified=f"{self.prefix}.{self._class_path(node)}",
            node=node,
            init=init,
            forward=methods.get("forward"),
            constants=self._constants(node, init),
            submodules=self._submodules(init),
        )

    def _class_path(self, node: cst.ClassDef) -> str:
        """``Outer.Inner`` for a nested class, its name for a top-level one."""
        names = [node.name.value]
        names += [a.name.value for a in self.ctx.ancestors(node) if isinstance(a, cst.ClassDef)]
        return ".".join(reversed(names))

    @cached_property
    def _assignments_by_scope(self) -> dict[cst.CSTNode, list[cst.CSTNode]]:
        """Every assignment statement of the file under each class and function that holds it
        (nested scopes included), from the shared node index: one pass instead of a walk per
        class. Each kind is in source order; plain assignments come before annotated and
        augmented ones."""
        by_scope: dict[cst.CSTNode, list[cst.CSTNode]] = {}
        nodes = self.ctx.nodes
        for assignment in (*nodes.of(cst.Assign), *nodes.of(cst.AnnAssign), *nodes.of(cst.AugAssign)):
            for scope in self.ctx.ancestors(assignment):
                if isinstance(scope, (cst.FunctionDef, cst.ClassDef)):
                    by_scope.setdefault(scope, []).append(assignment)
        return by_scope

    def _self_assignments(self, node: cst.CSTNode) -> Iterator[tuple[str, cst.BaseExpression | None]]:
        """``(attr, value)`` of every ``self.attr = value`` (``value`` None for aug/annotated-only)."""
        for child in self._assignments_by_scope.get(node, ()):
            if isinstance(child, cst.Assign):
                for target in child.targets:
                    for element in _target_elements(target.target):
                        attr = self_attribute(element)
                        if attr is not None:
                            simple = isinstance(target.target, cst.Attribute)
                            yield attr, child.value if simple and len(child.targets) == 1 else None
            elif isinstance(child, (cst.AugAssign, cst.AnnAssign)):
                attr = self_attribute(child.target)
                if attr is not None:
                    value = child.value if isinstance(child, cst.AnnAssign) else None
                    yield attr, value

    def _constants(self, node: cst.ClassDef, init: cst.FunctionDef | None) -> dict[str, float]:
        if init is None:
            return {}
        counts: dict[str, int] = {}
        for attr, _ in self._self_assignments(node):
            counts[attr] = counts.get(attr, 0) + 1
        constants: dict[str, float] = {}
        for attr, value in self._self_assignments(init):
            if counts.get(attr) == 1 and value is not None:
                found = number(value)
                if found is not None:
                    constants[attr] = found
        return constants

    def _submodules(self, init: cst.FunctionDef | None) -> dict[str, str]:
        if init is None:
            return {}
        found: dict[str, str] = {}
        for attr, value in self._self_assignments(init):
            if isinstance(value, cst.Call):
                name = self.ctx.qualified_name(value.func)
                if name:
                    found[attr] = name
        return found

    def class_for(self, node: cst.ClassDef) -> ModelClass:
        """The ModelClass of any class of this file, nested ones included (built once)."""
        if self.ctx.parent(node) is self.ctx.module and node.name.value in self.classes:
            return self.classes[node.name.value]
        found = self._nested.get(node)
        if found is None:
            found = self._nested[node] = self._model_class(node)
            self._nested_by_name[found.qualified] = found
        return found

    def class_of(self, node: cst.CSTNode) -> ModelClass | None:
        """The innermost class of this file that ``node`` sits in (whose ``self`` it sees)."""
        class_def = self.ctx.enclosing(node, cst.ClassDef)
        return self.class_for(class_def) if class_def is not None else None

    # -- layers of a class or factory -----------------------------------------------------------
    def layers_of(self, qualified: str) -> frozenset[str]:
        """Torch callables (``torch.nn.Conv3d``) that the class or factory ``qualified`` builds,
        transitively; this file's definitions read from its tree, the rest from the project."""
        cached = self._layer_cache.get(qualified)
        if cached is not None:
            return cached
        if qualified in self._in_progress:
            return frozenset()
        self._in_progress.add(qualified)
        try:
            layers = frozenset(self._compute_layers(qualified))
        finally:
            self._in_progress.discard(qualified)
        self._layer_cache[qualified] = layers
        return layers

    def _compute_layers(self, qualified: str) -> Iterator[str]:
        for library, layers in _LIBRARY_LAYERS.items():
            if qualified.startswith(library + "."):
                yield from layers
                return
        if qualified.startswith("torch."):
            if qualified.startswith("torch.nn.") and qualified.rpartition(".")[2][:1].isupper():
                yield qualified  # the model is a torch layer itself: ``model = nn.LSTM(...)``
            return
        module, _, name = qualified.rpartition(".")
        if module == self.prefix and name in self.classes:
            yield from self._class_layers(self.classes[name])
        elif qualified in self._nested_by_name:
            yield from self._class_layers(self._nested_by_name[qualified])
        elif module == self.prefix and name in self._functions:
            for built in self._returned_models(self._functions[name]):
                yield from self.layers_of(built)
        else:
            yield from self.ctx.project.layers_of(qualified, importer=self.ctx.real_path)

    def _class_layers(self, model: ModelClass) -> Iterator[str]:
        called: set[str] = set()
        for base in model.node.bases:
            name = self.ctx.qualified_name(base.value)
            if name:
                called.add(name)
        for node in _walk(model.node.body, into_definitions=True):
            if isinstance(node, cst.Call):
                name = self.ctx.qualified_name(node.func)
                if name:
                    called.add(name)
        for name in called:
            if name.startswith("torch."):
                yield name
            else:
                yield from self.layers_of(name)

    def _returned_models(self, function: cst.FunctionDef) -> set[str]:
        built: set[str] = set()
        for node in _walk(function.body):
            if isinstance(node, cst.Return) and node.value is not None:
                built |= self.built_by(node.value)
        return built

    # -- which model an expression is -------------------------------------------------------------
    def model_layers(self, expr: cst.BaseExpression) -> frozenset[str]:
        """Torch callables of the model that ``expr`` holds (empty when unknown)."""
        layers: set[str] = set()
        for name in self.built_by(expr):
            layers |= self.layers_of(name)
        return frozenset(layers)

    def built_by(self, expr: cst.BaseExpression) -> frozenset[str]:
        """Qualified names of the classes or factory functions that built the model ``expr``
        holds, following local names, ``self.<attr>``, wrappers and call sites of parameters."""
        return frozenset(self._built_by(expr, 0, set()))

    def _built_by(self, expr: cst.BaseExpression, depth: int, seen: set[cst.CSTNode]) -> Iterator[str]:
        # ``seen`` is shared by the whole query: a node followed once has given all it can.
        if depth > _MAX_DEPTH or expr in seen:
            return
        seen.add(expr)
        if isinstance(expr, cst.Call):
            yield from self._built_by_call(expr, depth, seen)
        elif isinstance(expr, cst.IfExp):
            yield from self._built_by(expr.body, depth + 1, seen)
            yield from self._built_by(expr.orelse, depth + 1, seen)
        elif isinstance(expr, cst.Name):
            if expr.value == "self":
                model = self.class_of(expr)
                if model is not None:
                    yield model.qualified
                return
            for value in self._name_values(expr):
                yield from self._built_by(value, depth + 1, seen)
        elif isinstance(expr, cst.Attribute):
            if expr.attr.value == "module":  # DataParallel(model).module is the model
                yield from self._built_by(expr.value, depth + 1, seen)
                return
            attr = self_attribute(expr)
            if attr is not None:
                for value in self._self_attribute_values(expr, attr):
                    yield from self._built_by(value, depth + 1, seen)

    def _built_by_call(self, call: cst.Call, depth: int, seen: set[cst.CSTNode]) -> Iterator[str]:
        func = call.func
        method_on_value = self.ctx.qualified_name(func) is None  # not a module function
        if isinstance(func, cst.Attribute) and func.attr.value in _SELF_RETURNING and method_on_value:
            yield from self._built_by(func.value, depth + 1, seen)  # `model.cuda()` is the model
            return
        name = self.ctx.qualified_name(func)
        tail = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if name in _WRAPPERS or tail in _WRAPPER_TAILS:
            first = _argument(call, 0, "module") or _argument(call, 0, "model")
            if first is not None:
                yield from self._built_by(first, depth + 1, seen)
            return
        if name is not None:
            yield name

    # -- bindings of names ------------------------------------------------------------------------
    def _name_values(self, name: cst.Name) -> Iterator[cst.BaseExpression]:
        """Expressions assigned to ``name`` in its function (or the module), and for a parameter
        the arguments passed to it at the call sites of this file."""
        function = self.ctx.enclosing(name, cst.FunctionDef)
        scope: cst.CSTNode = function if function is not None else self.ctx.module
        values = list(_assigned_values(scope, name.value))
        if values:
            yield from values
            return
        if function is not None:
            if name.value in _parameter_names(function):
                yield from self._arguments_for(function, name.value)
                return
            yield from _assigned_values(self.ctx.module, name.value)

    def _self_attribute_values(self, expr: cst.Attribute, attr: str) -> Iterator[cst.BaseExpression]:
        model = self.class_of(expr)
        if model is None:
            return
        for method in model.methods:
            for assigned, value in self._self_assignments(method):
                if assigned == attr and value is not None:
                    yield value
            for value in _unpacked_self_values(method, attr):
                yield value

    def _arguments_for(self, function: cst.FunctionDef, parameter: str) -> Iterator[cst.BaseExpression]:
        """Arguments passed for ``parameter`` at this file's calls of ``function``."""
        names = _parameter_names(function)
        owner = self.class_of(function)
        is_method = owner is not None and self.ctx.parent(self.ctx.parent(function)) is owner.node  # type: ignore[arg-type]
        if is_method and names and names[0] in ("self", "cls"):
            names = names[1:]
        if parameter not in names:
            return
        index = names.index(parameter)
        for call in self.ctx.nodes.of(cst.Call):
            if self._calls_function(call, function, owner if is_method else None):
                argument = _argument(call, index, parameter)
                if argument is not None:
                    yield argument

    def _calls_function(self, call: cst.Call, function: cst.FunctionDef, owner: ModelClass | None) -> bool:
        func = call.func
        if owner is None:
            return isinstance(func, cst.Name) and func.value == function.name.value
        if function.name.value == "__init__":
            return self.ctx.qualified_name(func) == owner.qualified
        return isinstance(func, cst.Attribute) and func.attr.value == function.name.value and (
            isinstance(func.value, cst.Name) and func.value.value == "self" and self.class_of(call) is owner
        )

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
        built = self.built_by(model)
        layers: set[str] = set()
        for name in built:
            layers |= self.layers_of(name)
        if not layers:
            return None
        return ModelRun(call, model, built, frozenset(layers))

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
def _walk(node: cst.CSTNode, into_definitions: bool = False) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (itself included). Nested functions, classes and lambdas are
    other scopes: they are entered only with ``into_definitions``."""
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        yield current
        children = child_nodes(current)
        if not into_definitions:
            children = [c for c in children if not isinstance(c, _SCOPES)]
        stack.extend(reversed(children))


_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda)


def _target_elements(target: cst.BaseExpression) -> Iterator[cst.BaseExpression]:
    if isinstance(target, (cst.Tuple, cst.List)):
        for element in target.elements:
            yield from _target_elements(element.value)
    else:
        yield target


def _argument(call: cst.Call, index: int, keyword: str) -> cst.BaseExpression | None:
    """The argument passed at position ``index`` or as ``keyword=``."""
    position = 0
    for arg in call.args:
        if arg.star:
            return None
        if arg.keyword is not None:
            if arg.keyword.value == keyword:
                return arg.value
            continue
        if position == index:
            return arg.value
        position += 1
    return None


def _passthrough_element(value: cst.BaseExpression, index: int) -> cst.BaseExpression | None:
    """For ``a, b = accelerator.prepare(x, y)`` the argument that lands in element ``index``."""
    if (
        isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.attr.value in _PASSTHROUGH_METHODS
    ):
        return _argument(value, index, "\0")
    if isinstance(value, (cst.Tuple, cst.List)) and index < len(value.elements):
        return value.elements[index].value
    return None


def _assigned_values(scope: cst.CSTNode, name: str) -> Iterator[cst.BaseExpression]:
    """Values bound to the plain name ``name`` by assignments directly in ``scope``."""
    body = scope.body if isinstance(scope, cst.FunctionDef) else scope
    for node in _walk(body):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                yield from _bound_value(target.target, node.value, name)
        elif isinstance(node, cst.AnnAssign) and node.value is not None or isinstance(node, cst.NamedExpr):
            yield from _bound_value(node.target, node.value, name)


def _bound_value(target: cst.BaseExpression, value: cst.BaseExpression, name: str) -> Iterator[cst.BaseExpression]:
    if isinstance(target, cst.Name):
        if target.value == name:
            yield value
    elif isinstance(target, (cst.Tuple, cst.List)):
        for index, element in enumerate(target.elements):
            if isinstance(element.value, cst.Name) and element.value.value == name:
                found = _passthrough_element(value, index)
                if found is not None:
                    yield found


def _unpacked_self_values(method: cst.FunctionDef, attr: str) -> Iterator[cst.BaseExpression]:
    """``self.model, self.opt = accelerator.prepare(self.model, self.opt)``: element values."""
    for node in _walk(method.body):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, (cst.Tuple, cst.List)):
                    for index, element in enumerate(target.target.elements):
                        if self_attribute(element.value) == attr:
                            found = _passthrough_element(node.value, index)
                            if found is not None:
                                yield found


__all__ = ["CONV3D", "RECURRENT", "ModelClass", "ModelRun", "ModelStructure", "contains", "number", "self_attribute"]
