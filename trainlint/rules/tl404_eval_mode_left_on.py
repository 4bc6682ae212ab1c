"""TL404: the model is left in ``eval()`` mode and the next training iteration runs that way."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from trainlint.analysis.model_modes import Eval, LeftInEval, ModelModes
from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.values import Instance, ValueFlow
from trainlint.analysis.values.torch_semantics import MODE_DEPENDENT_LAYERS
from trainlint.context import FileContext
from trainlint.findings import Finding, Fix
from trainlint.rule import Example, Rule


class EvalModeLeftOn(Rule):
    """## What it does
    Reports a call inside a training loop that leaves the model in eval mode (`model.eval()`
    itself, or a `validate(model)`, `evaluate()`, `generate()` that calls it, in this module or
    another) when the loop's next training iteration reaches its backward without a
    `model.train()` on the way: validation inside the epoch loop, sampling every N batches, a
    helper that switches the mode and never switches it back.

    The mode is followed through the code as it runs: across loop iterations (what the end of
    one epoch leaves is what the next starts with), into the project's functions and methods,
    through `self.model`, parameters and other modules, and into the models a wrapper object
    switches and trains (`model.val_start()` putting `self.img_enc` in eval mode, and
    `model.train_emb(batch)` running it through `self.forward_emb`). A helper called with a flag
    as `True` or `False` (`train_val_loop(is_train=True, ...)`) is followed on that side of its
    `if is_train:` tests. It is reported only for
    models with dropout or batch norm (`nn.Dropout*`, `nn.BatchNorm*`, `nn.SyncBatchNorm`,
    `nn.Transformer*` layers, torchvision's CNNs, also as the backbone of a project's model or
    picked by name with `models.__dict__[arch]`): for other models the two modes compute the
    same thing. It is
    not reported when `model.train()` runs on every path before the backward (the top of the
    iteration, the end of `validate()`), when a `train(...)` of unknown receiver may have set the
    mode back, when the model is put in eval mode before its own forward in the same iteration
    (deliberate: a frozen backbone), nor for a backward that a helper runs after its own
    `eval()` (an adversarial evaluation attacking the evaluated model: `evaluate_pgd(model)`
    computes input gradients of a model it put in eval mode itself), nor in frameworks that
    manage the mode (Lightning's `validation_step`, the HF `Trainer`, Keras-like `fit` loops of libraries).

    ## Why is this bad?
    `eval()` switches dropout off and makes batch norm normalize with its running statistics,
    and it stays that way until `train()`. Every iteration after the validation then trains
    without dropout (the regularization the model was designed with is gone) and with batch norm
    frozen at the statistics of the moment (they stop following the weights as they change). The
    loss keeps falling, so nothing looks wrong; the model ends up worse.

    The fix puts `model.train()` right after the call that left the model in eval mode, when the
    model is a name passed to that call and nothing after it in the same block runs the model.

    ## Evidence
    Measured with torch 2.13 on CPU (`benchmarks/loop_rules_evidence.py`): an MLP with batch
    norm and dropout trained on a 10-class synthetic task (SGD, 20 epochs of 40 batches) whose
    epoch ends with `validate(model)` reaches 74.6% test accuracy; the same run with
    `model.train()` at the top of each epoch reaches 80.1%.

    ## Fix safety
    Safe: the training code was written for a model in training mode, which it has for the first
    epoch; the fix gives it that mode on every iteration. Only the iterations after a validation
    change, and only where the original silently trained in eval mode. It is not offered when
    code after the call in the same block runs the model (it may rely on eval mode) or when the
    function puts other parts of the model in eval mode on purpose (a frozen backbone).
    """

    code = "TL404"
    name = "eval-mode-left-on"
    summary = "Model left in `eval()` mode for the next training iterations (no `model.train()`)"
    level = "error"
    fix_applicability = "safe"
    # A finding needs a mode switch (`.eval()`, `.train(False)`) or a call of a training helper
    # from a loop; the code that switches may be in another module, the loop is in this one.
    triggers = ("eval", "train")
    examples = [
        Example(
            code='''
            import torch
            import torch.nn as nn
            import torch.nn.functional as F

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3))
                    self.head = nn.Linear(64, 10)

                def forward(self, x):
                    return self.head(self.body(x))

            def validate(model, loader):
                model.eval()
                with torch.no_grad():
                    return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)

            def fit(model, optimizer, train_loader, val_loader, epochs):
                model.train()
                for epoch in range(epochs):
                    for x, y in train_loader:
                        optimizer.zero_grad()
                        F.cross_entropy(model(x), y).backward()
                        optimizer.step()
                    print(epoch, validate(model, val_loader))

            def main(train_loader, val_loader):
                model = Net()
                fit(model, torch.optim.SGD(model.parameters(), lr=0.1), train_loader, val_loader, epochs=10)
            ''',
            expect=[(26, 22)],
            fixed='''
            import torch
            import torch.nn as nn
            import torch.nn.functional as F

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3))
                    self.head = nn.Linear(64, 10)

                def forward(self, x):
                    return self.head(self.body(x))

            def validate(model, loader):
                model.eval()
                with torch.no_grad():
                    return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)

            def fit(model, optimizer, train_loader, val_loader, epochs):
                model.train()
                for epoch in range(epochs):
                    for x, y in train_loader:
                        optimizer.zero_grad()
                        F.cross_entropy(model(x), y).backward()
                        optimizer.step()
                    print(epoch, validate(model, val_loader))
                    model.train()

            def main(train_loader, val_loader):
                model = Net()
                fit(model, torch.optim.SGD(model.parameters(), lr=0.1), train_loader, val_loader, epochs=10)
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        def fit(optimizer, train_loader, val_loader, epochs):
            model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.3), nn.Linear(64, 10))
            for epoch in range(epochs):
                model.train()
                for x, y in train_loader:
                    optimizer.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    optimizer.step()
                model.eval()
                with torch.no_grad():
                    accuracy = sum((model(x).argmax(1) == y).sum().item() for x, y in val_loader)
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        reported: set[cst.CSTNode] = set()
        for left in ctx.get(ModelModes).left_in_eval():
            anchor = left.eval.anchor
            if anchor in reported:
                continue
            reported.add(anchor)
            yield ctx.report(self, anchor, _message(ctx, left), _train_fix(ctx, left))


def _message(ctx: FileContext, left: LeftInEval) -> str:
    anchor, origin = left.eval.anchor, left.eval.origin
    called = ctx.short_code(anchor, 50)
    where = "" if origin.node is anchor else f" (`{origin.ctx.short_code(origin.node, 50)}` at {origin.location})"
    layers = _mode_layers(ctx, left.model)
    return (
        f"`{called}` leaves the `{left.model.name}` model in eval mode{where} and the next training iteration reaches "
        f"its backward without `train()`: {layers} for the rest of training"
    )


def _mode_layers(ctx: FileContext, model: Instance) -> str:
    layers = ctx.get(ModelStructure).layers_of_value(model) & MODE_DEPENDENT_LAYERS
    names = {layer.rpartition(".")[2] for layer in layers}
    dropout = any("Dropout" in n or n.startswith("Transformer") for n in names)
    norm = any("BatchNorm" in n for n in names)
    if norm and not dropout:
        return "batch norm uses frozen running statistics"
    if dropout and not norm:
        return "dropout stays off"
    if not dropout and not norm:  # a torchvision backbone: its layers are not read
        return "its dropout and batch norm stay in eval mode"
    return "dropout stays off and batch norm uses frozen running statistics"




# -- the fix ---------------------------------------------------------------------------------------
def _train_fix(ctx: FileContext, left: LeftInEval) -> Fix | None:
    anchor = left.eval.anchor
    model = _model_expression(ctx, anchor, left.model)
    statement = _own_line(ctx, anchor)
    if model is None or statement is None or _runs_model_after(ctx, statement, left.model):
        return None
    if _other_evals_in_scope(ctx, left.eval):
        return None
    return ctx.fix([ctx.insert_after(statement, f"{model}.train()")], "safe", f"Put `{model}` back in training mode")


def _model_expression(ctx: FileContext, anchor: cst.CSTNode, model: Instance) -> str | None:
    """How the call names the model: the receiver of ``model.eval()``, or an argument
    (``validate(model, loader)``) that is exactly that model."""
    if not isinstance(anchor, cst.Call):
        return None
    flow = ctx.get(ValueFlow)
    candidates: list[cst.BaseExpression] = []
    if isinstance(anchor.func, cst.Attribute) and anchor.func.attr.value in ("eval", "train"):
        candidates.append(anchor.func.value)
    candidates += [arg.value for arg in anchor.args if not arg.star]
    for expr in candidates:
        if not isinstance(expr, (cst.Name, cst.Attribute)):
            continue
        values = flow.values(expr)
        if values.must(lambda v: isinstance(v, Instance) and v.cls == model.cls):
            return ctx.code(expr)
    return None


def _own_line(ctx: FileContext, node: cst.CSTNode) -> cst.CSTNode | None:
    """The statement line holding the call, when it is an expression or an assignment."""
    small = next((a for a in [node, *ctx.ancestors(node)] if isinstance(a, cst.BaseSmallStatement)), None)
    line = ctx.parent(small) if small is not None else None
    if not isinstance(small, (cst.Expr, cst.Assign, cst.AnnAssign, cst.AugAssign)):
        return None
    if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1:
        return None
    return line


def _runs_model_after(ctx: FileContext, statement: cst.CSTNode, model: Instance) -> bool:
    """A later statement of the same block runs the model (it may rely on eval mode)."""
    block = ctx.parent(statement)
    body = getattr(block, "body", ())
    if not isinstance(body, (list, tuple)):
        return True
    after = list(body)[[id(s) for s in body].index(id(statement)) + 1 :]
    structure = ctx.get(ModelStructure)
    return any(
        run_instance.cls == model.cls for later in after for run in structure.runs_in(later) for run_instance in run.instances
    )


def _other_evals_in_scope(ctx: FileContext, left: Eval) -> bool:
    """The function puts something in eval mode besides this call: a frozen part, maybe."""
    anchor = left.anchor
    scope = ctx.get(ValueFlow).scopes.scope_of(anchor)
    for call in ctx.nodes.of(cst.Call):
        func = call.func
        if call is anchor or not isinstance(func, cst.Attribute) or func.attr.value != "eval" or call.args:
            continue
        if ctx.get(ValueFlow).scopes.scope_of(call) is scope:
            return True
    return False
