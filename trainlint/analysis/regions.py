"""Where code runs in float16, and where it computes no gradient.

Two questions the numerical rules ask before they report:

- "May this code run in float16?" A float16 ``autocast`` region (``torch.autocast("cuda")``,
  ``dtype=torch.float16``, ``torch.cuda.amp.autocast()``; not ``enabled=False``, not bfloat16, not
  CPU) reaches code lexically inside it, in a function it calls (followed through the engine's call
  sites), and in the ``forward`` and methods of a model it runs, wherever in the project that
  region is; a model converted with ``.half()`` runs in float16 everywhere. Code no such region or
  conversion reaches runs in float32, however often the file mentions float16.
- "Does this code compute a gradient?" Not inside ``with torch.no_grad():``,
  ``torch.inference_mode()``, a function decorated with either, or a function every caller of
  which computes none.

API (``regions = ctx.get(Regions)``): ``autocast(call)`` (the float16 autocast a call is, if any),
``float16_regions`` (this file's), ``may_run_in_float16(node)``, ``computes_no_gradient(node)``,
``may_compute_no_gradient(node)`` (also where ``set_grad_enabled`` decides at run time),
``is_bfloat16_autocast(call)`` (an autocast that is bfloat16 whenever on),
``framework_runs_float16`` (a Lightning/Fabric/Accelerate set-up in float16 mixed precision, which
scales the loss itself), ``runs_only_in_eval(node)`` (an ``if not self.training:`` branch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import libcst as cst

from trainlint.analysis.values import ClassRef, Constant, Instance, ValueFlow, Values
from trainlint.analysis.values.calls import CallSite, TooManyCallers
from trainlint.analysis.values.torch_calls import argument
from trainlint.context import descendants, literal_bool

if TYPE_CHECKING:
    from trainlint.context import FileContext


@dataclass(frozen=True)
class _Signature:
    device: str | None  # the device whose default dtype applies; None: the first argument names it
    enabled_index: int
    dtype_index: int


# autocast(device_type, dtype=None, enabled=True, ...) and cuda/cpu.amp.autocast(enabled=True, dtype=...)
_DEVICE_FIRST = _Signature(None, 2, 1)
_AUTOCASTS: dict[str, _Signature] = {
    "torch.autocast": _DEVICE_FIRST,
    "torch.amp.autocast": _DEVICE_FIRST,
    "torch.amp.autocast_mode.autocast": _DEVICE_FIRST,
    "torch.cuda.amp.autocast": _Signature("cuda", 0, 1),
    "torch.cuda.amp.autocast_mode.autocast": _Signature("cuda", 0, 1),
    "torch.cpu.amp.autocast": _Signature("cpu", 0, 1),
}
_FLOAT16 = frozenset({"torch.float16", "torch.half"})
_BFLOAT16 = frozenset({"torch.bfloat16"})
# Devices whose autocast default is float16, and those whose default is bfloat16.
_FLOAT16_BY_DEFAULT = frozenset({"cuda"})
_BFLOAT16_BY_DEFAULT = frozenset({"cpu", "xpu", "hpu"})
_NO_GRADIENT = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad",
                          "torch.autograd.grad_mode.no_grad", "torch.autograd.grad_mode.inference_mode"})
_SET_GRAD_ENABLED = frozenset({"torch.set_grad_enabled", "torch.autograd.set_grad_enabled",
                               "torch.autograd.grad_mode.set_grad_enabled"})
_CALLER_DEPTH = 3
_FRAMEWORK_RUNNERS = frozenset({"Trainer", "Fabric", "Accelerator"})
_FLOAT16_WORDS = ("autocast", ".half()", "16")  # a module that runs a model in float16 spells one
_FLOAT16_SETTINGS = frozenset({"16", "16-mixed", "16-true", "fp16", "float16", "half"})


def _named_for_no_gradient(expr: cst.BaseExpression) -> bool:
    """A project's own wrapper of ``no_grad``/``inference_mode``, by its name: YOLOv5's
    ``@smart_inference_mode()``, ``@torch_no_grad``, ``with maybe_no_grad(...):``."""
    target = expr.func if isinstance(expr, cst.Call) else expr
    name = target.attr.value if isinstance(target, cst.Attribute) else target.value if isinstance(target, cst.Name) else ""
    return any(word in name.lower() for word in ("no_grad", "nograd", "inference_mode", "inference"))


def _calls_under(node: cst.CSTNode) -> Iterator[cst.Call]:
    """The calls under a node, nested definitions (other scopes) left out."""
    from trainlint.context import scope_nodes

    return (n for n in scope_nodes(node) if isinstance(n, cst.Call))


def _dtype_kind(qualified: str | None) -> str:
    if qualified in _FLOAT16:
        return "float16"
    return "bfloat16" if qualified in _BFLOAT16 else "other"


def _asserted_eval_before(block: cst.BaseSuite, child: cst.CSTNode) -> bool:
    """A statement of the block before ``child`` is ``assert not self.training``: the rest of
    the block runs in evaluation mode only (taming-transformers' loss catches the error of a
    gradient it cannot take without a graph, and asserts that it is evaluating)."""
    body = getattr(block, "body", ())
    if not isinstance(body, (list, tuple)):
        return False
    for statement in body:
        if statement is child:
            return False
        lines = statement.body if isinstance(statement, cst.SimpleStatementLine) else ()
        if any(isinstance(small, cst.Assert) and _tests_training(small.test) is False for small in lines):
            return True
    return False


def _tests_training(test: cst.BaseExpression) -> bool | None:
    """True for a test that holds in training mode (``self.training``, ``model.training is True``),
    False for one that holds in evaluation mode (``not self.training``), None for anything else."""
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        inner = _tests_training(test.expression)
        return None if inner is None else not inner
    if isinstance(test, cst.Attribute) and test.attr.value == "training":
        return True
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        comparison = test.comparisons[0]
        side = _tests_training(test.left)
        flag = literal_bool(comparison.comparator)
        if side is None or flag is None:
            return None
        positive = isinstance(comparison.operator, (cst.Is, cst.Equal))
        negative = isinstance(comparison.operator, (cst.IsNot, cst.NotEqual))
        if not (positive or negative):
            return None
        return flag == positive
    return None


Certainty = Literal["always", "maybe"]


@dataclass(frozen=True)
class Autocast:
    """A float16 autocast (when it is enabled: ``enabled=cfg.amp`` counts). ``dtype`` is its
    dtype argument as written (None when absent); ``certainty`` is "always" when every dtype that
    may reach it is float16, "maybe" when only some is (``dtype=cfg.amp_dtype``)."""

    call: cst.Call
    dtype: cst.BaseExpression | None
    certainty: Certainty


class Regions:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self._float16_functions: dict[cst.CSTNode, bool] = {}
        self._gradient_free: dict[cst.CSTNode, bool] = {}

    # -- float16 autocast -------------------------------------------------------------------------
    def autocast(self, call: cst.Call) -> Autocast | None:
        """The call as a float16 autocast; None when it is no autocast, or one that never runs in
        float16 (bfloat16, CPU, ``enabled=False``), or one whose ``**kwargs`` may set anything."""
        found = self._autocast_dtypes(call)
        if found is None or "float16" not in found[1]:
            return None
        dtype, kinds = found
        return Autocast(call, dtype, "always" if kinds == {"float16"} else "maybe")

    def is_bfloat16_autocast(self, call: cst.Call) -> bool:
        """The call is an autocast that runs in bfloat16 whenever it is on: ``dtype=torch.bfloat16``
        (every value that may reach it), or no dtype on a device whose default is bfloat16 (CPU)."""
        found = self._autocast_dtypes(call)
        return found is not None and found[1] == {"bfloat16"}

    def _autocast_dtypes(self, call: cst.Call) -> tuple[cst.BaseExpression | None, set[str]] | None:
        """For an autocast that may be on: its dtype argument as written and the kinds of dtype it
        may run ("float16", "bfloat16", "other"); None for no autocast, ``enabled=False``, ``**kwargs``."""
        signature = _AUTOCASTS.get(self.ctx.qualified_name(call.func) or "")
        if signature is None or any(arg.star for arg in call.args):
            return None
        enabled = argument(call, signature.enabled_index, "enabled")
        if enabled is not None and self.flow.values(enabled.value).must(
            lambda v: isinstance(v, Constant) and v.value is False
        ):
            return None  # `enabled=cfg.amp` may be on: what it runs then is what matters
        dtype = argument(call, signature.dtype_index, "dtype")
        if dtype is not None:
            return dtype.value, self._dtypes(self.flow.values(dtype.value))
        device = signature.device or self._device(call)
        if device in _FLOAT16_BY_DEFAULT:
            return None, {"float16"}
        return None, ({"bfloat16"} if device in _BFLOAT16_BY_DEFAULT else {"other"})

    def _device(self, call: cst.Call) -> str | None:
        """The device the autocast is for, when every value that may reach it is that one
        (``device.type if device.type != "mps" else "cpu"`` may be "cuda": not known)."""
        found = argument(call, 0, "device_type")
        values = self.flow.values(found.value) if found is not None else None
        constants = values.constants() if values is not None and not values.unknown else []
        return constants[0] if len(constants) == 1 and isinstance(constants[0], str) else None  # type: ignore[return-value]

    @staticmethod
    def _dtypes(values: Values) -> set[str]:
        """"float16", "bfloat16" and "other" for the dtypes a value may be (an unknown one may be
        any)."""
        kinds = {_dtype_kind(getattr(v, "qualified", None)) for v in values}
        return kinds | ({"float16", "bfloat16", "other"} if values.unknown else set())

    @cached_property
    def float16_regions(self) -> list[tuple[Autocast, cst.CSTNode]]:
        """This file's float16 autocast regions: ``with`` bodies and decorated functions' bodies."""
        found: list[tuple[Autocast, cst.CSTNode]] = []
        for statement in self.ctx.nodes.of(cst.With):
            for item in statement.items:
                if isinstance(item.item, cst.Call) and (autocast := self.autocast(item.item)) is not None:
                    found.append((autocast, statement.body))
        for function in self.ctx.nodes.of(cst.FunctionDef):
            for decorator in function.decorators:
                if isinstance(decorator.decorator, cst.Call) and (autocast := self.autocast(decorator.decorator)):
                    found.append((autocast, function.body))
        return found

    def region_around(self, node: cst.CSTNode) -> Autocast | None:
        """The float16 autocast region of this file the node lies in, if any."""
        ancestors = set(map(id, self.ctx.ancestors(node)))
        for autocast, body in self.float16_regions:
            if id(body) in ancestors:
                return autocast
        return None

    def may_run_in_float16(self, node: cst.CSTNode) -> bool:
        """Whether float16 reaches the node: a region around it, a region around a call of its
        function, a region that runs a model whose method it is, or a ``.half()`` model."""
        if self.region_around(node) is not None or self._converts_to_half(node):
            return True
        function = self.flow.scopes.function_of(node)
        return function is not None and self._function_in_float16(function, _CALLER_DEPTH)

    def _function_in_float16(self, function: cst.FunctionDef, depth: int) -> bool:
        found = self._float16_functions.get(function)
        if found is None:
            self._float16_functions[function] = False  # recursion: not through itself
            found = self._float16_functions[function] = self._reached_by_float16(function, depth)
        return found

    def _reached_by_float16(self, function: cst.FunctionDef, depth: int) -> bool:
        owner = self.flow.enclosing_class(function)
        if owner is not None and self._class_runs_in_float16(self.flow.qualified_of(owner)):
            return True
        if depth <= 0:
            return False
        if owner is not None:  # a method: its own class's calls of it (the model's case is above)
            sites = [site for site in self._same_module_method_calls(function)]
        else:
            sites, _ = self.flow.call_sites(function)
        for site in sites:
            caller = site.flow.ctx.get(Regions)
            if caller.region_around(site.call) is not None:
                return True
            outer = caller.flow.scopes.function_of(site.call)
            if (outer or caller.ctx.module) in caller._half_functions:
                return True  # its arguments were computed in half precision
            if outer is not None and outer is not function and caller._function_in_float16(outer, depth - 1):
                return True
        return False

    def _same_module_method_calls(self, method: cst.FunctionDef) -> Iterator[CallSite]:
        """``self.<method>(...)`` calls in this module: a helper method a step calls inside its
        float16 region runs in float16 too."""
        name = method.name.value
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == name and isinstance(func.value, cst.Name) and func.value.value == "self":
                yield CallSite(self.flow, call, True)

    def _class_runs_in_float16(self, qualified: str) -> bool:
        """Some module of the project runs a model of this class (or one holding it) in a float16
        region, or converts one to half: this file, and the modules that import it and mention
        ``autocast`` or ``half``."""
        project = self.ctx.project
        name = qualified.rpartition(".")[2]
        candidates = [self]
        try:
            for flow in self.flow.modules_using(name, qualified, include_self=False, mentioning=_FLOAT16_WORDS):
                candidates.append(flow.ctx.get(Regions))
        except TooManyCallers:
            pass  # what the modules past the bound do is not known: they make no float16 claim
        for regions in candidates:
            for model in regions.models_run_in_float16():
                if model == qualified or qualified in project.built_by_class(model, regions.ctx.real_path):
                    return True
        return False

    def _converts_to_half(self, node: cst.CSTNode) -> bool:
        """``x.half()`` / ``dtype=torch.float16`` in the node's own function: it computes in float16."""
        function = self.flow.scopes.function_of(node) or self.ctx.module
        return function in self._half_functions

    @cached_property
    def _half_functions(self) -> frozenset[cst.CSTNode]:
        found: set[cst.CSTNode] = set()
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            half = isinstance(func, cst.Attribute) and func.attr.value == "half" and not call.args
            if half or any(
                arg.keyword is not None and arg.keyword.value == "dtype" and self.ctx.qualified_name(arg.value) in _FLOAT16
                for arg in call.args
            ):
                found.add(self.flow.scopes.function_of(call) or self.ctx.module)
        return frozenset(found)

    def models_run_in_float16(self) -> Iterator[str]:
        """Classes of the project whose instances this file calls in a float16 region (models,
        and loss modules too: their ``forward`` runs there), or converts with ``.half()``."""
        from trainlint.analysis.model_structure import ModelStructure

        for _, body in self.float16_regions:
            for node in _calls_under(body):
                func = node.func.value if isinstance(node.func, cst.Attribute) and node.func.attr.value == "forward" else node.func
                if self.ctx.qualified_name(func) is None:
                    yield from (v.cls for v in self.flow.values(func).of_type(Instance))
        structure = self.ctx.get(ModelStructure)
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "half" and not call.args:
                yield from (instance.cls for instance in structure.models(func.value).of_type(Instance))
        if self._framework_runs_float16():
            for call in self.ctx.nodes.of(cst.Call):  # the modules this file builds for it to run
                yield from (v.qualified for v in self.flow.values(call.func).of_type(ClassRef) if v.site is not None)

    @cached_property
    def framework_runs_float16(self) -> bool:
        """This file sets up a framework to train in float16 mixed precision (Lightning's
        ``Trainer(precision="16-mixed")``, ``Fabric(precision=16)``, ``Accelerator(mixed_precision="fp16")``),
        which scales the loss with a GradScaler of its own."""
        return self._framework_runs_float16()

    def _framework_runs_float16(self) -> bool:
        """``Trainer(precision="16-mixed")``, ``Fabric(precision=16)``,
        ``Accelerator(mixed_precision="fp16")``: the framework runs the steps under float16."""
        for call in self.ctx.nodes.of(cst.Call):
            name = (self.ctx.qualified_name(call.func) or "").rpartition(".")[2]
            if name not in _FRAMEWORK_RUNNERS:
                continue
            for arg in call.args:
                if arg.keyword is not None and arg.keyword.value in ("precision", "mixed_precision"):
                    if any(str(c) in _FLOAT16_SETTINGS for c in self.flow.values(arg.value).constants()):
                        return True
        return False

    # -- gradients ---------------------------------------------------------------------------------
    def computes_no_gradient(self, node: cst.CSTNode, depth: int = _CALLER_DEPTH) -> bool:
        """Inside ``no_grad``/``inference_mode`` (a ``with``, or a decorated function), or in a
        function every visible caller of which computes no gradient."""
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, cst.With) and any(self._is_no_gradient(item.item) for item in ancestor.items):
                return True
            if isinstance(ancestor, cst.FunctionDef) and any(self._is_no_gradient(d.decorator) for d in ancestor.decorators):
                return True
        function = self.flow.scopes.function_of(node)
        if function is None or depth <= 0:
            return False
        found = self._gradient_free.get(function)
        if found is None:
            self._gradient_free[function] = False  # recursion: not through itself
            found = self._gradient_free[function] = self._every_caller_gradient_free(function, depth)
        return found

    def runs_only_in_eval(self, node: cst.CSTNode) -> bool:
        """Inside a branch a module takes only in evaluation mode: the body of ``if not
        self.training:`` (or ``if self.training is False``), the ``else`` of ``if self.training:``,
        the same sides of ``a if self.training else b``; or after an ``assert not self.training``
        earlier in a block around it (in training the assertion raises before)."""
        child: cst.CSTNode = node
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
                return False
            if isinstance(ancestor, (cst.If, cst.IfExp)):
                training = _tests_training(ancestor.test)
                body = ancestor.body
                other = ancestor.orelse
                if training is True and child is other:
                    return True
                if training is False and child is body:
                    return True
            if isinstance(ancestor, cst.BaseSuite) and _asserted_eval_before(ancestor, child):
                return True
            child = ancestor
        return False

    def _is_no_gradient(self, expr: cst.BaseExpression) -> bool:
        target = expr.func if isinstance(expr, cst.Call) else expr
        if self.ctx.qualified_name(target) in _SET_GRAD_ENABLED:  # `set_grad_enabled(False)`
            return isinstance(expr, cst.Call) and self._grad_switch(expr) is False
        return self.ctx.qualified_name(target) in _NO_GRADIENT

    def _grad_switch(self, call: cst.Call) -> bool | None:
        """``torch.set_grad_enabled(mode)``'s mode: True, False, or None when it may be either
        (``set_grad_enabled(phase == "train")``)."""
        mode = argument(call, 0, "mode")
        if mode is None:
            return None
        values = self.flow.values(mode.value)
        flags = {v.value for v in values.of_type(Constant)}
        if values.unknown or len(flags) != 1 or len(values) != 1:
            return None
        flag = flags.pop()
        return flag if isinstance(flag, bool) else None

    def may_compute_no_gradient(self, node: cst.CSTNode) -> bool:
        """``computes_no_gradient``, or gradients switched by a value the code decides at run time
        (``with torch.set_grad_enabled(phase == "train"):``), or switched off by a call statement
        earlier in the node's function (``torch.set_grad_enabled(False)``): unsure means yes."""
        if self.computes_no_gradient(node):
            return True
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, cst.With) and any(
                self._switches_gradients(item.item) or _named_for_no_gradient(item.item) for item in ancestor.items
            ):
                return True
            if isinstance(ancestor, cst.FunctionDef) and any(_named_for_no_gradient(d.decorator) for d in ancestor.decorators):
                return True
        if isinstance(node, cst.Call) and self._runs_a_model_that_switches_gradients(node):
            return True
        function = self.flow.scopes.scope_of(node)
        start = self.ctx.order(node)[0]
        return any(
            self.flow.scopes.scope_of(call) is function and self.ctx.order(call)[0] < start for call in self._gradient_switches_off
        )

    def _runs_a_model_that_switches_gradients(self, call: cst.Call) -> bool:
        """A call of a model of a project class whose ``forward`` turns gradients off itself on
        some path (``if mode == "inference": with torch.no_grad(): ...``): which path this call
        takes is the class's business."""
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value == "forward":
            func = func.value
        if not isinstance(func, (cst.Name, cst.Attribute)):
            return False
        for instance in self.flow.values(func).of_type(Instance):
            found = self.flow.method_of(instance.cls, "forward")
            if found is not None and found[0].ctx.get(Regions).switches_gradients_off_within(found[1]):
                return True
        return False

    def switches_gradients_off_within(self, function: cst.FunctionDef) -> bool:
        """The function runs part of its body without gradients: a ``with torch.no_grad():`` (or
        ``inference_mode``, ``set_grad_enabled(flag)``) of its own, or a no-gradient decorator."""
        if any(self._is_no_gradient(d.decorator) for d in function.decorators):
            return True
        return any(
            isinstance(node, cst.With) and any(self._is_no_gradient(i.item) or self._switches_gradients(i.item) for i in node.items)
            for node in descendants(function, enter_scopes=False)
        )

    @cached_property
    def _gradient_switches_off(self) -> list[cst.Call]:
        """``torch.set_grad_enabled(...)`` calls of the file that may switch gradients off."""
        return [
            call for call in self.ctx.nodes.of(cst.Call)
            if self.ctx.qualified_name(call.func) in _SET_GRAD_ENABLED and self._grad_switch(call) is not True
        ]

    def _switches_gradients(self, expr: cst.BaseExpression) -> bool:
        return isinstance(expr, cst.Call) and self.ctx.qualified_name(expr.func) in _SET_GRAD_ENABLED and (
            self._grad_switch(expr) is not True
        )

    def _every_caller_gradient_free(self, function: cst.FunctionDef, depth: int) -> bool:
        sites, complete = self.flow.call_sites(function)
        if not sites or not complete:
            return False
        return all(site.flow.ctx.get(Regions).computes_no_gradient(site.call, depth - 1) for site in sites)
