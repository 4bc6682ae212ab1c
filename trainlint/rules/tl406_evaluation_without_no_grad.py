"""TL406: an evaluation runs the model without ``torch.no_grad()``/``torch.inference_mode()``."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.model_modes import EVALUATION_NAME, ModelModes
from trainlint.analysis.model_structure import ModelRun, ModelStructure
from trainlint.analysis.regions import Regions
from trainlint.analysis.training_step import TrainingSteps
from trainlint.analysis.values import Instance, ValueFlow
from trainlint.context import FileContext, calls_within, child_nodes, literal_bool
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule

# Names of inference APIs (their callers choose no_grad), as opposed to a training script's
# `validate()`/`evaluate()`.
_INFERENCE_NAME = re.compile(r"^(.*_)?(inference|infer|predict)(_.*)?$")
# Frameworks whose models are not torch modules: their `eval()` and forward passes are theirs.
_OTHER_FRAMEWORKS = ("megengine", "jax", "flax", "tensorflow", "keras", "mindspore", "paddle", "oneflow")

# Code that needs gradients in an evaluation: saliency maps, adversarial examples, test-time
# adaptation, gradient checks.
_NEEDS_GRADIENTS = ("backward", "autograd", ".grad", "requires_grad", "zero_grad", ".step(")


@dataclass(frozen=True)
class _Evaluation:
    runs: list[cst.Call]  # forward passes of the evaluated model, in source order
    block: Sequence[cst.BaseStatement]  # the statements the evaluation is written in
    why: str  # "in `validate()`", or what follows the anchor's description
    anchor: cst.CSTNode | None = None  # the `model.eval()` the runs come after

    def describe(self, ctx: FileContext) -> str:
        """``after `model.eval()` (line 12)``: the line only for a report (positions cost a code generation)."""
        if self.anchor is None:
            return self.why
        return f"after `{ctx.short_code(self.anchor)}` (line {ctx.range(self.anchor).start.line}){self.why}"


class EvaluationWithoutNoGrad(Rule):
    """## What it does
    Reports an evaluation that runs the model with gradients enabled: the model's forward
    passes after `model.eval()` (in the same function, on every path to them, with no
    `model.train()` in between; `eval()` reached through a helper counts too), or in the loop of a
    function named for evaluation (`validate`, `evaluate`, `test_epoch`, `run_validation`...),
    when no `torch.no_grad()`/`torch.inference_mode()` is around them: not a `with` block, not a
    decorator, not in every caller.

    A function named for inference (`predict`, `sliding_window_inference`) is an API whose
    callers choose the gradient mode: its loop is not reported for the name alone (it is when the
    function puts the model in eval mode itself and runs it with gradients on, as a scikit-learn
    style `predict(X)` returning NumPy arrays does). A file that uses another framework's models
    (MegEngine, JAX, TensorFlow) and not torch is not torch's autograd: it is not reported.

    It does not report code that needs gradients there (a `backward`, `torch.autograd`, `.grad`
    or `requires_grad` in the evaluation: saliency maps, adversarial examples, test-time
    adaptation), code under `torch.set_grad_enabled(...)` with a flag decided at run time (the
    `phase == "train"` pattern), a function whose result feeds a training step (a frozen model
    computing a perceptual loss), nor framework hooks that run under no_grad already (Lightning's
    `validation_step`, fairseq's `valid_step` and the methods only such hooks call, the HF
    `Trainer`'s evaluation), nor a model's own inference method (`infer`, `predict` of a class
    with a `forward`), whose callers choose the gradient mode, nor a model whose `forward`
    turns gradients off itself on some path (`model(data, mode="inference")` where that mode runs
    under `torch.no_grad()`), nor a function that returns the forward's output as it is
    (`model.eval(); return model(x, t)`, a model-call wrapper whose callers choose the gradient
    mode), nor a model whose parameters the function froze before the call
    (`for p in model.parameters(): p.requires_grad = False`, `model.requires_grad_(False)`).

    ## Why is this bad?
    `model.eval()` changes how dropout and batch norm compute; it does not stop autograd. Every
    forward pass then records its graph and keeps every activation it needs for a backward that
    never comes: evaluation takes the memory of a training step per batch, and when outputs or
    losses are collected across batches (`preds.append(out)`, `total += loss`) each batch's graph
    stays alive until the evaluation ends, which is how a validation runs out of memory where
    training did not. It is also slower.

    The fix wraps the evaluation's statements (the loop, or the statements that run the model)
    in `with torch.no_grad():`.

    ## Evidence
    Measured with torch 2.13 on CPU (`benchmarks/loop_rules_evidence.py`): evaluating an 8-layer
    MLP (width 1,024) on 50 batches of 256 while collecting the outputs keeps the autograd graph of
    every batch; the process grows by 47.3 MB per batch without `no_grad` and by 1.0 MB per batch
    (the outputs themselves) with it.

    ## Fix safety
    Safe: inside `no_grad` every value is computed exactly as before; only the graph is not
    recorded. The evaluation has no backward and its results feed no training step (otherwise
    it is not reported), so nothing reads that graph.
    """

    code = "TL406"
    name = "evaluation-without-no-grad"
    summary = "Evaluation runs the model without `torch.no_grad()`/`torch.inference_mode()`"
    level = "warning"
    fix_applicability = "safe"
    # A finding needs `eval()` or a function named for evaluation.
    triggers = ("eval", "valid", "test", "infer", "predict")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn as nn

            def evaluate(model, loader):
                model.eval()
                correct = 0
                for images, labels in loader:
                    outputs = model(images)
                    correct += (outputs.argmax(1) == labels).sum().item()
                return correct / len(loader.dataset)

            def main(loader):
                model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
                print(evaluate(model, loader))
            ''',
            expect=[(8, 19)],
            fixed='''
            import torch
            import torch.nn as nn

            def evaluate(model, loader):
                model.eval()
                correct = 0
                with torch.no_grad():
                    for images, labels in loader:
                        outputs = model(images)
                        correct += (outputs.argmax(1) == labels).sum().item()
                return correct / len(loader.dataset)

            def main(loader):
                model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
                print(evaluate(model, loader))
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        @torch.no_grad()
        def evaluate(model, loader):
            model.eval()
            return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
        ''',
        '''
        import torch

        def saliency(model, images, labels):
            model.eval()
            images.requires_grad_(True)
            model(images).gather(1, labels[:, None]).sum().backward()
            return images.grad.abs()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for evaluation in _evaluations(ctx):
            run = evaluation.runs[0]
            message = (
                f"`{ctx.short_code(run)}` runs {evaluation.describe(ctx)}, with gradients enabled: autograd keeps every "
                "activation of each batch for a backward that never comes (and the graph of every batch whose "
                "outputs are kept); wrap the evaluation in `with torch.no_grad():`"
            )
            yield ctx.report(self, run, message, _no_grad_fix(ctx, evaluation))


def _evaluations(ctx: FileContext) -> Iterator[_Evaluation]:
    if _uses_another_framework(ctx):
        return
    structure = ctx.get(ModelStructure)
    scopes = ctx.get(ValueFlow).scopes
    reported: set[cst.CSTNode] = set()
    for scope in (ctx.module, *ctx.nodes.of(cst.FunctionDef)):
        if _method_of_a_model(ctx, scope):
            continue  # a model's own `infer`/`predict`: its callers choose the gradient mode
        if not _may_evaluate(ctx, scope):
            continue  # asking what every call of a model zoo runs is the costly part: only where it can matter
        runs = [r for r in structure.runs_in(scope, follow=0) if scopes.scope_of(r.call) is scope]
        found = (*_after_eval(ctx, scope, runs), *_named_evaluation(ctx, scope, runs))
        # Last: whether a training step uses the function's result asks for its every caller.
        if not found or not _evaluates_only(ctx, scope) or _run_by_a_framework_hook(ctx, scope):
            continue
        for evaluation in found:
            if any(run in reported for run in evaluation.runs):
                continue
            if all(_parameters_frozen_before(ctx, scope, run) for run in evaluation.runs):
                continue  # no parameter requires a gradient: autograd records nothing
            if all(_returned_as_it_is(ctx, scope, run) for run in evaluation.runs):
                continue  # a wrapper around the forward: its callers choose (and may need the graph)
            reported.update(evaluation.runs)
            yield evaluation


def _returned_as_it_is(ctx: FileContext, scope: cst.CSTNode, run: cst.CSTNode) -> bool:
    """``return model(x, labels)``, outside any loop of the function: the function wraps one
    forward pass (``model_fn = get_model_fn(model, train=False)``), and what happens to the
    output's graph is its caller's choice; a sampler calls it under ``no_grad``, a likelihood
    takes the gradient of the output with respect to the input."""
    return isinstance(ctx.parent(run), cst.Return) and not ctx.nested_in(run, (cst.For, cst.While), scope)


def _parameters_frozen_before(ctx: FileContext, scope: cst.CSTNode, run: cst.CSTNode) -> bool:
    """The model ``run`` calls had every parameter's ``requires_grad`` turned off earlier in the
    scope (``for p in net.parameters(): p.requires_grad = False``, ``net.requires_grad_(False)``),
    and not turned on again before the call: with no input requiring a gradient either, the
    forward records no graph."""
    if not isinstance(run, cst.Call):
        return False
    model = ctx.code(run.func)
    scopes = ctx.get(ValueFlow).scopes
    switches: list[tuple[int, bool]] = []
    for node in (*ctx.nodes.of(cst.For), *ctx.nodes.calls_spelled("requires_grad_")):
        switch = _requires_grad_switch(ctx, node, model)
        if switch is not None and scopes.scope_of(node) is scope:
            switches.append((ctx.order(node)[0], switch))
    before = [found for found in switches if found[0] < ctx.order(run)[0]]
    return bool(before) and not max(before)[1]  # the last switch before the call decides


def _requires_grad_switch(ctx: FileContext, node: cst.CSTNode, model: str) -> bool | None:
    """True/False for a statement that turns every parameter of ``model`` on/off; else None."""
    if isinstance(node, cst.Call):
        func = node.func
        if isinstance(func, cst.Attribute) and func.attr.value == "requires_grad_" and ctx.code(func.value) == model:
            return literal_bool(node.args[0].value) if node.args else True
        return None
    assert isinstance(node, cst.For)
    iterated = node.iter
    if not (
        isinstance(iterated, cst.Call) and isinstance(iterated.func, cst.Attribute)
        and iterated.func.attr.value == "parameters" and ctx.code(iterated.func.value) == model
        and isinstance(node.target, cst.Name) and isinstance(node.body, cst.IndentedBlock)
    ):
        return None
    for line in node.body.body:
        for statement in getattr(line, "body", ()):
            if (
                isinstance(statement, cst.Assign) and len(statement.targets) == 1
                and isinstance(target := statement.targets[0].target, cst.Attribute)
                and target.attr.value == "requires_grad" and isinstance(target.value, cst.Name)
                and target.value.value == node.target.value and literal_bool(statement.value) is not None
            ):
                return literal_bool(statement.value)
    return None


def _may_evaluate(ctx: FileContext, scope: cst.CSTNode) -> bool:
    """A function named for evaluation, or code that puts a model in eval mode (``model.eval()``,
    or a helper such as ``set_eval(model)`` that does): the only places an evaluation can be
    found. Asked before what every call of the scope runs: that is the costly question in a
    model zoo, where most functions build models and none evaluates."""
    if _named_for_evaluation(scope) and ctx.get(ModelModes).loops_in(scope):
        return True  # a loop of a function named for evaluation (see _named_evaluation)
    return bool(_switches(ctx, scope)) or ctx.get(ModelModes).puts_in_eval_within(scope)


def _named_for_evaluation(scope: cst.CSTNode) -> bool:
    """A function named for evaluation (``validate``...), not for inference: a function named
    for inference (``sliding_window_inference``, ``predict``) is an API whose callers choose the
    gradient mode (they wrap it in ``no_grad``): left to them."""
    if not isinstance(scope, cst.FunctionDef):
        return False
    name = scope.name.value.lower()
    return EVALUATION_NAME.match(name) is not None and _INFERENCE_NAME.match(name) is None


def _uses_another_framework(ctx: FileContext) -> bool:
    """The file imports MegEngine, JAX, TensorFlow... and not torch: its models are not torch's."""
    modules = {qualified.partition(".")[0] for qualified in ctx.imports.bindings.values()}
    return "torch" not in modules and any(m in modules for m in _OTHER_FRAMEWORKS)


def _after_eval(ctx: FileContext, scope: cst.CSTNode, runs: list[ModelRun]) -> Iterator[_Evaluation]:
    """The forward passes of a model after its ``eval()`` in the same function: the calls of
    the expression switched (``model.eval()`` ... ``model(x)``, ``model.forward(x)``), and runs
    of a model the mode analysis finds in eval mode on every path (switched in a helper)."""
    regions = ctx.get(Regions)
    found: dict[tuple[int, int], tuple[list[cst.Call], cst.Call, str]] = {}
    group: dict[int, tuple[int, int]] = {}  # block -> (group number, end of the group's last run)
    for switch in sorted(_switches(ctx, scope), key=lambda c: ctx.order(c)[0]):
        model = dotted_name(switch.func.value)  # type: ignore[attr-defined]
        block = _block_holding(ctx, switch)
        number, last_run = group.get(id(block), (0, -1))
        if ctx.order(switch)[0] > last_run >= 0:
            number += 1  # switches after the runs of the previous ones: another evaluation
        key = (id(block), number)
        for call in _calls_after(ctx, block, switch):
            target = call.func.value if isinstance(call.func, cst.Attribute) and call.func.attr.value == "forward" else call.func
            if dotted_name(target) == model and _dominating_eval(ctx, scope, call, model) is switch:
                entry = found.setdefault(key, ([], switch, ""))
                entry[0].append(call)
                last_run = max(last_run, ctx.order(call)[1])
        group[id(block)] = (number, last_run)
    modes = ctx.get(ModelModes)
    for run in runs:
        for instance in run.instances:
            tag = modes.eval_mode_at(run.call, instance)
            if tag is not None and isinstance(tag.anchor, cst.Call) and _same_function(ctx, tag.anchor, run.call):
                block = _block_holding(ctx, tag.anchor)
                if _holds(ctx, block, run.call) and not any(run.call in calls for calls, _, _ in found.values()):
                    why = f", which puts `{instance.name}` in eval mode"
                    found.setdefault((id(tag.anchor), -1), ([], tag.anchor, why))[0].append(run.call)
                break
    for calls, switch, why in found.values():
        calls = sorted(
            {
                c
                for c in calls
                # a forward whose result is dropped (a warm-up `model(torch.zeros(...))`) frees its graph at once
                if not _result_dropped(ctx, c) and not regions.may_compute_no_gradient(c) and not _in_lambda(ctx, c)
            },
            key=lambda c: ctx.order(c)[0],
        )
        block = _block_holding(ctx, switch)
        if calls and not _needs_gradients(ctx, switch, block):
            yield _Evaluation(calls, _statements(block), why, switch)


def _named_evaluation(ctx: FileContext, scope: cst.CSTNode, runs: list[ModelRun]) -> Iterator[_Evaluation]:
    """Runs of a known model in a loop of a function named for evaluation (``validate``...)."""
    if not _named_for_evaluation(scope):
        return
    regions = ctx.get(Regions)
    looped = [
        r.call for r in runs
        if _in_loop(ctx, r.call, scope) and not regions.may_compute_no_gradient(r.call) and not _in_lambda(ctx, r.call)
    ]
    if looped and isinstance(scope.body, cst.IndentedBlock) and not _needs_gradients(ctx, scope, scope.body):
        yield _Evaluation(looped, list(scope.body.body), f"in `{scope.name.value}()`")


def _switches(ctx: FileContext, scope: cst.CSTNode) -> list[cst.Call]:
    """``m.eval()`` / ``m.train(False)`` statements of the scope (not in a nested function)."""
    return ctx.get(_EvalSwitches).of(scope)


class _EvalSwitches:
    """The file's ``m.eval()`` statements by scope: one walk over its calls, not one per scope."""

    def __init__(self, ctx: FileContext) -> None:
        self._by_scope: dict[cst.CSTNode, list[cst.Call]] = {}
        scopes = ctx.get(ValueFlow).scopes
        for call in ctx.nodes.of(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and dotted_name(func.value) is not None and _is_switch(call, dotted_name(func.value) or "", True):
                if isinstance(ctx.parent(call), cst.Expr):
                    self._by_scope.setdefault(scopes.scope_of(call), []).append(call)

    def of(self, scope: cst.CSTNode) -> list[cst.Call]:
        return self._by_scope.get(scope, [])


def _block_holding(ctx: FileContext, node: cst.CSTNode) -> cst.CSTNode:
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, (cst.IndentedBlock, cst.Module)):
            return ancestor
    return ctx.module


def _statements(block: cst.CSTNode) -> list[cst.BaseStatement]:
    return list(getattr(block, "body", []))


def _calls_after(ctx: FileContext, block: cst.CSTNode, switch: cst.Call) -> Iterator[cst.Call]:
    position = ctx.order(switch)[1]
    for statement in _statements(block):
        if ctx.order(statement)[0] > position:
            yield from calls_within(statement)


def _dominating_eval(ctx: FileContext, scope: cst.CSTNode, run: cst.Call, model: str) -> cst.Call | None:
    """The ``m.eval()`` (or ``m.train(False)``) in a statement of a block around the run, before
    it, with no other mode switch of the same model between them."""
    position = ctx.order(run)[0]
    switch: cst.Call | None = None
    for ancestor in ctx.ancestors(run):
        if isinstance(ancestor, (cst.IndentedBlock, cst.Module)):
            for statement in _statements(ancestor):
                if ctx.order(statement)[0] >= position:
                    break
                if isinstance(statement, cst.SimpleStatementLine):
                    switch = next((c for c in calls_within(statement) if _is_switch(c, model, to_eval=True)), switch)
            if switch is not None:
                break
        if ancestor is scope:
            break
    if switch is None:
        return None
    begin = ctx.order(switch)[1]
    for call in calls_within(scope):
        if begin < ctx.order(call)[0] < position and (_is_switch(call, model, False) or _is_switch(call, model, True)):
            return None  # switched again before the run
    return switch


def _is_switch(call: cst.Call, model: str, to_eval: bool) -> bool:
    func = call.func
    if not isinstance(func, cst.Attribute) or dotted_name(func.value) != model:
        return False
    if to_eval:
        return (func.attr.value == "eval" and not call.args) or (
            func.attr.value == "train" and len(call.args) == 1 and isinstance(call.args[0].value, cst.Name)
            and call.args[0].value.value == "False"
        )
    return func.attr.value == "train" and not (
        len(call.args) == 1 and isinstance(call.args[0].value, cst.Name) and call.args[0].value.value == "False"
    )


# -- when it is not an evaluation -----------------------------------------------------------------
def _run_by_a_framework_hook(ctx: FileContext, scope: cst.CSTNode) -> bool:
    """A method that is a framework's evaluation hook (``valid_step``, ``validation_step``,
    ``test_step``, ``predict_step``), or that only such hooks call (fairseq's
    ``valid_step_with_inference``): fairseq's, Lightning's and the HF ``Trainer``'s loops run them
    under ``no_grad`` already."""
    if not isinstance(scope, cst.FunctionDef):
        return False
    flow = ctx.get(ValueFlow)
    if flow.enclosing_class(scope) is None:
        return False
    if _FRAMEWORK_HOOK.match(scope.name.value):
        return True
    sites, _ = flow.call_sites(scope)
    callers = [site.flow.scopes.function_of(site.call) for site in sites]
    return bool(callers) and all(c is not None and _FRAMEWORK_HOOK.match(c.name.value) for c in callers)


_FRAMEWORK_HOOK = re.compile(r"^(valid|validation|test|predict|eval|evaluation)_step$")


def _method_of_a_model(ctx: FileContext, scope: cst.CSTNode) -> bool:
    """A method of a class with a ``forward`` (Tacotron2's ``Decoder.infer``): the model's API,
    run by callers that choose ``no_grad`` themselves (an inference wrapper, a sampling loop)."""
    if not isinstance(scope, cst.FunctionDef):
        return False
    owner = ctx.get(ValueFlow).enclosing_class(scope)
    return owner is not None and any(
        isinstance(s, cst.FunctionDef) and s.name.value == "forward" for s in owner.body.body
    )


def _evaluates_only(ctx: FileContext, scope: cst.CSTNode) -> bool:
    """The scope's results feed no training: a function not called, in value position, from a
    training step (a frozen model's forward inside a loss), unless it is named for evaluation."""
    if not isinstance(scope, cst.FunctionDef) or EVALUATION_NAME.match(scope.name.value.lower()):
        return True
    if scope.name.value in ("forward", "__call__", "training_step"):
        return False
    sites, _ = ctx.get(ValueFlow).call_sites(scope)
    for site in sites:
        caller = site.flow.ctx
        function = site.flow.scopes.function_of(site.call)
        in_training = any(step.function is function for step in caller.get(TrainingSteps).all_steps())
        if in_training and not isinstance(caller.parent(site.call), cst.Expr):
            return False
    return True


def _needs_gradients(ctx: FileContext, start: cst.CSTNode, block: cst.CSTNode) -> bool:
    """A word of gradient use (``backward``, ``.grad``, ``autograd``...) in the block from
    ``start`` on: the evaluation computes gradients on purpose, or trains."""
    begin = ctx.span(start)[0] if start is not block else ctx.span(block)[0]
    text = ctx.source.text[begin : ctx.span(block)[1]]
    return any(word in text for word in _NEEDS_GRADIENTS)


def _result_dropped(ctx: FileContext, call: cst.Call) -> bool:
    """``model(x)`` as a statement of its own: nothing keeps its output, or its graph."""
    return isinstance(ctx.parent(call), cst.Expr)


def _in_loop(ctx: FileContext, node: cst.CSTNode, scope: cst.CSTNode) -> bool:
    return ctx.nested_in(node, (cst.For, cst.While, cst.ListComp, cst.GeneratorExp), scope)


def _in_lambda(ctx: FileContext, node: cst.CSTNode) -> bool:
    return ctx.enclosing(node, cst.Lambda) is not None


def _same_function(ctx: FileContext, a: cst.CSTNode, b: cst.CSTNode) -> bool:
    scopes = ctx.get(ValueFlow).scopes
    return ctx.nodes.holds(a) and scopes.scope_of(a) is scopes.scope_of(b)


def _block_of(ctx: FileContext, node: cst.CSTNode) -> Sequence[cst.BaseStatement]:
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, (cst.IndentedBlock, cst.Module)):
            return list(ancestor.body)
    return []




# -- the fix ---------------------------------------------------------------------------------------
def _no_grad_fix(ctx: FileContext, evaluation: _Evaluation) -> Fix | None:
    """``with torch.no_grad():`` around the statements of the block that hold the runs."""
    spelled = _no_grad_spelling(ctx)
    holding = [s for s in evaluation.block if any(_holds(ctx, s, run) for run in evaluation.runs)]
    if spelled is None or not holding or len(holding) != len({id(s) for s in holding}):
        return None
    if any(not any(_holds(ctx, s, run) for s in holding) for run in evaluation.runs):
        return None  # a run outside this block (in a nested function): not one region
    body = list(evaluation.block)
    first, last = body.index(holding[0]), body.index(holding[-1])
    wrapped = body[first : last + 1]
    indent = ctx.statement_indent(wrapped[0])
    if indent is None or any(_has_multiline_string(s) for s in wrapped):
        return None
    statements = [wrapped[0].with_changes(leading_lines=[]), *wrapped[1:]]
    block = cst.With(
        items=[cst.WithItem(cst.parse_expression(f"{spelled}()"))],
        body=cst.IndentedBlock(body=statements),
    )
    code = ctx.module.code_for_node(block).rstrip("\r\n")
    text = "\n".join((indent + line) if line.strip() else line for line in code.split("\n"))
    start = ctx.span(wrapped[0])[0] - len(indent)
    end = ctx.span(wrapped[-1])[1]
    edit = Edit(start, end, text.replace("\n", ctx.source.newline))
    return ctx.fix([edit], "safe", "Wrap the evaluation in `with torch.no_grad():`")


def _holds(ctx: FileContext, statement: cst.CSTNode, node: cst.CSTNode) -> bool:
    return statement is node or any(a is statement for a in ctx.ancestors(node))


def _has_multiline_string(node: cst.CSTNode) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (cst.SimpleString, cst.FormattedString)) and "\n" in cst.Module([]).code_for_node(current):
            return True
        stack.extend(child_nodes(current))
    return False


def _no_grad_spelling(ctx: FileContext) -> str | None:
    """``torch.no_grad`` through the file's name for torch, or ``no_grad`` imported by name."""
    bindings = ctx.imports.bindings
    for local, target in sorted(bindings.items()):
        if target == "torch.no_grad":
            return local
    names = sorted(local for local, target in bindings.items() if target == "torch")
    if names:
        return f"{'torch' if 'torch' in names else names[0]}.no_grad"
    return None


__all__ = ["EvaluationWithoutNoGrad", "Instance"]
