"""Library calls for the engine: torch's producers of probabilities and log-probabilities, the
operations that keep a tensor what it was, module calls (``nn.Sigmoid()(x)``, an
``nn.Sequential``'s last layer, a model's ``forward``), wrappers and ``.cuda()`` that return the
module they are given, ``accelerator.prepare``, ``functools.partial`` and the builtins that pass
items on (``list``, ``enumerate``, ``zip``, ``itertools.chain``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import libcst as cst

from trainlint.analysis.values.domain import (
    UNKNOWN,
    Facts,
    ClassRef,
    Collection,
    Constant,
    FunctionRef,
    Instance,
    Param,
    Parameters,
    Tensor,
    TensorKind,
    Value,
    Values,
    number,
)
from trainlint.analysis.values.torch_semantics import (
    ALTERNATIVE_CONSTRUCTORS,
    CAST_METHODS,
    CONTAINER_MODULES,
    DEFAULT_INIT_SCALE,
    FACTORY_FUNCTIONS,
    FACTORY_METHODS,
    FLOOR_FUNCTIONS,
    FLOOR_METHODS,
    GRAD_SCALERS,
    JOINING_FUNCTIONS,
    LIBRARY_LAYERS,
    MODEL_FACTORIES,
    PARAMETER_METHODS,
    PASSTHROUGH_METHODS,
    PRODUCER_FUNCTIONS,
    PRODUCER_MODULES,
    SELECTING_FUNCTIONS,
    SELECTING_METHODS,
    SELF_RETURNING,
    SHAPE_METHODS,
    WRAPPER_TAILS,
    WRAPPERS,
)

if TYPE_CHECKING:
    from trainlint.analysis.values.engine import ValueFlow

# Builtins whose result holds the items of their (first) argument.
_ITEM_KEEPING_BUILTINS = frozenset({"list", "tuple", "sorted", "reversed", "iter", "set"})
_EXPONENTIAL_OF = {"log_softmax": "softmax", "log_sigmoid": "sigmoid"}
_NEVER_POSITIONAL = 99  # an argument only ever passed by keyword
_ONES = frozenset({"torch.ones_like", "torch.ones"})
_GRAPH_KEEPING_REDUCTIONS = frozenset({"mean", "sum"})
_GRAPH_KEEPING_OPERATORS = (cst.Add, cst.Subtract, cst.Multiply, cst.Divide, cst.Power, cst.MatrixMultiply)


def argument(call: cst.Call, index: int, keyword: str | None = None) -> cst.Arg | None:
    """The argument at a position (before any keyword or star), or the one passed by keyword."""
    position = 0
    for arg in call.args:
        if arg.star:
            return None
        if arg.keyword is not None:
            if keyword is not None and arg.keyword.value == keyword:
                return arg
            continue
        if position == index:
            return arg
        position += 1
    return None


class TorchCallsMixin:
    # -- calls by qualified name -------------------------------------------------------------------
    def torch_call(self: ValueFlow, call: cst.Call, qualified: str, symbolic: bool) -> Values | None:
        """The value of a call of a library function known by its qualified name; None for
        anything else (a class, a project function: the callee's value decides)."""
        kind = PRODUCER_FUNCTIONS.get(qualified)
        if kind is not None:
            source = argument(call, 0, "input")
            if source is None or any(a.keyword is not None and a.keyword.value == "out" for a in call.args):
                return UNKNOWN
            # computed from tensors that carry no gradient, it carries none either
            detached = self.evaluate(source.value, symbolic).must(_carries_no_gradient)
            return Values.of(Tensor(kind, self.site(call), detached=detached))
        if qualified == "torch.exp":
            source = argument(call, 0, "input")
            return self._exponential(call, source.value, symbolic) if source is not None else UNKNOWN
        if qualified in SELECTING_FUNCTIONS:
            return self._first_tensor(call, symbolic, selected=True)
        if qualified in FLOOR_FUNCTIONS:
            tensors = [self.evaluate(a.value, symbolic) for a in call.args if a.keyword is None and not a.star]
            found = [t for values in tensors for t in values.of_type(Tensor)]
            if found:
                return Values.of(*(self.derived_tensor(t, floored=True) for t in found))
            index = 1 if qualified.endswith(("clamp", "clip", "clamp_min")) else None
            return self._bounded(call, index, symbolic)
        if qualified in JOINING_FUNCTIONS:
            source = argument(call, 0, "tensors")
            return self._joined(self.iterate(self.evaluate(source.value, symbolic))) if source is not None else UNKNOWN
        if qualified == "torch.where":
            return self._where(call, symbolic)
        if qualified == "torch.nn.parallel.data_parallel":  # data_parallel(module, input): module(input)
            module = argument(call, 0, "module")
            if module is None:
                return UNKNOWN
            return self.evaluate(module.value, symbolic).map(
                lambda m: self.instance_call(m, call, symbolic) if isinstance(m, Instance) else UNKNOWN
            )
        if qualified in WRAPPERS or qualified.rpartition(".")[2] in WRAPPER_TAILS:
            model = argument(call, 0, "module") or argument(call, 0, "model")
            return self.evaluate(model.value, symbolic) if model is not None else UNKNOWN
        if qualified in _ONES:
            return Values.of(Constant(1.0))  # a tensor of ones: as good as the number 1 here
        if qualified in FACTORY_FUNCTIONS:
            return _made(call)
        if qualified == "functools.partial":
            return self._partial(call, symbolic)
        if qualified == "itertools.chain":
            items = [self.iterate(self.evaluate(a.value, symbolic)) for a in call.args if not a.star]
            return Values.of(Collection("list", (Values.union(items),), homogeneous=True)) if items else UNKNOWN
        if qualified.rpartition(".")[2] in ALTERNATIVE_CONSTRUCTORS and isinstance(call.func, cst.Attribute):
            classes = self.evaluate(call.func.value, symbolic).of_type(ClassRef)  # `Model.from_pretrained(...)`
            built = [self._library_constructor(c, call.func.attr.value, call) for c in classes]
            instances = [b for b in built if b is not None]
            return Values.of(*instances) if instances and len(instances) == len(built) else None
        return None

    def library_function(self: ValueFlow, qualified: str, call: cst.Call, symbolic: bool) -> Values:
        """A library function with no known semantics: unknown, except model zoos' factories,
        whose result is a model (``torchvision.models.resnet18()``, ``timm.create_model``)."""
        if qualified.startswith(MODEL_FACTORIES) or any(qualified.startswith(lib + ".") for lib in LIBRARY_LAYERS):
            return Values.of(Instance(qualified, self.site(call)))
        return UNKNOWN

    def builtin_call(self: ValueFlow, call: cst.Call, name: str, symbolic: bool) -> Values | None:
        """``list(xs)``, ``enumerate(xs)``, ``zip(a, b)``, ``getattr(x, "a")``; None when the name
        is not a builtin here (bound in the module or the function)."""
        if name not in _ITEM_KEEPING_BUILTINS | {"enumerate", "zip", "filter", "getattr"} or self._shadows_builtin(call.func):
            return None
        positional = [a for a in call.args if a.keyword is None and not a.star]
        if name == "getattr":
            if len(positional) >= 2 and isinstance(positional[1].value, cst.SimpleString):
                attr = positional[1].value.evaluated_value
                if isinstance(attr, str):
                    return self.evaluate(positional[0].value, symbolic).map(lambda v: self.attribute_of(v, attr))
            return UNKNOWN
        if not positional:
            return UNKNOWN
        if name == "filter":
            positional = positional[1:]
            if not positional:
                return UNKNOWN
        items = [self.iterate(self.evaluate(a.value, symbolic)) for a in positional]
        if name == "enumerate":
            element = Collection("tuple", (UNKNOWN, items[0]))
        elif name == "zip":
            element = Collection("tuple", tuple(items))
        else:
            return Values.of(Collection("list", (items[0],), homogeneous=True))
        return Values.of(Collection("list", (Values.of(element),), homogeneous=True))

    def _shadows_builtin(self: ValueFlow, func: cst.Name) -> bool:
        scope = self.scopes.scope_of(func)
        return bool(self.scopes.reaching(func, scope).bindings) or bool(self.scopes.records(self.ctx.module).get(func.value))

    # -- method calls ---------------------------------------------------------------------------
    def method_call(self: ValueFlow, call: cst.Call, func: cst.Attribute, symbolic: bool) -> Values:
        name = func.attr.value
        receiver = self.evaluate(func.value, symbolic)
        parts = [self._method_on(value, name, call, symbolic) for value in receiver if not isinstance(value, Param)]
        parameters = receiver.of_type(Param)
        if parameters and name in SELF_RETURNING:
            parts.append(Values.of(*parameters))  # `module.to(device)` of a parameter is the parameter
        elif parameters and name in PARAMETER_METHODS:
            parts.append(_parameters_of(Values.of(*parameters), name))
        if receiver.unknown or not receiver.items or (parameters and len(parts) < len(receiver.items)):
            parts.append(self._method_on_unknown(name, call, func.value, symbolic))
        return Values.union(parts)

    def _method_on(self: ValueFlow, value: Value, name: str, call: cst.Call, symbolic: bool) -> Values:
        if isinstance(value, Instance) and value.cls in GRAD_SCALERS and name == "scale":
            return Values.of(Tensor("scaled", self.site(call)))  # the loss times the loss scale
        if isinstance(value, Instance):
            if name in SELF_RETURNING:
                return Values.of(value)
            if name in PARAMETER_METHODS:
                return _parameters_of(Values.of(value), name)
            if name in ("forward", "__call__"):
                return self.instance_call(value, call, symbolic)
            method = self.method_of(value.cls, name)
            if method is not None:
                from trainlint.analysis.values.calls import CallSite

                site = CallSite(self, call, True, Values.of(value))
                return self.returned_at(method[0].ctx, method[1], site, symbolic)
            if name in PASSTHROUGH_METHODS:
                return self._passthrough(call, symbolic)
            held = self.attribute_of(value, name)  # `self.model(x)`: a submodule called
            return held.map(lambda callee: self.apply(callee, call, symbolic))
        if isinstance(value, ClassRef):
            built = self._library_constructor(value, name, call)
            return Values.of(built) if built is not None else UNKNOWN
        if isinstance(value, Tensor):
            return self._tensor_method(value, name, call, symbolic)
        if isinstance(value, Facts):
            return self._facts_method(value, name, call, symbolic)
        if isinstance(value, Collection) and value.kind == "dict":
            if name == "values":
                return Values.of(Collection("list", (value.every_item(),), homogeneous=True))
            if name == "items":
                return Values.of(Collection("list", (Values.of(Collection("tuple", (UNKNOWN, value.every_item()))),), homogeneous=True))
        return UNKNOWN

    def _library_constructor(self: ValueFlow, value: ClassRef, name: str, call: cst.Call) -> Instance | None:
        """``Model.from_pretrained(...)`` of a project class that inherits it from a library base
        (a subclass of a Hugging Face model): an instance of the class, built at the call."""
        if value.site is None or name not in ALTERNATIVE_CONSTRUCTORS or self.method_of(value.qualified, name) is not None:
            return None
        return Instance(value.qualified, self.site(call))

    def _method_on_unknown(self: ValueFlow, name: str, call: cst.Call, receiver: cst.BaseExpression, symbolic: bool) -> Values:
        """A method of something unknown: tensor methods that produce probabilities or logs
        (not on modules or ``self``: ``self.softmax(x)`` is a submodule), ``prepare``."""
        if name in PASSTHROUGH_METHODS:
            return self._passthrough(call, symbolic)
        if name in PARAMETER_METHODS:
            return _parameters_of(UNKNOWN, name)
        if name in FLOOR_METHODS and name != "maximum":
            return self._bounded(call, 0, symbolic)
        if name in ("detach", "detach_"):
            return Values.of(Facts(detached=True))
        if name in FACTORY_METHODS:
            return _made(call)
        if name == "scale" and len(call.args) == 1 and not call.args[0].keyword and not call.args[0].star:
            # `scaler.scale(loss)` of a scaler known only by its use: the training-step analysis
            # decides from the receiver whether it is one
            return Values.of(Tensor("scaled", self.site(call)))
        if self._is_module_or_self(receiver):
            return UNKNOWN
        produced = _method_producer(call, name)
        return Values.of(Tensor(produced, self.site(call), style="method")) if produced else UNKNOWN

    def _bounded(self: ValueFlow, call: cst.Call, index: int | None, symbolic: bool) -> Values:
        """A floor call of an unknown tensor: ``x.clamp(min=c)`` (``index`` of ``min`` among the
        positional arguments), ``torch.maximum(x, c)`` (index None: any constant argument)."""
        if index is None:
            candidates = [a for a in call.args if a.keyword is None and not a.star]
        else:
            found = argument(call, index, "min")
            candidates = [found] if found is not None else []
        floors = []
        for arg in candidates:
            values = self.evaluate(arg.value, symbolic)
            numbers = {number(v) for v in values}
            if not values.unknown and len(numbers) == 1 and None not in numbers:
                floors.append(numbers.pop())
        positive = [f for f in floors if f is not None and f > 0]
        return Values.of(Facts(floor=max(positive))) if positive else UNKNOWN

    def _facts_method(self: ValueFlow, facts: Facts, name: str, call: cst.Call, symbolic: bool) -> Values:
        """A method of a tensor of unknown origin with known facts: views and selections keep them
        (values above a floor stay above it), ``detach`` adds one, a floor raises the floor; any
        other computation on a detached tensor is detached too, and nothing else is known."""
        if name in SHAPE_METHODS or name in CAST_METHODS or name in SELECTING_METHODS or name == "clone":
            return Values.of(facts)
        if name in ("detach", "detach_"):
            return Values.of(replace(facts, detached=True, attached=False))
        if facts.attached and name in _GRAPH_KEEPING_REDUCTIONS:
            return Values.of(facts)  # `loss.mean()` is still attached to the graph
        if name in FLOOR_METHODS and name != "maximum":
            raised = [f.floor for f in self._bounded(call, 0, symbolic).of_type(Facts) if f.floor is not None]
            floors = [f for f in (facts.floor, *raised) if f is not None]
            return Values.of(Facts(max(floors) if floors else None, facts.detached))
        return Values.of(Facts(detached=True)) if facts.detached else UNKNOWN

    def _tensor_method(self: ValueFlow, tensor: Tensor, name: str, call: cst.Call, symbolic: bool) -> Values:
        if name in SHAPE_METHODS or name in CAST_METHODS or name == "clone":
            return Values.of(tensor)
        if name in SELECTING_METHODS:
            return Values.of(self.derived_tensor(tensor, selected=True))
        if name in ("detach", "detach_"):
            return Values.of(self.derived_tensor(tensor, detached=True))
        if name in FLOOR_METHODS:
            return Values.of(self.derived_tensor(tensor, floored=True))
        if name == "exp" and not call.args and tensor.kind in _EXPONENTIAL_OF:
            return Values.of(Tensor(_EXPONENTIAL_OF[tensor.kind], self.site(call)))  # type: ignore[arg-type]
        produced = _method_producer(call, name)
        return Values.of(Tensor(produced, self.site(call), style="method")) if produced else UNKNOWN

    def _is_module_or_self(self: ValueFlow, receiver: cst.BaseExpression) -> bool:
        """``torch``/``np`` and other imported names, and bare ``self``: their ``.softmax(...)``
        is a function or a submodule, not a tensor method."""
        if isinstance(receiver, cst.Name) and receiver.value in {"self", "cls"}:
            return True
        return self.ctx.qualified_name(receiver) is not None

    # -- module calls ----------------------------------------------------------------------------
    def instance_call(self: ValueFlow, instance: Instance, call: cst.Call, symbolic: bool) -> Values:
        """``model(x)``: the ``forward`` of a project model; the output of a torch activation
        module (``nn.Sigmoid()``) at its construction; an ``nn.Sequential``'s last layer."""
        kind = PRODUCER_MODULES.get(instance.cls)
        if kind is not None:
            return Values.of(Tensor(kind, self.site(call), style="module", module=instance.site))
        if instance.cls in CONTAINER_MODULES:
            output = self.last_layer(instance).map(lambda layer: self._layer_output(layer, call, symbolic))
            for step in reversed(instance.evidence):
                output = output.with_evidence(step)
            return output
        forward = self.method_of(instance.cls, "forward")
        if forward is None:
            return UNKNOWN
        from trainlint.analysis.values.calls import CallSite

        output = self.returned_at(forward[0].ctx, forward[1], CallSite(self, call, True, Values.of(instance)), symbolic)
        for step in reversed(instance.evidence):  # how the model got here tells where its output comes from
            output = output.with_evidence(step)
        return output

    def _layer_output(self: ValueFlow, layer: Value, call: cst.Call, symbolic: bool) -> Values:
        if not isinstance(layer, Instance):
            return UNKNOWN
        return self.instance_call(layer, call, symbolic).map(
            lambda v: Values.of(replace(v, style="layer")) if isinstance(v, Tensor) and v.style == "module" else Values.of(v)
        )

    def last_layer(self: ValueFlow, sequential: Instance) -> Values:
        """The last layer an ``nn.Sequential`` was built with (in its construction's module)."""
        call = sequential.call
        if call is None or not call.args or call.args[-1].keyword is not None:
            return UNKNOWN
        last = call.args[-1]
        flow = self.flow_of(sequential)
        values = flow.evaluate(last.value, False)
        return flow.iterate(values) if last.star == "*" else values

    def construction_argument(self: ValueFlow, instance: Instance, index: int, keyword: str) -> Values | None:
        """The value passed at position ``index`` or as ``keyword`` to an instance's construction
        (read in the construction's module); None when not passed; unknown behind ``*args``."""
        call = instance.call
        if call is None:
            return UNKNOWN
        found = argument(call, index, keyword)
        if found is None:
            return UNKNOWN if any(a.star for a in call.args) else None
        return self.flow_of(instance).evaluate(found.value, False)

    def scaler_enabled(self: ValueFlow, scaler: Instance) -> bool | None:
        """A GradScaler's ``enabled``: True (absent or True), False, or None (decided at run time)."""
        enabled = self.construction_argument(scaler, _NEVER_POSITIONAL, "enabled")
        if enabled is None:
            return True
        flags = {v.value for v in enabled.of_type(Constant)}
        if enabled.unknown or len(flags) != 1 or len(enabled) != 1:
            return None
        flag = flags.pop()
        return flag if isinstance(flag, bool) else None

    def scaler_init_scale(self: ValueFlow, scaler: Instance) -> float | None:
        """The loss scale a GradScaler starts with (65536 by default); None when unknown."""
        index = 1 if scaler.cls.startswith("torch.amp.") else 0  # torch.amp.GradScaler(device, init_scale)
        scale = self.construction_argument(scaler, index, "init_scale")
        if scale is None:
            return DEFAULT_INIT_SCALE
        numbers = {number(v) for v in scale}
        return numbers.pop() if len(numbers) == 1 and not scale.unknown and None not in numbers else None

    def flow_of(self: ValueFlow, value: Instance | Tensor) -> ValueFlow:
        from trainlint.analysis.values.engine import ValueFlow

        site = value.site
        return site.ctx.get(ValueFlow) if site is not None and site.ctx is not self.ctx else self

    # -- tensors ---------------------------------------------------------------------------------
    def tensor_arithmetic(self: ValueFlow, operator: cst.BaseBinaryOp, left: Values, right: Values) -> Values | None:
        """``p + eps`` (an offset), ``1 - p`` (the complement), a floored value plus a positive
        constant; None when no tensor is involved. Any other arithmetic on a tracked tensor makes
        it unknown."""
        facts = left.of_type(Facts) + right.of_type(Facts)
        if facts:
            return _facts_arithmetic(operator, left, right)
        tensors = left.of_type(Tensor) + right.of_type(Tensor)
        if not tensors:
            return None
        if isinstance(operator, cst.Add):
            for tensor_side, constant_side in ((left, right), (right, left)):
                amounts = [number(v) for v in constant_side] if constant_side.must(lambda v: number(v) is not None) else []
                if amounts and all(a is not None and a > 0 for a in amounts) and tensor_side.must(lambda v: isinstance(v, Tensor)):
                    return Values.union(
                        Values.of(self.derived_tensor(t, offsets=(*t.offsets, min(amounts))))  # type: ignore[arg-type]
                        for t in tensor_side.of_type(Tensor)
                    )
        if isinstance(operator, cst.Subtract) and left.must(lambda v: number(v) == 1.0) and right.must(lambda v: isinstance(v, Tensor)):
            return Values.union(Values.of(self.derived_tensor(t, complement=not t.complement)) for t in right.of_type(Tensor))
        if not (left.unknown or right.unknown) and all(_carries_no_gradient(v) for v in (*left, *right)):
            return Values.of(Facts(detached=True))  # `(softmax(a.detach()) + q) / 2`: no gradient either
        return UNKNOWN

    def derived_tensor(self: ValueFlow, tensor: Tensor, **changes: Any) -> Tensor:
        return replace(tensor, **changes)

    def _exponential(self: ValueFlow, call: cst.Call, source: cst.BaseExpression, symbolic: bool) -> Values:
        """``exp(log_softmax(x))`` is a softmax."""
        values = self.evaluate(source, symbolic)
        if values.must(lambda v: isinstance(v, Tensor) and v.kind in _EXPONENTIAL_OF):
            kinds = {_EXPONENTIAL_OF[t.kind] for t in values.of_type(Tensor)}
            return Values.of(*(Tensor(kind, self.site(call)) for kind in sorted(kinds)))  # type: ignore[arg-type]
        return UNKNOWN

    def _first_tensor(self: ValueFlow, call: cst.Call, symbolic: bool, **changes: Any) -> Values:
        source = argument(call, 0, "input")
        if source is None:
            return UNKNOWN
        return self.evaluate(source.value, symbolic).map(
            lambda v: Values.of(self.derived_tensor(v, **changes)) if isinstance(v, Tensor) else UNKNOWN
        )

    def _joined(self: ValueFlow, items: Values) -> Values:
        """``torch.cat``/``stack`` of tensors of one kind is a tensor of that kind; of tensors
        that carry no gradient, one that carries none."""
        if items.must(lambda v: isinstance(v, Facts) and v.detached):
            return Values.of(Facts(detached=True))
        tensors = items.of_type(Tensor)
        if not tensors or not items.must(lambda v: isinstance(v, Tensor)) or len({t.kind for t in tensors}) != 1:
            return UNKNOWN
        return Values.of(*tensors)

    def _where(self: ValueFlow, call: cst.Call, symbolic: bool) -> Values:
        """``torch.where(c, p, 1.0)``: each branch, the tensors marked as masked."""
        positional = [a for a in call.args if a.keyword is None and not a.star]
        if len(positional) != 3 or len(call.args) != 3:
            return UNKNOWN
        branches = Values.union(self.evaluate(a.value, symbolic) for a in positional[1:])
        return branches.map(lambda v: Values.of(self.derived_tensor(v, masked=True) if isinstance(v, Tensor) else v))

    # -- wrappers and helpers --------------------------------------------------------------------
    def _passthrough(self: ValueFlow, call: cst.Call, symbolic: bool) -> Values:
        """``accelerator.prepare(model, opt)``: its arguments, in order (one argument: itself)."""
        if any(a.star or a.keyword is not None for a in call.args):
            return UNKNOWN
        items = tuple(self.evaluate(a.value, symbolic) for a in call.args)
        if len(items) == 1:
            return items[0]
        return Values.of(Collection("tuple", items))

    def _partial(self: ValueFlow, call: cst.Call, symbolic: bool) -> Values:
        if not call.args or call.args[0].keyword is not None or call.args[0].star:
            return UNKNOWN
        if any(a.star for a in call.args[1:]):
            return UNKNOWN
        bound = tuple(self.evaluate(a.value, symbolic) for a in call.args[1:] if a.keyword is None)
        keywords = tuple(
            (a.keyword.value, self.evaluate(a.value, symbolic)) for a in call.args[1:] if a.keyword is not None
        )

        def bind(value: Value) -> Values:
            if isinstance(value, (FunctionRef, ClassRef)):
                return Values.of(replace(value, bound=(*value.bound, *bound), bound_keywords=(*value.bound_keywords, *keywords)))
            return UNKNOWN

        return self.evaluate(call.args[0].value, symbolic).map(bind)


def _facts_arithmetic(operator: cst.BaseBinaryOp, left: Values, right: Values) -> Values:
    """Arithmetic on tensors with known facts: a floored tensor plus a non-negative constant keeps
    a floor; a result computed only from detached tensors and constants is detached."""
    sides = (left, right)
    if isinstance(operator, _GRAPH_KEEPING_OPERATORS):
        attached = [f for side in sides for f in side.of_type(Facts) if f.attached and not f.detached]
        if attached:  # the result of arithmetic on a tensor with a graph has a graph
            return Values.of(attached[0])
    if any(side.unknown for side in sides):
        return UNKNOWN
    operands = [v for side in sides for v in side]
    if isinstance(operator, cst.Add):
        for floored, other in ((left, right), (right, left)):
            if floored.must(lambda v: isinstance(v, Facts) and v.floor is not None) and other.must(
                lambda v: (number(v) if number(v) is not None else -1.0) >= 0
            ):
                least = min(number(v) or 0.0 for v in other)
                return Values.of(*(Facts(f.floor + least, f.detached) for f in floored.of_type(Facts)))  # type: ignore[operator]
    if all((isinstance(v, Facts) and v.detached) or number(v) is not None for v in operands):
        return Values.of(Facts(detached=True))
    return UNKNOWN


def _carries_no_gradient(value: Value) -> bool:
    return (isinstance(value, (Facts, Tensor)) and value.detached) or number(value) is not None


def _made(call: cst.Call) -> Values:
    """A new tensor from a factory: no gradient flows back through it, unless it asks for one."""
    if any(a.star == "**" or (a.keyword is not None and a.keyword.value == "requires_grad") for a in call.args):
        return UNKNOWN
    return Values.of(Facts(detached=True))


def _parameters_of(owners: Values, method: str) -> Values:
    """``m.parameters()``: the parameters of ``m``; ``m.named_parameters()``: (name, parameter)
    pairs."""
    parameters = Values.of(Parameters(owners))
    if method == "named_parameters":
        pair = Collection("tuple", (UNKNOWN, parameters))
        return Values.of(Collection("list", (Values.of(pair),), homogeneous=True))
    return parameters


def _method_producer(call: cst.Call, name: str) -> TensorKind | None:
    """``x.softmax(-1)``, ``x.sigmoid()``, ``x.log_softmax(dim=1)``, ``x.log()``."""
    if name in ("sigmoid", "log") and not call.args:
        return name  # type: ignore[return-value]
    if name in ("softmax", "log_softmax") and call.args and _looks_like_dim(call):
        return name  # type: ignore[return-value]
    return None


def _looks_like_dim(call: cst.Call) -> bool:
    """``x.softmax(-1)``, ``x.softmax(dim=1)``: the first argument is a dim, not a tensor."""
    first = call.args[0]
    if first.keyword is not None:
        return first.keyword.value == "dim"
    return first.star == "" and not isinstance(first.value, (cst.Call, cst.BinaryOperation, cst.Subscript))


__all__ = ["TorchCallsMixin", "argument"]
