"""TL401: an optimizer step with no gradient clipping where gradients are known to explode."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.loop_facts import callees
from trainlint.analysis.model_structure import RECURRENT, ModelStructure
from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    CLIP_FUNCTIONS,
    STEP_KINDS,
    EventKind,
    OptimizerInfo,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    runs_a_closure,
    unscale_insertion,
)
from trainlint.analysis.values import Collection, Instance, Scopes, Value, ValueFlow, Values, evidence_text
from trainlint.context import FileContext, calls_within, child_nodes
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule

# How the file may already spell the clip function: the function itself when imported, else the
# full path from the file's name for torch, else from its alias of a submodule.
_CLIP_SPELLINGS = (
    ("torch.nn.utils.clip_grad_norm_", ""),
    ("torch.nn.utils.clip_grad.clip_grad_norm_", ""),
    ("torch", ".nn.utils.clip_grad_norm_"),
    ("torch.nn", ".utils.clip_grad_norm_"),
    ("torch.nn.utils", ".clip_grad_norm_"),
)


class UnclippedExplodingStep(Rule):
    """## What it does
    Reports an optimizer step (`optimizer.step()`, `scaler.step(optimizer)`) with no gradient
    clipping on any path of the training step, when the model that optimizer trains contains an
    `nn.RNN`, `nn.LSTM`, `nn.GRU` (or their cells) or an `nn.Transformer*` layer, found through
    the project: the model's class may be defined in another module, built by a factory
    function, or nested in submodules. It also reports a plain `optimizer.step()` (no GradScaler,
    whose inf gradients are routine overflow signals) that already checks its gradients for NaN/Inf
    without clipping them. A plain CNN loop without clipping is not reported, and
    neither is a step that clips on some path (`if args.max_grad_norm > 0:`), through a helper
    (also a method of the model defined in another module, `model.do_gradient_ops()`), or by
    skipping the update when the gradient norm passes a threshold.

    The model is followed wherever it is built: passed to a `Trainer`, returned by a factory in
    another module, unpacked from `model, optimizer = build(cfg)`. Its layers count only when
    every module a part of the optimizer's parameters may belong to has them; a part whose owner
    is unknown counts for nothing.

    ## Why is this bad?
    Backpropagation through time multiplies the gradient by the recurrent Jacobian once per time
    step, so its size grows like the largest singular value of the recurrent weight to the power
    of the sequence length: with a singular value of 1.1, the gradient reaching the first of 100
    steps is 1.1^100 ≈ 13,781 times the one at the last step; over 500 steps it is about 5e20.
    Deep attention stacks show the same spikes. One such batch moves the weights thousands of
    times further than a normal step, and the loss jumps to NaN or never recovers. Clipping the
    global norm to about 1 bounds every update while leaving normal steps unchanged. A step that
    tests its gradients for NaN/Inf already expects them to blow up, yet a large finite gradient
    passes the test and goes straight into the update.

    The fix inserts `torch.nn.utils.clip_grad_norm_(<params>, max_norm=1.0)` right before the
    step, with `<params>` taken from how the optimizer was built, and `scaler.unscale_(optimizer)`
    before it when a GradScaler is used and nothing unscales yet (clipping scaled gradients would
    clip at 1/65,536 of the intended norm). It is unsafe: it changes every update whose gradient
    norm exceeds `max_norm`. No fix is offered when the optimizer's parameters cannot be
    determined (parameter groups, an optimizer passed in as an argument, a name that may hold a
    spent generator).

    ## Evidence
    Measured with torch 2.13 on CPU: through `h[t+1] = W @ h[t]` with `W = 1.1 * Q` (`Q` a random
    32x32 orthogonal matrix), the gradient of `h[100].sum()` with respect to `h[0]` has 13,781
    times the norm of the gradient with respect to `h[100]`, exactly 1.1^100.

    ## Fix safety
    Unsafe: it adds clipping that was not there, at a `max_norm` the fix has to choose (option
    `max_norm`): every step whose gradient norm exceeds it changes. Review the threshold.
    """

    code = "TL401"
    name = "unclipped-exploding-gradients"
    summary = "Optimizer step without gradient clipping on a recurrent/transformer model"
    level = "warning"
    fix_applicability = "unsafe"
    triggers = ("step(",)
    default_options = {"max_norm": 1.0}
    option_bounds = {"max_norm": (0.0, float("inf"))}
    examples = [
        Example(
            code='''
            import torch
            from torch import nn

            class CharRNN(nn.Module):
                def __init__(self, vocab, hidden=512):
                    super().__init__()
                    self.embed = nn.Embedding(vocab, hidden)
                    self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True)
                    self.head = nn.Linear(hidden, vocab)

                def forward(self, tokens):
                    out, _ = self.rnn(self.embed(tokens))
                    return self.head(out)

            def train(loader, vocab):
                model = CharRNN(vocab)
                optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
                for tokens, targets in loader:
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
                    loss.backward()
                    optimizer.step()
            ''',
            expect=[(22, 9)],
            fixed='''
            import torch
            from torch import nn

            class CharRNN(nn.Module):
                def __init__(self, vocab, hidden=512):
                    super().__init__()
                    self.embed = nn.Embedding(vocab, hidden)
                    self.rnn = nn.GRU(hidden, hidden, num_layers=2, batch_first=True)
                    self.head = nn.Linear(hidden, vocab)

                def forward(self, tokens):
                    out, _ = self.rnn(self.embed(tokens))
                    return self.head(out)

            def train(loader, vocab):
                model = CharRNN(vocab)
                optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
                for tokens, targets in loader:
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                    optimizer.step()
            ''',
            unsafe=True,
        ),
        Example(
            code='''
            import torch
            from models import build_model

            def train(cfg, loader):
                model = build_model(cfg)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                scaler = torch.cuda.amp.GradScaler()
                for x, y in loader:
                    optimizer.zero_grad()
                    with torch.autocast("cuda"):
                        loss = model(x, y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            expect=[(13, 9)],
            fixed='''
            import torch
            from models import build_model

            def train(cfg, loader):
                model = build_model(cfg)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                scaler = torch.cuda.amp.GradScaler()
                for x, y in loader:
                    optimizer.zero_grad()
                    with torch.autocast("cuda"):
                        loss = model(x, y)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                    scaler.step(optimizer)
                    scaler.update()
            ''',
            unsafe=True,
            files={
                "models/__init__.py": "from .factory import build_model\n",
                "models/factory.py": (
                    "from .lm import TransformerLM\n\n\n"
                    "def build_model(cfg):\n    return TransformerLM(cfg.vocab)\n"
                ),
                "models/lm.py": (
                    "from torch import nn\n\n\n"
                    "class TransformerLM(nn.Module):\n"
                    "    def __init__(self, vocab):\n"
                    "        super().__init__()\n"
                    "        self.embed = nn.Embedding(vocab, 256)\n"
                    "        self.blocks = nn.TransformerEncoder(nn.TransformerEncoderLayer(256, 8), 6)\n"
                ),
            },
        ),
    ]
    valid_examples = [
        '''
        import torch
        import torchvision

        def train(loader):
            model = torchvision.models.resnet18(num_classes=10)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for images, labels in loader:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        reported: set[cst.CSTNode] = set()
        clipping = _functions_that_clip(ctx)
        for step in ctx.get(TrainingSteps).all_steps():
            if _may_clip_unseen(ctx, step, clipping) or _skips_large_gradients(step):
                continue
            for event in step.of_kind(*STEP_KINDS):
                if (
                    event.anchor in reported
                    or event.scaler in step.uncertain_scalers
                    or runs_a_closure(event)  # gradients are recomputed inside: a clip before it acts on nothing
                    or _clipped(ctx, step, event)
                ):
                    continue
                reason = _why_it_explodes(ctx, step, event)
                if reason is None:
                    continue
                reported.add(event.anchor)
                message = f"`{_short(ctx, event.anchor)}` has no gradient clipping on any path although {reason}"
                yield ctx.report(self, event.anchor, message, self._clip_fix(ctx, step, event))

    def _clip_fix(self, ctx: FileContext, step: TrainingStep, event: StepEvent) -> Fix | None:
        params = _reusable_params(ctx, step, event)
        clip_function = _clip_function(ctx)
        if params is None or clip_function is None:
            return None
        lines = [f"{clip_function}({params}, max_norm={self.options['max_norm']!r})"]
        if event.kind is EventKind.SCALER_STEP:
            unscale = _unscale_needed(step, event)
            if unscale is False:
                return None
            if unscale:
                lines.insert(0, unscale)
        return ctx.fix(
            [ctx.insert_before(event.statement, "\n".join(lines))],
            "unsafe",
            "Clip the gradient norm before the step",
        )


# -- why the step needs clipping ---------------------------------------------------------------------
def _why_it_explodes(ctx: FileContext, step: TrainingStep, event: StepEvent) -> str | None:
    optimizer = step.optimizers.get(event.optimizer or "")
    layers = _trained_layers(ctx, step, optimizer)
    recurrent = sorted(layer for layer in layers if layer in RECURRENT)
    if recurrent:
        layer = recurrent[0].replace("torch.nn.", "nn.")
        return (
            f"the model it trains{_model_origin(ctx, optimizer)} contains `{layer}`, whose gradients can grow "
            "exponentially with sequence length and depth"
        )
    # Under a GradScaler inf gradients are the scaler's routine overflow signal, not a sign that
    # the gradients explode: only a plain step's NaN/Inf check says so.
    if event.kind is EventKind.OPT_STEP and _checks_gradient_finiteness(ctx, step, event):
        return "the step checks its gradients for NaN/Inf: a large finite gradient passes that check"
    return None


def _model_origin(ctx: FileContext, optimizer: OptimizerInfo | None) -> str:
    """`` (`Seq2Seq`, passed at train.py:15)`` when the model was built or passed elsewhere."""
    for module in _trained_modules(ctx, optimizer):
        if isinstance(module, Instance) and (module.evidence or (module.site is not None and module.site.ctx is not ctx)):
            where = evidence_text([module]) or f" (built at {module.site.location})"  # type: ignore[union-attr]
            return f" (`{module.name}`, {where[2:]}"
    return ""


def _trained_layers(ctx: FileContext, step: TrainingStep, optimizer: OptimizerInfo | None) -> frozenset[str]:
    """Layers of the model the optimizer updates: the modules whose parameters it was built
    with; when that is unknown, the one model the step runs, if it runs only one."""
    structure = ctx.get(ModelStructure)
    if optimizer is not None and optimizer.params_values is not None:
        return structure.trained_layers(optimizer.params_values)
    if len(step.optimizers) > 1:
        return frozenset()
    runs = structure.runs_in(step.function)
    models = {instance.cls for run in runs for instance in run.instances}
    return runs[0].common_layers if len(models) == 1 else frozenset()


def _trained_modules(ctx: FileContext, optimizer: OptimizerInfo | None) -> list[Value]:
    if optimizer is None or optimizer.params_values is None:
        return []
    return ctx.get(ModelStructure).modules_in(optimizer.params_values).items  # type: ignore[return-value]


def _checks_gradient_finiteness(ctx: FileContext, step: TrainingStep, event: StepEvent) -> bool:
    """True when, between the last backward and this step, the step tests its gradients (or a
    value computed from them, such as their norm) with isnan/isinf/isfinite."""
    for earlier in _since_last_backward(step, event):
        guard = earlier.guard
        if earlier.kind is EventKind.SKIP and guard is not None and guard.checks_finiteness and guard.reads_grads:
            return True
        if earlier.kind is EventKind.GRAD_INSPECT and earlier.tests_finiteness:
            return True
    return False


def _since_last_backward(step: TrainingStep, event: StepEvent) -> list[StepEvent]:
    window: list[StepEvent] = []
    for earlier in reversed(step.events[: step.index(event)]):
        if earlier.kind in BACKWARD_KINDS:
            break
        window.append(earlier)
    return window[::-1]


# -- clipping already there --------------------------------------------------------------------------
def _clipped(ctx: FileContext, step: TrainingStep, event: StepEvent) -> bool:
    """True when some path of the step clips the gradients of the parameters this step updates."""
    structure = ctx.get(ModelStructure)
    owners = {_class_of(m) for m in _trained_modules(ctx, step.optimizers.get(event.optimizer or ""))}
    for clip in step.of_kind(EventKind.CLIP):
        if clip.optimizer is not None and event.optimizer is not None:
            if clip.optimizer == event.optimizer:
                return True
            continue
        clipped = set()
        if clip.target is not None:
            clipped = {_class_of(m) for m in structure.modules_in(ctx.get(ValueFlow).values(clip.target))}
        if len(step.optimizers) <= 1 or not owners or not clipped or clipped & owners:
            return True
    return False


def _class_of(module: Value) -> str:
    return module.cls if isinstance(module, Instance) else repr(module)


def _skips_large_gradients(step: TrainingStep) -> bool:
    """``if not torch.isfinite(norm) or norm > max_norm: continue`` bounds every update by
    skipping the large ones: a clip by other means."""
    for skip in step.of_kind(EventKind.SKIP):
        guard = skip.guard
        if guard is not None and guard.reads_grads and guard.test is not None:
            if any(isinstance(node, cst.Comparison) and _orders(node) for node in _walk(guard.test)):
                return True
    return False


def _orders(comparison: cst.Comparison) -> bool:
    ordering = (cst.GreaterThan, cst.GreaterThanEqual, cst.LessThan, cst.LessThanEqual)
    return any(isinstance(target.operator, ordering) for target in comparison.comparisons)


def _functions_that_clip(ctx: FileContext) -> set[cst.CSTNode]:
    """Functions with a call named like a clip (``clip_gradient(optimizer, 5)``,
    ``accelerator.clip_grad_norm_``, ``self.clip_gradients``) or a clamp of ``.grad``: clipping the
    training-step analysis does not recognise. A step in (or inlining) one of them stays quiet."""
    found: set[cst.CSTNode] = set()
    for call in ctx.nodes.of(cst.Call):
        func = call.func
        if ctx.qualified_name(func) in CLIP_FUNCTIONS:
            continue  # torch's own clips are CLIP events, matched to their optimizer
        tail = _callee_name(call)
        # ``x.clip(0, 1)`` / ``torch.clip`` clip values, not gradients; a clamp counts on ``.grad``
        named_like_a_clip = "clip" in tail.lower() and tail not in ("clip", "clip_")
        clamps_grad = tail in ("clamp", "clamp_", "clip", "clip_") and isinstance(func, cst.Attribute) and (
            ".grad" in ctx.code(func.value)
        )
        if named_like_a_clip or clamps_grad:
            # Top-level script code is the module's step: its clips belong to the module.
            found.add(ctx.enclosing(call, cst.FunctionDef) or ctx.module)
    return found


def _may_clip_unseen(ctx: FileContext, step: TrainingStep, clipping: set[cst.CSTNode]) -> bool:
    """The step, or a helper it inlines, calls something named like a clip; or it calls a
    function or method of another module of the project that clips (``model.do_gradient_ops()``,
    a model's own method that calls ``clip_grad_norm_``): the step analysis does not inline
    those, so it cannot tell on which paths they clip."""
    if step.function in clipping or any(helper in clipping for helper in step.helpers):
        return True
    return any(callees(ctx, call, _CLIP_WORDS) for call in calls_within(step.function))


# How code spells a clip of gradients (the project's text index of calls finds who calls one)
_CLIP_WORDS = tuple(sorted({f"{name.rpartition('.')[2]}(".encode() for name in CLIP_FUNCTIONS}))


# -- the fix ---------------------------------------------------------------------------------------
def _reusable_params(ctx: FileContext, step: TrainingStep, event: StepEvent) -> str | None:
    """The optimizer's parameters as code that gives them again at the step: an expression that
    builds them afresh (``model.parameters()``), or a name that holds a list; never parameter
    groups, a name that may hold a spent generator, or names not bound where the step runs."""
    optimizer = step.optimizers.get(event.optimizer or "")
    code = optimizer.params_code if optimizer is not None else None
    expr = optimizer.params if optimizer is not None else None
    if expr is None or isinstance(expr, cst.Attribute):
        return None
    if isinstance(expr, cst.Name):
        if not _is_collection(ctx.get(ValueFlow).values(expr)):
            return None
    elif any(isinstance(node, (cst.Dict, cst.DictComp)) for node in _walk(expr)):
        return None
    if not all(_visible_at_step(ctx, step, name) for name in _free_names(expr)):
        return None
    return code


def _is_collection(values: Values) -> bool:
    """A list or tuple of tensors that can be iterated again (``list(m.parameters())``, ``[w, b]``,
    their sums), not a generator (``m.parameters()``) nor parameter groups."""
    return values.must(
        lambda v: isinstance(v, Collection) and v.kind != "dict" and not any(
            isinstance(item, Collection) and item.kind == "dict" for part in v.items for item in part
        )
    )


def _free_names(expr: cst.BaseExpression) -> set[str]:
    """Names an expression reads from its scope: not attribute or keyword names, not lambda
    parameters or comprehension variables."""
    bound: set[str] = set()
    read: set[str] = set()
    stack: list[cst.CSTNode] = [expr]
    while stack:
        node = stack.pop()
        children: Iterable[cst.CSTNode] = child_nodes(node)
        if isinstance(node, cst.Name):
            read.add(node.value)
        elif isinstance(node, cst.Attribute):
            children = [node.value]
        elif isinstance(node, cst.Arg):
            children = [node.value]
        elif isinstance(node, cst.Lambda):
            bound |= {p.name.value for p in node.params.params}
            children = [node.body]
        elif isinstance(node, cst.CompFor):
            bound |= {n.value for n in _walk(node.target) if isinstance(n, cst.Name)}
        stack.extend(children)
    return read - bound


def _visible_at_step(ctx: FileContext, step: TrainingStep, name: str) -> bool:
    if hasattr(builtins, name) or name in ctx.imports.bindings:
        return True
    if name in ctx.get(Scopes).records(step.function):
        return True
    return name in _module_level_names(ctx)


def _module_level_names(ctx: FileContext) -> set[str]:
    names: set[str] = set()
    for statement in ctx.module.body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Assign):
                    for target in small.targets:
                        names |= {n.value for n in _walk(target.target) if isinstance(n, cst.Name)}
                elif isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                    names.add(small.target.value)
    return names


def _unscale_needed(step: TrainingStep, event: StepEvent) -> str | bool | None:
    """``scaler.unscale_(opt)`` to insert before the clip; None when the step already unscales
    since its backward; False when inserting one is not safe (a scaler of unknown origin, or
    an update that some path skips: a second unscale_ would raise)."""
    scaler, optimizer = event.scaler, event.optimizer
    if scaler is None or optimizer is None or scaler in step.uncertain_scalers:
        return False
    for earlier in _since_last_backward(step, event):
        if earlier.kind is EventKind.UNSCALE and earlier.optimizer == optimizer:
            return None
    if unscale_insertion(step, event, scaler, optimizer) != []:
        return False
    return f"{scaler}.unscale_({optimizer})"


def _clip_function(ctx: FileContext) -> str | None:
    """``clip_grad_norm_`` spelled with a name this file imports at its top level."""
    top_level = _top_level_import_names(ctx)
    for qualified, suffix in _CLIP_SPELLINGS:
        for local, bound in ctx.imports.bindings.items():
            if bound == qualified and local in top_level:
                return local + suffix
    return None


def _top_level_import_names(ctx: FileContext) -> set[str]:
    names: set[str] = set()
    for node in (*ctx.nodes.of(cst.Import), *ctx.nodes.of(cst.ImportFrom)):
        if ctx.enclosing(node, cst.FunctionDef) is not None or ctx.enclosing(node, cst.ClassDef) is not None:
            continue
        if isinstance(node.names, cst.ImportStar):
            continue
        for alias in node.names:
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                names.add(alias.asname.name.value)
            else:
                full = dotted_name(alias.name)
                if full is not None:
                    names.add(full.split(".")[0] if isinstance(node, cst.Import) else full)
    return names


# -- small helpers -----------------------------------------------------------------------------------
def _walk(node: cst.CSTNode | None) -> Iterator[cst.CSTNode]:
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        yield current
        stack.extend(child_nodes(current))


def _inside(ctx: FileContext, node: cst.CSTNode, outer: cst.CSTNode) -> bool:
    return any(ancestor is outer for ancestor in ctx.ancestors(node))


def _short(ctx: FileContext, call: cst.CSTNode) -> str:
    code = ctx.code(call)
    if "\n" in code and isinstance(call, cst.Call):
        return f"{ctx.code(call.func)}(...)"
    return code


def _callee_name(call: cst.Call) -> str:
    """``clip_gradient`` for ``utils.clip_gradient(...)`` or ``clip_gradient(...)``; else ""."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    return func.value if isinstance(func, cst.Name) else ""
