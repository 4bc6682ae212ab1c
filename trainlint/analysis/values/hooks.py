"""Gradient hooks for the engine: a function autograd calls with gradients receives gradients.

``p.register_hook(fn)`` makes ``fn``'s first parameter a gradient; a module's backward hook gets
``(module, grad_input, grad_output)``, tuples of gradients; a backward pre-hook gets ``(module,
grad_output)``; a parameter's post-accumulate hook gets the parameter, whose ``.grad`` the engine
already knows is a gradient. The hook may be a ``def`` (found wherever the project registers it),
a method (``self._clip_hook``), a ``functools.partial`` of either, or a lambda written in the
registration. Nobody else calls such a function with anything visible, so without this its
parameters would be unknown.

API (on the engine): ``gradient_hook(call)`` (the registration a call is, if any: its hook
values and which parameters get gradients), ``hook_gradient_values(function, name)`` and
``lambda_parameter_values(lambda_, name)`` (used by the engine for parameters).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.domain import UNKNOWN, Collection, FunctionRef, Instance, Tensor, Value, Values
from trainlint.analysis.values.torch_semantics import GRADIENT_HOOK_FUNCTIONS, GRADIENT_HOOK_METHODS

if TYPE_CHECKING:
    from trainlint.analysis.values.engine import ValueFlow
    from trainlint.analysis.values.guard import Dependency

# How a module that registers a gradient hook spells it (`register_model`, a model zoo's
# decorator in every model file, is not one).
_REGISTRATIONS = (*GRADIENT_HOOK_METHODS, *(name.rpartition(".")[2] for name in GRADIENT_HOOK_FUNCTIONS))
_TENSOR_HOOK = "register_hook"  # the one registration whose hook gets a tensor, not tuples


@dataclass(frozen=True)
class GradientHook:
    """A registration of a gradient hook: ``p.register_hook(fn)``, ``m.register_full_backward_hook(fn)``."""

    call: cst.Call
    method: str  # "register_hook", "register_full_backward_hook", ... (the function's tail for globals)
    hook: cst.BaseExpression  # the hook as written
    positions: tuple[int, ...]  # positional parameters that receive gradients (after partial's)
    receives_tuples: bool  # module hooks: grad_input / grad_output are tuples of gradients

    @property
    def on_parameter_grad(self) -> bool:
        """A post-accumulate hook: it gets the parameter and reads ``.grad``."""
        return not self.positions


class GradientHooksMixin:
    def _init_hooks(self: ValueFlow) -> None:
        self._hooked: dict[cst.FunctionDef, tuple[dict[str, Values], frozenset[Dependency]]] = {}

    # -- registrations -----------------------------------------------------------------------------
    def gradient_hook(self: ValueFlow, call: cst.Call) -> GradientHook | None:
        """The call as a registration of a gradient hook, or None."""
        func = call.func
        qualified = self.ctx.qualified_name(func)
        if qualified in GRADIENT_HOOK_FUNCTIONS:
            method, positions = qualified.rpartition(".")[2], GRADIENT_HOOK_FUNCTIONS[qualified]
        elif qualified is None and isinstance(func, cst.Attribute) and func.attr.value in GRADIENT_HOOK_METHODS:
            method, positions = func.attr.value, GRADIENT_HOOK_METHODS[func.attr.value]
            if method == _TENSOR_HOOK and not self._may_be_tensor(func.value, call):
                return None  # a training framework's own `register_hook(hook, priority=...)`
        else:
            return None
        hook = _hook_argument(call)
        if hook is None:
            return None
        return GradientHook(call, method, hook, positions, method != _TENSOR_HOOK)

    def _may_be_tensor(self: ValueFlow, receiver: cst.BaseExpression, call: cst.Call) -> bool:
        """A tensor's ``register_hook`` takes one argument; an object of a project class is no tensor."""
        if len(call.args) != 1:
            return False
        keyword = call.args[0].keyword
        if keyword is not None and keyword.value != "hook":
            return False
        values = self.evaluate(receiver, False)
        return not values.may(lambda v: isinstance(v, Instance) and not v.cls.startswith("torch."))

    def hooks_of(self: ValueFlow, registration: GradientHook) -> Iterator[tuple[cst.FunctionDef | cst.Lambda, int, ValueFlow]]:
        """The functions a registration may register, each with how many of its leading
        positional parameters are bound already (``self``, a partial's arguments) and the engine
        of its module."""
        if isinstance(registration.hook, cst.Lambda):
            yield registration.hook, 0, self
            return
        for value in self.evaluate(registration.hook, False).of_type(FunctionRef):
            if value.site is not None and isinstance(value.site.node, cst.FunctionDef):
                from trainlint.analysis.values.engine import ValueFlow

                yield value.site.node, len(value.bound), value.site.ctx.get(ValueFlow)

    # -- what the parameters of a hook are ------------------------------------------------------------
    def hook_gradient_values(self: ValueFlow, function: cst.FunctionDef, name: str) -> Values | None:
        """What a parameter of ``function`` receives when the project registers it as a gradient
        hook: a gradient, or what a ``partial`` (or the instance of a bound method) fixed; None
        when it is registered nowhere (or the parameter gets nothing from a registration)."""
        found = self.guard.answer(
            ("hooked", id(function)), self._hooked, function, lambda: self._hooked_parameters(function), {}, {}
        )
        return found.get(name)

    def _hooked_parameters(self: ValueFlow, function: cst.FunctionDef) -> dict[str, Values]:
        from trainlint.analysis.values.calls import TooManyCallers

        names = _positional_names(function)
        found: dict[str, Values] = {}
        owner = self.enclosing_class(function)
        qualified = None if owner is not None else self.qualified_of(function)
        try:
            flows = list(self.modules_using(function.name.value, qualified, mentioning=_REGISTRATIONS))
        except TooManyCallers:
            flows = [self]
        for flow in flows:
            if not any(word in flow.ctx.source.text for word in _REGISTRATIONS):
                continue
            for call in flow.ctx.nodes.of(cst.Call):
                registration = flow.gradient_hook(call) if _spells_registration(call) else None
                if registration is None:
                    continue
                for ref in flow.evaluate(registration.hook, False).of_type(FunctionRef):
                    if ref.site is None or ref.site.node is not function:
                        continue
                    # autograd calls hook(*bound, *gradients, **bound_keywords)
                    arguments = {**dict(zip(names, ref.bound)), **dict(ref.bound_keywords)}
                    for position in registration.positions:
                        if len(ref.bound) + position < len(names):
                            arguments[names[len(ref.bound) + position]] = _gradients(flow, registration)
                    for name, value in arguments.items():
                        found[name] = found[name] | value if name in found else value
        return found

    def lambda_parameter_values(self: ValueFlow, lambda_: cst.Lambda, name: str) -> Values:
        """A lambda's parameter: a gradient when the lambda is registered as a gradient hook right
        where it is written; otherwise unknown (the engine does not follow who calls a lambda)."""
        arg = self.ctx.parent(lambda_)
        call = self.ctx.parent(arg) if isinstance(arg, cst.Arg) else None
        registration = self.gradient_hook(call) if isinstance(call, cst.Call) else None
        if registration is None or registration.hook is not lambda_:
            return UNKNOWN
        names = [p.name.value for p in (*lambda_.params.posonly_params, *lambda_.params.params)]
        if any(position < len(names) and names[position] == name for position in registration.positions):
            return _gradients(self, registration)
        return UNKNOWN

    def enclosing_lambda_parameter(self: ValueFlow, name: cst.Name) -> cst.Lambda | None:
        """The nearest lambda around ``name`` that binds it as a parameter (a def or class in
        between ends the search: a lambda's parameters are not visible past it)."""
        for ancestor in self.ctx.ancestors(name):
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef, cst.Module)):
                return None
            if isinstance(ancestor, cst.Lambda):
                params = ancestor.params
                every = (*params.posonly_params, *params.params, *params.kwonly_params)
                if any(p.name.value == name.value for p in every):
                    return ancestor
        return None


def _gradients(flow: ValueFlow, registration: GradientHook) -> Values:
    gradient: Value = Tensor("grad", flow.site(registration.call))
    if registration.receives_tuples:
        return Values.of(Collection("tuple", (Values.of(gradient),), homogeneous=True))
    return Values.of(gradient)


def _hook_argument(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.star:
            return None
        if arg.keyword is None or arg.keyword.value == "hook":
            return arg.value
    return None


def _spells_registration(call: cst.Call) -> bool:
    func = call.func
    tail = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
    return tail.startswith("register_")


def _positional_names(function: cst.FunctionDef) -> list[str]:
    params = function.params
    return [p.name.value for p in (*params.posonly_params, *params.params)]


__all__ = ["GradientHook", "GradientHooksMixin"]
