"""TL110: a gradient hook that clamps, clips or masks gradients the GradScaler has scaled."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.regions import Regions
from trainlint.analysis.training_step import EventKind, TrainingSteps
from trainlint.analysis.values import Site, Tensor, ValueFlow, number
from trainlint.analysis.values.calls import TooManyCallers
from trainlint.analysis.values.hooks import GradientHook
from trainlint.context import FileContext, descendants, scope_nodes
from trainlint.findings import Finding
from trainlint.rule import Example, Rule

_CLAMPS = frozenset({"clamp", "clip", "clamp_", "clip_"})
_CLAMP_FUNCTIONS = frozenset({"torch.clamp", "torch.clip", "torch.clamp_", "torch.clip_"})
_CLIP_TAILS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm"})
_NAN_TO_NUM = frozenset({"nan_to_num", "nan_to_num_"})
_FINITENESS = frozenset({"isnan", "isinf", "isfinite", "isposinf", "isneginf"})
_NORMS = frozenset({"norm", "vector_norm", "abs", "amax", "max"})
_LIMITERS = frozenset({"min", "max", "clamp", "clip", "minimum", "maximum"})
# In-place changes of a gradient: acting on it when a test of its values fired.
_IN_PLACE = frozenset({"zero_", "fill_", "mul_", "div_", "copy_", "masked_fill_", "nan_to_num_", "clamp_", "clip_"})
# Words of a module that may train with a scaler (a GradScaler, a float16 framework set-up).
_SCALER_WORDS = ("GradScaler", "scaler", "precision")


@dataclass(frozen=True)
class _Action:
    """What a hook does to the gradient it receives, in words, and how it depends on the scale."""

    what: str  # "clamps the gradient to [-1, 1]"
    bound: float | None = None  # the largest magnitude it lets through, when known
    masks_overflow: bool = False  # it hides inf/NaN from the scaler


@dataclass(frozen=True)
class _Scaling:
    """Where the loss is scaled: a GradScaler of a training step, or a float16 framework."""

    where: str
    init_scale: float | None


class GradientHookUnderScaler(Rule):
    """## What it does
    Finds a gradient hook (`tensor.register_hook(fn)`, `module.register_full_backward_hook(fn)`,
    `register_full_backward_pre_hook`, `param.register_post_accumulate_grad_hook(fn)`, the global
    `register_module_full_backward_hook`) that clamps, clips or masks the gradient it receives
    (`grad.clamp(-1, 1)`, `torch.clamp`, `clip_grad_norm_`/`clip_grad_value_`, a rescale when
    its norm passes a threshold, `nan_to_num`, zeroing or replacing it when `isnan`/`isinf`
    fires), in a project that trains the model with a GradScaler: a training step of the same
    module, or of a module that uses the class or function that registers the hook, scales its
    loss (`scaler.scale(loss).backward()`), or the module sets up Lightning, Fabric or
    Accelerate in float16 mixed precision (they scale the loss with a GradScaler of their own).

    The hook may be a lambda, a function, a method (`self._clip_hook`) or a
    `functools.partial`, defined in another module. Hooks that only record (logging norms,
    counting NaN, saving gradients for Grad-CAM) and hooks that multiply the gradient by a
    factor or a mask (the same at any scale) are not reported.

    ## Why is this bad?
    Hooks run during the backward pass, and under a GradScaler that is the **scaled** backward:
    every gradient the hook sees is the true gradient times the loss scale, 65536 (2**16) at the
    start and changing during training. `grad.clamp(-1, 1)` there clamps values 65536x their true
    size, so after `scaler.unscale_` every gradient is at most 1/65536 = 1.5e-5 and the model
    barely moves; a norm threshold is crossed on every step for the same reason. A hook that
    replaces inf/NaN by numbers fights the scaler: an overflow is how the scaler learns its scale
    is too high, so it never skips that step nor backs off, and the overflowed values are
    silently replaced on every later step. Clip once, after `scaler.unscale_(optimizer)`, with
    `torch.nn.utils.clip_grad_norm_` (or `clip_grad_value_`): the threshold then applies to true
    gradients, and steps with inf/NaN are still skipped.

    ## Evidence
    Measured with torch 2.13 on CPU (a GradScaler on the CPU, init scale 65536, SGD, 60 steps):
    a two-layer classifier whose parameters clamp their gradients to [-1, 1] in a hook steps with
    a true gradient norm (after `unscale_`) of 5.3e-04, and its loss goes from 0.690 to 0.687;
    with the hook removed and `clip_grad_norm_(params, 1.0)` after `unscale_`, the norm is 0.076
    (median) and the loss falls to 0.042 (`trainlint confirm --examples TL110`). yolov5's
    `train.py` keeps a `nan_to_num` gradient hook commented out next to its GradScaler, with a
    note that it made training erratic.

    There is no automatic fix: the threshold was chosen for scaled gradients that change
    with the scale, so nobody chose the one a clip after `unscale_` should use.
    """

    code = "TL110"
    name = "gradient-hook-under-scaler"
    summary = "A gradient hook clamps, clips or masks gradients a GradScaler has scaled"
    level = "error"
    fix_applicability = None
    triggers = ("register_hook", "register_full_backward", "register_backward_hook", "register_post_accumulate_grad_hook",
                "register_module_")
    examples = (
        Example(
            code='''
            import torch
            import torch.nn.functional as F


            def train(model, loader, optimizer):
                scaler = torch.amp.GradScaler("cuda")
                for p in model.parameters():
                    p.register_hook(lambda grad: grad.clamp(-1.0, 1.0))
                for inputs, targets in loader:
                    with torch.autocast("cuda", dtype=torch.float16):
                        loss = F.cross_entropy(model(inputs), targets)
                    optimizer.zero_grad()
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            expect=[(8, 9)],
        ),
    )
    valid_examples = (
        '''
        import torch
        import torch.nn.functional as F

        def train(model, loader, optimizer):
            scaler = torch.amp.GradScaler("cuda")
            for inputs, targets in loader:
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
        ''',
        '''
        import torch

        def train(model, loader, optimizer, grad_norms):
            scaler = torch.amp.GradScaler("cuda")
            for p in model.parameters():
                p.register_hook(lambda grad: grad_norms.append(grad.norm().item()))
            for inputs, targets in loader:
                loss = model(inputs, targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        flow = ctx.get(ValueFlow)
        for call in ctx.nodes.of(cst.Call):
            registration = flow.gradient_hook(call) if _spells_registration(call) else None
            if registration is None:
                continue
            actions = [
                action
                for hook, _, hook_flow in flow.hooks_of(registration)
                for action in _HookBody(hook_flow, hook).actions()
            ]
            scaling = _scaling_for(ctx, call) if actions else None
            if scaling is not None:
                yield ctx.report(self, call, _message(actions[0], scaling))


# Calls whose result holds (or is bounded by) their arguments: a new gradient written inside one
# is still what the hook returns.
_VALUE_PASSING = frozenset({"tuple", "list", "stack", "cat", "min", "max", "minimum", "maximum", "where", "clamp", "clip"})


def _passes_values_on(ctx: FileContext, call: cst.Call) -> bool:
    func = call.func
    name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
    return name in _VALUE_PASSING


def _spells_registration(call: cst.Call) -> bool:
    func = call.func
    name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
    return name.startswith("register_")


def _message(action: _Action, scaling: _Scaling) -> str:
    scale = f"{scaling.init_scale:g}x" if scaling.init_scale else "the loss scale times"
    if action.masks_overflow:
        return (
            f"this gradient hook {action.what} in the backward pass of {scaling.where}, which a GradScaler "
            "scales: an overflow is how the scaler learns its scale is too high, so it never skips that step "
            "nor lowers its scale, and overflowed gradients are replaced on every later step; let the scaler "
            "skip them (and clip after `scaler.unscale_(optimizer)` if needed)"
        )
    after = ""
    if action.bound is not None and scaling.init_scale:
        after = f": after `unscale_` each is at most {action.bound / scaling.init_scale:.2g}"
    return (
        f"this gradient hook {action.what} in the backward pass of {scaling.where}, where gradients are {scale} "
        f"their true size (at start){after}; clip after `scaler.unscale_(optimizer)` with `clip_grad_norm_` instead"
    )


# -- what the hook does ----------------------------------------------------------------------------
class _HookBody:
    """The calls and statements of one hook, asked what they do to the gradients it receives."""

    def __init__(self, flow: ValueFlow, hook: cst.FunctionDef | cst.Lambda) -> None:
        self.flow = flow
        self.ctx = flow.ctx
        self.hook = hook

    def actions(self) -> list[_Action]:
        found: list[_Action] = []
        for node in _in_hook(self.hook.body):
            if isinstance(node, cst.Call):
                action = self._call_action(node)
            elif isinstance(node, cst.If):
                action = self._guarded_action(node)
            elif isinstance(node, cst.Assign):
                action = self._masking_store(node)
            else:
                action = None
            if action is not None:
                found.append(action)
        return found

    def _returned(self, node: cst.CSTNode) -> bool:
        """The hook returns what ``node`` computes (the new gradient): it is the returned value,
        part of it (an element, an operand, a limit), or assigned to a name the hook returns.
        Inside the argument of some other call (``writer.add_histogram("g", g.clamp(-1, 1))``) it
        is only looked at."""
        child = node
        for ancestor in self.ctx.ancestors(node):
            if ancestor is self.hook:
                return isinstance(self.hook, cst.Lambda) and child is self.hook.body
            if isinstance(ancestor, cst.Return):
                return True
            if isinstance(ancestor, cst.Assign):
                names = {t.target.value for t in ancestor.targets if isinstance(t.target, cst.Name)}
                return any(
                    isinstance(n, cst.Return) and isinstance(n.value, cst.Name) and n.value.value in names
                    for n in _in_hook(self.hook.body)
                )
            if isinstance(ancestor, cst.Arg):
                call = self.ctx.parent(ancestor)
                if not (isinstance(call, cst.Call) and _passes_values_on(self.ctx, call)):
                    return False
            if isinstance(ancestor, (cst.SimpleStatementLine, cst.If, cst.For, cst.While, cst.With)):
                return False
            child = ancestor
        return False

    # -- a call on the gradient
    def _call_action(self, call: cst.Call) -> _Action | None:
        func = call.func
        qualified = self.ctx.qualified_name(func)
        method = func.attr.value if isinstance(func, cst.Attribute) and qualified is None else None
        if qualified is not None and qualified.startswith("torch.nn.utils.") and qualified.rpartition(".")[2] in _CLIP_TAILS:
            return _Action(f"calls `{qualified.rpartition('.')[2]}`", self._clip_bound(call))
        target = None
        if qualified in _CLAMP_FUNCTIONS:
            target, in_place, bounds = _first(call), qualified.endswith("_"), _bounds(call, method=False)
        elif method in _CLAMPS:
            target, in_place, bounds = func.value, method.endswith("_"), _bounds(call, method=True)  # type: ignore[union-attr]
        if target is not None and (in_place or self._returned(call)) and self.is_gradient(target):
            return _Action(f"clamps the gradient{_range(bounds)}", self._largest(bounds))
        if qualified in ("torch.nan_to_num", "torch.nan_to_num_") or method in _NAN_TO_NUM:
            target = _first(call) if qualified else func.value  # type: ignore[union-attr]
            in_place = (qualified or method or "").endswith("_")
            if target is not None and (in_place or self._returned(call)) and self.is_gradient(target):
                return _Action("replaces inf/NaN in the gradient by numbers", masks_overflow=True)
        if (qualified == "torch.where" or method in ("masked_fill", "masked_fill_")) and (method == "masked_fill_" or self._returned(call)):
            test = _first(call)  # torch.where's condition, masked_fill's mask
            if test is not None and self.tests_finiteness(test):
                return _Action("replaces inf/NaN in the gradient by numbers", masks_overflow=True)
        if self._is_norm_of_gradient(call) and self._limits(call) and self._returned(call):
            return _Action("rescales the gradient when its norm passes a threshold")
        return None

    def _limits(self, norm: cst.Call) -> bool:
        """The norm of the gradient is compared with something or bounded by min/max/clamp."""
        for ancestor in self.ctx.ancestors(norm):
            if ancestor is self.hook:
                return False
            if isinstance(ancestor, cst.Comparison):
                return True
            if isinstance(ancestor, cst.Call):
                name = ancestor.func.attr.value if isinstance(ancestor.func, cst.Attribute) else getattr(ancestor.func, "value", "")
                if name in _LIMITERS and ancestor is not norm:
                    return True
        return False

    # -- a test of the gradient, then a change
    def _guarded_action(self, statement: cst.If) -> _Action | None:
        finiteness = self.tests_finiteness(statement.test)
        if not finiteness and not self._tests_magnitude(statement.test):
            return None
        for node in _in_hook(statement.body):
            if isinstance(node, cst.Return) and node.value is not None and not _is_none(node.value) or self._changes_gradient(node):
                if finiteness:
                    return _Action("replaces the gradient when it holds inf/NaN", masks_overflow=True)
                return _Action("replaces the gradient when its magnitude passes a threshold")
        return None

    def _changes_gradient(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in _IN_PLACE:
            return self.is_gradient(node.func.value)
        if isinstance(node, cst.Assign):
            return any(self._is_gradient_store(t.target) for t in node.targets)
        return False

    def _is_gradient_store(self, target: cst.BaseExpression) -> bool:
        if isinstance(target, cst.Attribute) and target.attr.value == "grad":
            return True
        return isinstance(target, cst.Subscript) and self.is_gradient(target.value)

    def _masking_store(self, assign: cst.Assign) -> _Action | None:
        """``grad[torch.isnan(grad)] = 0``, ``grad[grad.abs() > 10] = 0``."""
        for target in assign.targets:
            store = target.target
            if isinstance(store, cst.Subscript) and self.is_gradient(store.value):
                index = store.slice[0].slice if len(store.slice) == 1 else None
                if isinstance(index, cst.Index) and self.tests_finiteness(index.value):
                    return _Action("replaces inf/NaN in the gradient by numbers", masks_overflow=True)
                if isinstance(index, cst.Index) and self._tests_magnitude(index.value):
                    return _Action("replaces the gradient's entries past a threshold")
        return None

    # -- bounds
    def _largest(self, bounds: list[cst.BaseExpression | None]) -> float | None:
        """The largest magnitude a clamp lets through, when every bound given is a known number."""
        given = [b for b in bounds if b is not None]
        known = [self._number(b) for b in given]
        magnitudes = [abs(v) for v in known if v is not None]
        return max(magnitudes) if magnitudes and len(magnitudes) == len(given) else None

    def _clip_bound(self, call: cst.Call) -> float | None:
        for index, arg in enumerate(a for a in call.args if not a.star):
            keyword = arg.keyword.value if arg.keyword is not None else None
            if (keyword is None and index == 1) or keyword in ("max_norm", "clip_value"):
                return self._number(arg.value)
        return None

    def _number(self, expr: cst.BaseExpression) -> float | None:
        values = self.flow.values(expr)
        numbers = {number(v) for v in values}
        return numbers.pop() if len(numbers) == 1 and not values.unknown and None not in numbers else None

    # -- questions about expressions
    def is_gradient(self, expr: cst.BaseExpression) -> bool:
        return self.flow.values(expr).may(lambda v: isinstance(v, Tensor) and v.kind == "grad")

    def tests_finiteness(self, test: cst.BaseExpression) -> bool:
        """The expression tests a gradient for inf/NaN (``torch.isnan(g).any()``, ``~g.isfinite()``,
        ``g != g``)."""
        for node in (test, *descendants(test)):
            if isinstance(node, cst.Call):
                func = node.func
                qualified = self.ctx.qualified_name(func) or ""
                if qualified.startswith("torch.") and qualified.rpartition(".")[2] in _FINITENESS:
                    argument = _first(node)
                    if argument is not None and self.is_gradient(argument):
                        return True
                elif isinstance(func, cst.Attribute) and func.attr.value in _FINITENESS and self.is_gradient(func.value):
                    return True
            if isinstance(node, cst.Comparison) and len(node.comparisons) == 1:
                comparison = node.comparisons[0]
                same = self.ctx.code(node.left).strip() == self.ctx.code(comparison.comparator).strip()
                if isinstance(comparison.operator, cst.NotEqual) and same and self.is_gradient(node.left):
                    return True
        return False

    def _tests_magnitude(self, test: cst.BaseExpression) -> bool:
        """A comparison of the gradient's norm or absolute values with something."""
        for node in (test, *descendants(test)):
            if isinstance(node, cst.Comparison):
                sides = [node.left, *(c.comparator for c in node.comparisons)]
                if any(isinstance(side, cst.Call) and self._is_norm_of_gradient(side) for side in sides):
                    return True
        return False

    def _is_norm_of_gradient(self, call: cst.Call) -> bool:
        """``g.norm()``, ``g.abs().max()``, ``torch.norm(g)``, ``torch.linalg.vector_norm(g)``."""
        func = call.func
        qualified = self.ctx.qualified_name(func)
        if qualified is not None:
            argument = _first(call)
            return qualified.rpartition(".")[2] in _NORMS and argument is not None and self._gradient_or_norm(argument)
        return isinstance(func, cst.Attribute) and func.attr.value in _NORMS and self._gradient_or_norm(func.value)

    def _gradient_or_norm(self, expr: cst.BaseExpression) -> bool:
        if isinstance(expr, cst.Call) and self._is_norm_of_gradient(expr):
            return True
        return self.is_gradient(expr)


# -- where the loss is scaled ----------------------------------------------------------------------
def _scaling_for(ctx: FileContext, registration: cst.Call) -> _Scaling | None:
    """The scaling the backward passes of the hooked model go through: a training step of this
    module with a GradScaler, or a float16 framework set up here; else the same in a module that
    uses the class or function that registers the hook."""
    found = _scaling_in(ctx)
    if found is not None:
        return found
    flow = ctx.get(ValueFlow)
    owner = _registering_definition(ctx, registration)
    if owner is None:
        return None
    name = owner.name.value
    try:
        for other in flow.modules_using(name, flow.qualified_of(owner), include_self=False, mentioning=_SCALER_WORDS):
            found = _scaling_in(other.ctx)
            if found is not None:
                return found
    except TooManyCallers:
        return None
    return None


def _scaling_in(ctx: FileContext) -> _Scaling | None:
    for step in ctx.get(TrainingSteps).all_steps():
        for event in step.of_kind(EventKind.SCALED_BACKWARD):
            scaler = step.scaler_of(event)
            if scaler is not None:
                where = f"`{_short(ctx.code(event.node))}` ({Site(ctx, event.node).location})"
                return _Scaling(where, scaler.init_scale)
    if ctx.get(Regions).framework_runs_float16:
        return _Scaling(f"the float16 mixed-precision training set up in {Site(ctx, ctx.module).location.rpartition(':')[0]}", None)
    return None


def _registering_definition(ctx: FileContext, node: cst.CSTNode) -> cst.ClassDef | cst.FunctionDef | None:
    """The top-level class or function whose code registers the hook (other modules use it)."""
    outermost: cst.ClassDef | cst.FunctionDef | None = None
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, (cst.ClassDef, cst.FunctionDef)):
            outermost = ancestor
    return outermost


# -- small helpers on the tree ----------------------------------------------------------------------
def _in_hook(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    return scope_nodes(node, into_lambdas=True)




def _bounds(call: cst.Call, method: bool) -> list[cst.BaseExpression | None]:
    """``[min, max]`` of a clamp (``x.clamp(lo, hi)`` or ``torch.clamp(x, lo, hi)``), by position or
    keyword; None where not given."""
    positional: list[cst.BaseExpression | None] = [a.value for a in call.args if a.keyword is None and not a.star]
    positional = positional[0 if method else 1 :] + [None, None]
    keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    return [keywords.get("min", positional[0]), keywords.get("max", positional[1])]


def _first(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is None and not arg.star:
            return arg.value
        if arg.keyword is not None and arg.keyword.value in ("input", "condition", "mask"):
            return arg.value
    return None


def _range(bounds: list[cst.BaseExpression | None]) -> str:
    if len(bounds) == 2 and bounds[0] is not None and bounds[1] is not None:
        return f" to [{_code(bounds[0])}, {_code(bounds[1])}]"
    return ""


def _short(code: str) -> str:
    code = " ".join(code.split())
    return code if len(code) <= 60 else code[:57] + "..."


def _code(expr: cst.BaseExpression) -> str:
    return cst.Module([]).code_for_node(expr)


def _is_none(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


__all__ = ["GradientHookUnderScaler"]
