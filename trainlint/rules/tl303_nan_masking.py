"""TL303: NaN in gradients or in the loss replaced by numbers, so that training goes on."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.regions import Regions
from trainlint.analysis.selection import used_only_to_select
from trainlint.analysis.values import Facts, Scopes, Tensor, Value, ValueFlow
from trainlint.context import FileContext, scope_nodes
from trainlint.findings import Finding
from trainlint.rule import Example, Rule

_NAN_TO_NUM = frozenset({"torch.nan_to_num", "torch.nan_to_num_"})
_NAN_TO_NUM_METHODS = frozenset({"nan_to_num", "nan_to_num_"})
_NAN_TESTS = frozenset({"torch.isnan", "torch.isinf", "torch.isfinite"})
_NAN_TEST_METHODS = frozenset({"isnan", "isinf", "isfinite"})
_MASKED_FILL = frozenset({"masked_fill", "masked_fill_"})
# Calls that run backward on their (first) argument: `self.manual_backward(loss)`.
_BACKWARD_FUNCTIONS = frozenset({"backward", "manual_backward"})
# Methods that keep a tensor the loss: `loss.mean().backward()`.
_LOSS_PRESERVING = frozenset({"mean", "sum", "float", "squeeze", "double", "to"})
# Functions whose return value is the loss that will be backpropagated.
_LOSS_FUNCTIONS = ("training_step", "compute_loss", "loss", "loss_fn", "criterion")
_GRAD_NAMES = ("grad", "grads", "gradient", "gradients")


class NanMasking(Rule):
    """## What it does
    Finds code that hides NaN in gradients, in the loss or in a module's activations by
    replacing it with numbers: `torch.nan_to_num(p.grad)`, `p.grad.nan_to_num_()`,
    `grad[torch.isnan(grad)] = 0`, `p.grad.data[torch.isnan(p.grad.data)] = 0`,
    `loss = torch.nan_to_num(loss)`, `torch.where(torch.isnan(loss), zeros, loss)`,
    `if torch.isnan(loss): loss = torch.zeros_like(loss)`. The loss is recognised by flowing into
    `backward()` (directly, through `scaler.scale(...)`, `manual_backward`, a sum with other
    terms) or by being returned from `training_step`/`compute_loss`; a gradient by being `.grad`
    or what a registered gradient hook receives.

    Activations are values computed in the `forward` of an `nn.Module` of the project (or in a
    method `forward` calls) that runs with gradients: `h = torch.nan_to_num(h)`,
    `if torch.isnan(x).any(): x = torch.zeros_like(x)`, `if not torch.isfinite(out).all(): return
    fallback`. `nan_to_num` on inputs (the raw input of `forward`), data or metrics is not
    reported, nor is masking under `no_grad` or in an `if not self.training:` branch, nor a test
    that raises or only logs.

    ## Why is this bad?
    A NaN gradient or loss means the forward or backward pass broke: a float16 overflow past
    65504, `log(0)`, a division by zero, a learning rate that diverged. Replacing the NaN with 0
    keeps training going on garbage: the optimizer steps with the finite parts of a broken
    gradient (Adam's moment estimates take them in for hundreds of steps), a masked loss
    backpropagates zeros or still-NaN values through the rest of the graph, and the cause keeps
    firing unseen until the model silently stops improving. Find the cause, or skip the step
    explicitly and count it (`if not torch.isfinite(loss): continue`); `GradScaler` already skips
    float16 steps with inf/NaN gradients on its own.

    In the forward pass it is worse than it looks: the mask replaces the value but not its
    gradient. `torch.nan_to_num(torch.sqrt(x)).sum()` backpropagates NaN to `x` where `x < 0`
    (and so does `torch.where(torch.isnan(y), 0, y)`): the weights that produced the NaN become
    NaN at the next step while every loss stays finite, and the layer outputs the fill value from
    then on.

    ## Evidence
    Measured with torch 2.13 on CPU: a layer that masks the NaN of `sqrt` of its projection with
    `nan_to_num` has NaN weights after its first SGD step, while all 30 losses stay finite
    (0.759 -> 0.694: the head learns on zeros); with the cause fixed (a signed square root, no
    mask) the weights stay finite and the loss goes from 0.829 to 0.250
    (`trainlint confirm --examples TL303`).

    There is no automatic fix: the right change depends on the cause.
    """

    code = "TL303"
    name = "nan-masking"
    summary = "NaN in gradients, loss or activations replaced by numbers (training continues on garbage)"
    level = "warning"
    fix_applicability = None
    triggers = ("nan_to_num", "isnan", "isinf", "isfinite", "!=")

    examples = (
        Example(
            code='''
            import torch


            def train_step(model, batch, optimizer):
                loss = model(batch).mean()
                optimizer.zero_grad()
                loss.backward()
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad = torch.nan_to_num(p.grad, nan=0.0)
                optimizer.step()
            ''',
            expect=[(10, 22)],
        ),
        Example(
            code='''
            import torch


            def train_step(model, batch, optimizer):
                loss = model(batch).mean()
                loss = torch.nan_to_num(loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            ''',
            expect=[(6, 12)],
        ),
    )
    valid_examples = (
        '''
        import torch

        def train_step(model, batch, optimizer):
            inputs = torch.nan_to_num(batch["features"])
            loss = model(inputs).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        masking = _Masking(ctx)
        for call in ctx.nodes.of(cst.Call):
            found = masking.masked_by_call(call)
            if found is not None:
                yield ctx.report(self, call, _message(ctx, found))
        for assign in ctx.nodes.of(cst.Assign):
            for target in assign.targets:
                found = masking.masked_by_subscript(target.target)
                if found is not None:
                    yield ctx.report(self, target.target, _message(ctx, found))
        for branch in ctx.nodes.of(cst.If):
            found = masking.masked_by_branch(branch)
            if found is not None:
                yield ctx.report(self, branch.test, _message(ctx, found))


def _message(ctx: FileContext, masked: tuple[str, cst.BaseExpression]) -> str:
    kind, expr = masked
    if kind == "activation":
        return (
            f"NaN in the activation `{ctx.code(expr)}` is replaced by numbers in the forward pass: its gradient "
            "still carries the NaN back (NaN weights under finite losses), or the layer silently outputs a "
            "constant; find what produces it (a log or sqrt of a negative, a division by zero, an overflow)"
        )
    return (
        f"NaN in the {kind} `{ctx.code(expr)}` is replaced by numbers: the broken pass that made it "
        "goes unseen and training continues on garbage; find the cause or skip the step explicitly"
    )


class _Masking:
    """Which expressions are gradients or losses, and which calls or stores mask their NaN."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(Scopes)
        self.values = ctx.get(ValueFlow)
        self.structure = ctx.get(ModelStructure)
        self.regions = ctx.get(Regions)

    # -- the masking operations --------------------------------------------------------------
    def masked_by_call(self, call: cst.Call) -> tuple[str, cst.BaseExpression] | None:
        """``nan_to_num(x)``, ``x.nan_to_num_()``, ``torch.where(isnan(x), _, x)``,
        ``x.masked_fill(isnan(x), 0)``: the masked gradient or loss."""
        func = call.func
        name = self.ctx.qualified_name(func)
        target: cst.BaseExpression | None = None
        in_place = False
        if name in _NAN_TO_NUM:
            target = _first_argument(call)
            in_place = name.endswith("_") or any(a.keyword is not None and a.keyword.value == "out" for a in call.args)
        elif isinstance(func, cst.Attribute) and func.attr.value in _NAN_TO_NUM_METHODS and name is None:
            target = func.value
            in_place = func.attr.value.endswith("_")
        elif name == "torch.where" and len(call.args) >= 3:
            test, _, fallback = (a.value for a in call.args[:3])
            if self._tests_nan_of(test, fallback):
                target = fallback
        elif (
            isinstance(func, cst.Attribute)
            and func.attr.value in _MASKED_FILL
            and call.args
            and self._tests_nan_of(call.args[0].value, func.value)
        ):
            target = func.value
            in_place = func.attr.value.endswith("_")
        if target is None:
            return None
        return self._classify(target, call, in_place)

    def masked_by_subscript(self, target: cst.BaseExpression) -> tuple[str, cst.BaseExpression] | None:
        """``g[torch.isnan(g)] = 0`` / ``g[g != g] = 0`` on a gradient or a loss."""
        if not isinstance(target, cst.Subscript) or len(target.slice) != 1:
            return None
        index = target.slice[0].slice
        if not isinstance(index, cst.Index) or not self._tests_nan_of(index.value, target.value):
            return None
        return self._classify(target.value, target, in_place=True)

    def masked_by_branch(self, branch: cst.If) -> tuple[str, cst.BaseExpression] | None:
        """``if torch.isnan(x).any(): x = torch.zeros_like(x)`` (or ``return ...`` in a forward):
        a value tested for NaN/Inf and replaced when the test fires."""
        tested = self._nan_tested(branch.test)
        if tested is None:
            return None
        code = self.ctx.code(tested).strip()
        statements = [s for line in _lines(branch.body) for s in line]
        if any(isinstance(s, cst.Raise) for s in statements):
            return None
        replaced = any(
            isinstance(s, cst.Assign)
            and self._puts_numbers(s.value)
            and any(self.ctx.code(t.target).strip() == code for t in s.targets)
            for s in statements
        )
        returned = any(isinstance(s, cst.Return) for s in statements)
        if replaced:
            return self._classify(tested, branch, in_place=True)
        if returned and self.is_activation(tested, branch):
            return "activation", tested
        return None

    def _puts_numbers(self, value: cst.BaseExpression) -> bool:
        """The replacement puts numbers where the NaN was: not ``None`` (``p.grad = None`` drops
        that parameter's update, a skip of its own), not a clamp (NaN passes through ``clamp``:
        it only caps Inf, as T5's float16 guard does)."""
        if isinstance(value, cst.Name) and value.value == "None":
            return False
        if isinstance(value, cst.Call):
            func = value.func
            name = self.ctx.qualified_name(func) or (func.attr.value if isinstance(func, cst.Attribute) else "")
            if name.rpartition(".")[2] in ("clamp", "clip", "clamp_", "clip_"):
                return False
        return True

    def _nan_tested(self, test: cst.BaseExpression) -> cst.BaseExpression | None:
        """The value a test checks for NaN/Inf: ``x`` in ``torch.isnan(x).any()``,
        ``not torch.isfinite(loss)``, ``x.isnan().sum() > 0``, ``math.isnan(loss.item())``."""
        for node in _nodes_of(test):
            if not isinstance(node, cst.Call):
                continue
            func = node.func
            name = self.ctx.qualified_name(func) or ""
            tested: cst.BaseExpression | None = None
            if name in _NAN_TESTS or name in ("math.isnan", "math.isinf", "math.isfinite", "numpy.isnan"):
                tested = _first_argument(node)
            elif isinstance(func, cst.Attribute) and func.attr.value in _NAN_TEST_METHODS and not node.args and not name:
                tested = func.value
            while isinstance(tested, cst.Call) and isinstance(tested.func, cst.Attribute) and tested.func.attr.value == "item":
                tested = tested.func.value
            if tested is not None:
                return tested
        return None

    def _classify(
        self, expr: cst.BaseExpression, site: cst.CSTNode, in_place: bool
    ) -> tuple[str, cst.BaseExpression] | None:
        if self.is_gradient(expr):
            return "gradient", expr
        if self.is_loss(expr, site, in_place):
            return "loss", expr
        if self.is_activation(expr, site) and not self._only_thresholded(site):
            return "activation", expr
        return None

    def _only_thresholded(self, call: cst.CSTNode) -> bool:
        """``m = torch.nan_to_num(x, nan=-9999).sigmoid()`` read only in comparisons (``m > t``):
        the result becomes a boolean mask, so no gradient flows back through it and no output
        goes silently constant (NaN used as a "no value here" marker)."""
        assign = next((a for a in self.ctx.ancestors(call) if isinstance(a, cst.Assign)), None)
        return assign is not None and used_only_to_select(self.ctx, assign.value)

    # -- activations ---------------------------------------------------------------------------
    def is_activation(self, expr: cst.BaseExpression, site: cst.CSTNode) -> bool:
        """A value computed in the forward pass of a module of the project that runs with
        gradients; the raw input of ``forward`` (data cleaning) and ``self.x`` (parameters,
        buffers) are not activations."""
        if self.structure.forward_of(site) is None:
            return False
        if self.regions.computes_no_gradient(site) or self.regions.runs_only_in_eval(site):
            return False
        base = expr
        while isinstance(base, (cst.Subscript, cst.Attribute)) and not _is_self_attribute(base):
            base = base.value
        if _is_self_attribute(base):
            return False
        if self.values.values(expr).must(_carries_no_gradient):
            return False  # built from constants and indices: no gradient to carry a NaN back
        if isinstance(base, cst.Name):
            if self.flow.only_parameters(base):
                return False  # the input as given: cleaning data, not hiding a broken layer
            return bool(self.flow.reaching(base).bindings)
        return isinstance(base, cst.Call)

    def _tests_nan_of(self, test: cst.BaseExpression, expr: cst.BaseExpression) -> bool:
        """True when ``test`` is ``isnan(expr)``, ``~isfinite(expr)``, ``isnan(expr) | isinf(expr)``
        or ``expr != expr``."""
        code = self.ctx.code(expr).strip()
        if isinstance(test, cst.UnaryOperation):
            return self._tests_nan_of(test.expression, expr)
        if isinstance(test, cst.BinaryOperation) and isinstance(test.operator, (cst.BitOr, cst.BitAnd)):
            return self._tests_nan_of(test.left, expr) or self._tests_nan_of(test.right, expr)
        if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            comparison = test.comparisons[0]
            return (
                isinstance(comparison.operator, cst.NotEqual)
                and self.ctx.code(test.left).strip() == code
                and self.ctx.code(comparison.comparator).strip() == code
            )
        if isinstance(test, cst.Call):
            func = test.func
            if self.ctx.qualified_name(func) in _NAN_TESTS:
                argument = _first_argument(test)
                return argument is not None and self.ctx.code(argument).strip() == code
            if isinstance(func, cst.Attribute) and func.attr.value in _NAN_TEST_METHODS and not test.args:
                return self.ctx.code(func.value).strip() == code
        return False

    # -- gradients -----------------------------------------------------------------------------
    def is_gradient(self, expr: cst.BaseExpression) -> bool:
        """``p.grad``, ``p.grad.data``, or a name bound to one (or a hook's ``grad`` argument)."""
        if _is_grad_attribute(expr):
            return True
        if not isinstance(expr, cst.Name):
            return False
        if self.values.values(expr).may(lambda v: isinstance(v, Tensor) and v.kind == "grad"):
            return True
        # the argument of a gradient hook, or a parameter called `grad` (a hook's argument)
        reaching = self.flow.reaching(expr)
        if not reaching.bindings:
            return reaching.unresolved and self._is_hook_argument(expr)  # a lambda's parameter
        return all(b.kind == "parameter" and self._is_hook_argument(b.target) for b in reaching.bindings)

    def _is_hook_argument(self, leaf: cst.Name) -> bool:
        """A parameter of a function or lambda given to ``register_hook`` (its gradient), or a
        parameter named like a gradient."""
        owner = self._parameter_owner(leaf)
        if owner is None:
            return False
        if _grad_named(leaf.value):
            return True
        if isinstance(owner, cst.Lambda):
            return self._is_hook_argument_of(owner)
        return any(
            self._is_hook_argument_of(arg.value)
            for call in self.ctx.nodes.of(cst.Call)
            for arg in call.args[:1]
            if isinstance(arg.value, cst.Name) and arg.value.value == owner.name.value
        )

    def _is_hook_argument_of(self, expr: cst.CSTNode) -> bool:
        arg = self.ctx.parent(expr)
        call = self.ctx.parent(arg) if isinstance(arg, cst.Arg) else None
        return (
            isinstance(call, cst.Call)
            and isinstance(call.func, cst.Attribute)
            and call.func.attr.value == "register_hook"
        )

    def _parameter_owner(self, leaf: cst.Name) -> cst.Lambda | cst.FunctionDef | None:
        """The function or lambda whose parameter ``leaf`` is (its own Name, or a load of it
        inside a lambda)."""
        param = self.ctx.parent(leaf)
        if isinstance(param, cst.Param):
            parameters = self.ctx.parent(param)
            owner = self.ctx.parent(parameters) if parameters is not None else None
            return owner if isinstance(owner, (cst.Lambda, cst.FunctionDef)) else None
        lambda_ = self.ctx.enclosing(leaf, cst.Lambda)
        if lambda_ is not None and any(
            p.name.value == leaf.value for p in (*lambda_.params.posonly_params, *lambda_.params.params)
        ):
            return lambda_
        return None

    # -- losses --------------------------------------------------------------------------------
    def is_loss(self, expr: cst.BaseExpression, site: cst.CSTNode, in_place: bool) -> bool:
        """True when the masked value is backpropagated: the result of an out-of-place mask
        (``loss = torch.nan_to_num(loss)``), or the tensor masked in place, reaches a backward
        call afterwards, or is what a loss function returns."""
        function = self.flow.function_of(site)
        if function is None:
            return False
        if in_place:
            name = _name_of(expr)
            return name is not None and self._reaches_backward(name, function, 2, after=self.ctx.order(site)[1])
        top = _loss_expression_top(self.ctx, site)
        if _is_backward_operand(self.ctx, top) or self._returned_from_loss_function(top, function):
            return True
        stored = _stored_name(self.ctx, top)
        return stored is not None and self._reaches_backward(stored, function, 2, after=self.ctx.order(top)[1])

    def _returned_from_loss_function(self, site: cst.CSTNode, function: cst.FunctionDef) -> bool:
        parent = self.ctx.parent(site)
        return isinstance(parent, cst.Return) and (
            function.name.value.lower().endswith(_LOSS_FUNCTIONS) or _in_loss_class(self.ctx, function)
        )

    def _reaches_backward(self, name: str, function: cst.FunctionDef, depth: int, after: int) -> bool:
        for use in self.flow.uses(name, function):
            if self.ctx.order(use)[0] <= after:  # inside or before the value's expression
                continue
            top = _loss_expression_top(self.ctx, use)
            if _is_backward_operand(self.ctx, top) or self._returned_from_loss_function(top, function):
                return True
            stored = _stored_name(self.ctx, top)
            followed = depth > 0 and stored is not None and stored != name
            if followed and self._reaches_backward(stored, function, depth - 1, self.ctx.order(top)[1]):  # type: ignore[arg-type]
                return True
        return False


def _lines(block: cst.BaseSuite) -> Iterator[list[cst.CSTNode]]:
    """The small statements of a block, line by line (nested blocks are not entered)."""
    if isinstance(block, cst.SimpleStatementSuite):
        yield list(block.body)
        return
    for statement in block.body:  # type: ignore[attr-defined]
        yield list(statement.body) if isinstance(statement, cst.SimpleStatementLine) else [statement]


def _nodes_of(expr: cst.CSTNode) -> Iterator[cst.CSTNode]:
    return scope_nodes(expr)


def _carries_no_gradient(value: Value) -> bool:
    return isinstance(value, (Facts, Tensor)) and value.detached


def _is_self_attribute(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self"


def _first_argument(call: cst.Call) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is None and not arg.star:
            return arg.value
        if arg.keyword is not None and arg.keyword.value == "input":
            return arg.value
    return None


def _is_grad_attribute(expr: cst.BaseExpression) -> bool:
    dotted = dotted_name(expr)
    if dotted is None and isinstance(expr, cst.Attribute):
        # `self.model.fc.weight.grad`, `params[0].grad`
        return expr.attr.value == "grad" or (
            expr.attr.value == "data" and isinstance(expr.value, cst.Attribute) and expr.value.attr.value == "grad"
        )
    return dotted is not None and dotted.endswith((".grad", ".grad.data"))


def _grad_named(name: str) -> bool:
    lowered = name.lower()
    return lowered in _GRAD_NAMES or lowered.endswith(("_grad", "_grads"))


def _name_of(expr: cst.BaseExpression) -> str | None:
    return expr.value if isinstance(expr, cst.Name) else None


def _stored_name(ctx: FileContext, node: cst.CSTNode) -> str | None:
    """``loss`` for a node that is the whole value of ``loss = <node>`` (or ``loss += <node>``)."""
    parent = ctx.parent(node)
    if isinstance(parent, cst.Assign) and parent.value is node and len(parent.targets) == 1:
        target = parent.targets[0].target
        return target.value if isinstance(target, cst.Name) else None
    if isinstance(parent, (cst.AugAssign, cst.AnnAssign)) and parent.value is node:
        return parent.target.value if isinstance(parent.target, cst.Name) else None
    return None


def _loss_expression_top(ctx: FileContext, node: cst.CSTNode) -> cst.CSTNode:
    """Climb from a use of the loss through arithmetic and ``.mean()``-like methods: the
    largest expression that is still "the loss" (``(loss + 0.1 * aux).mean()``)."""
    current = node
    while True:
        parent = ctx.parent(current)
        if isinstance(parent, (cst.BinaryOperation, cst.UnaryOperation)):
            current = parent
            continue
        if isinstance(parent, cst.Attribute) and parent.value is current and parent.attr.value in _LOSS_PRESERVING:
            call = ctx.parent(parent)
            if isinstance(call, cst.Call) and call.func is parent:
                current = call
                continue
        return current


def _is_backward_operand(ctx: FileContext, expr: cst.CSTNode) -> bool:
    """``expr.backward()``, ``scaler.scale(expr).backward()``, ``backward(expr)``,
    ``self.manual_backward(expr)``, ``accelerator.backward(expr)``."""
    parent = ctx.parent(expr)
    if isinstance(parent, cst.Attribute) and parent.value is expr and parent.attr.value == "backward":
        return True
    if isinstance(parent, cst.Arg):
        call = ctx.parent(parent)
        if isinstance(call, cst.Call) and call.args and call.args[0] is parent:
            func = call.func
            tail = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
            if tail in _BACKWARD_FUNCTIONS:
                return True
            if tail == "scale":  # scaler.scale(loss).backward()
                return _is_backward_operand(ctx, call)
    return False


def _in_loss_class(ctx: FileContext, function: cst.FunctionDef) -> bool:
    """``forward`` of a class named like a loss (``FocalLoss``)."""
    if function.name.value != "forward":
        return False
    owner = ctx.enclosing(function, cst.ClassDef)
    return owner is not None and owner.name.value.lower().endswith(("loss", "criterion"))
