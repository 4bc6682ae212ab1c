"""The value-flow engine: what an expression may be, across functions, classes and files.

Each test writes a small project the way real ones are laid out and asks the engine about one
expression, as a rule would (``ctx.get(ValueFlow).values(expr)``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import libcst as cst
import pytest

from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.values import (
    ClassRef,
    Collection,
    Constant,
    FunctionRef,
    Instance,
    Parameters,
    Tensor,
    ValueFlow,
    Values,
    evidence_text,
)
from trainlint.context import FileContext
from trainlint.project import ProjectIndex, module_name_for
from trainlint.source import SourceText


class Project:
    """Files on disk, linted one at a time as the linter does (the file registered with its index)."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")

    def context(self, name: str) -> FileContext:
        path = self.root / name
        text = path.read_text(encoding="utf-8")
        ctx = FileContext(name, SourceText(text), cst.parse_module(text), ProjectIndex([self.root]),
                          module_name_for(path)[0], path)
        ctx.project.register(ctx)
        return ctx

    def values(self, name: str, code: str, occurrence: int = -1) -> Values:
        """What the ``occurrence``-th expression written ``code`` in file ``name`` may be."""
        ctx = self.context(name)
        return ctx.get(ValueFlow).values(_find(ctx, code, occurrence))


def _find(ctx: FileContext, code: str, occurrence: int = -1) -> cst.BaseExpression:
    found = [
        node for kind in (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.BinaryOperation)
        for node in ctx.nodes.of(kind) if ctx.code(node) == code
    ]
    found.sort(key=lambda node: ctx.span(node)[0])
    assert found, f"no {code!r} in {ctx.path}"
    return found[occurrence]


def classes(values: Values) -> list[str]:
    return sorted(v.cls for v in values.of_type(Instance))


def tensor_kinds(values: Values) -> list[str]:
    return sorted(t.kind for t in values.of_type(Tensor))


# -- names -------------------------------------------------------------------------------------------
def test_local_names_globals_closures_and_imports(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "losses.py": """
            import torch.nn as nn
            criterion = nn.BCELoss()
        """,
        "train.py": """
            import torch.nn as nn
            from losses import criterion

            SCALE = 0.5
            loss_fn = nn.MSELoss()

            def outer():
                model = nn.LSTM(8, 8)
                def inner(x):
                    return model(x), loss_fn, SCALE, criterion
                return inner
        """,
    })
    assert classes(project.values("train.py", "model", -1)) == ["torch.nn.LSTM"]  # a closure
    assert classes(project.values("train.py", "loss_fn", -1)) == ["torch.nn.MSELoss"]  # a global read in a function
    assert project.values("train.py", "SCALE", -1) == Values.of(Constant(0.5))
    assert classes(project.values("train.py", "criterion", -1)) == ["torch.nn.BCELoss"]  # another module


def test_torch_context_managers_spelled_in_lower_case_are_classes(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch
        from torch import autocast

        def step(model, x):
            amp = torch.autocast("cuda", dtype=torch.bfloat16)
            quiet = torch.no_grad()
            other = autocast("cpu")
            with amp, quiet, other:
                return model(x)
    """})
    # An instance a later `with` enters, not the unknown result of a function call.
    assert classes(project.values("train.py", "amp", -1)) == ["torch.autocast"]
    assert classes(project.values("train.py", "quiet", -1)) == ["torch.no_grad"]
    assert classes(project.values("train.py", "other", -1)) == ["torch.autocast"]


def test_a_later_binding_in_straight_line_code_hides_the_earlier_one(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.nn as nn

        def build(flag):
            net = nn.GRU(4, 4)
            net = nn.LSTM(4, 4)
            if flag:
                head = nn.Linear(4, 2)
            else:
                head = nn.Linear(4, 3)
            return net, head
    """})
    assert classes(project.values("train.py", "net", -1)) == ["torch.nn.LSTM"]
    assert len(project.values("train.py", "head", -1)) == 2  # either branch


# -- self ---------------------------------------------------------------------------------------------
def test_self_attributes_from_every_method_and_from_a_base_in_another_module(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "base.py": """
            import torch
            class BaseTrainer:
                def __init__(self):
                    self.scaler = torch.cuda.amp.GradScaler(init_scale=1024)
        """,
        "trainer.py": """
            import torch
            from base import BaseTrainer

            class Trainer(BaseTrainer):
                def setup(self, model):
                    self.optimizer = torch.optim.AdamW(model.parameters())

                def step(self, loss):
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
        """,
    })
    assert classes(project.values("trainer.py", "self.scaler", -1)) == ["torch.cuda.amp.GradScaler"]
    assert classes(project.values("trainer.py", "self.optimizer", -1)) == ["torch.optim.AdamW"]


def test_self_attribute_from_a_constructor_parameter_default_and_call_sites(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "blocks.py": """
            import torch.nn as nn

            class Block(nn.Module):
                def __init__(self, dim, residual_scale=0.1):
                    super().__init__()
                    self.residual_scale = residual_scale

                def forward(self, x):
                    return self.residual_scale * x
        """,
        "model.py": """
            from blocks import Block
            layers = [Block(64), Block(64, residual_scale=0.2)]
        """,
    })
    values = project.values("blocks.py", "self.residual_scale", -1)
    assert sorted(v.value for v in values.of_type(Constant)) == [0.1, 0.2]
    assert not values.unknown
    texts = {e.describe() for v in values for e in v.evidence}
    assert "the default `residual_scale=0.1`" in texts
    assert any(text.startswith("passed at model.py:2") for text in texts)


def test_a_class_built_nowhere_in_the_project_keeps_its_default_as_an_external_guess(tmp_path: Path) -> None:
    project = Project(tmp_path, {"blocks.py": """
        class Block:
            def __init__(self, residual_scale=0.1):
                self.residual_scale = residual_scale
            def forward(self, x):
                return self.residual_scale * x
    """})
    values = project.values("blocks.py", "self.residual_scale", -1)
    assert values.constants() == [0.1]
    assert values.unknown and not values.untraced  # it may be built elsewhere, from a config


# -- parameters --------------------------------------------------------------------------------------
def test_parameters_from_positional_keyword_and_partial_call_sites(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "train.py": """
            import functools
            import torch
            import torch.nn as nn

            def train(model, optimizer, criterion=None):
                return model, optimizer, criterion

            def main():
                model = nn.LSTM(4, 4)
                train(model, torch.optim.SGD(model.parameters(), lr=0.1))
                run = functools.partial(train, criterion=nn.BCELoss())
                run(nn.GRU(4, 4), optimizer=torch.optim.Adam(model.parameters()))
        """,
    })
    returned = project.values("train.py", "criterion", 1)  # in the return statement
    assert classes(returned) == ["torch.nn.BCELoss"] and returned.constants() == [None]
    ctx = project.context("train.py")
    train = next(f for f in ctx.nodes.of(cst.FunctionDef) if f.name.value == "train")
    flow = ctx.get(ValueFlow)
    assert classes(flow.parameter_values(train, "model")) == ["torch.nn.GRU", "torch.nn.LSTM"]
    assert classes(flow.parameter_values(train, "optimizer")) == ["torch.optim.Adam", "torch.optim.SGD"]


def test_a_class_passed_as_an_argument_and_instantiated_inside(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.nn as nn

        class Net(nn.Module):
            def forward(self, x):
                return x.sigmoid()

        def fit(model_cls, x):
            model = model_cls()
            return model(x)

        fit(Net, None)
    """})
    assert classes(project.values("train.py", "model", -1)) == ["train.Net"]
    assert tensor_kinds(project.values("train.py", "model(x)")) == ["sigmoid"]


def test_a_function_used_as_a_value_may_be_called_with_anything(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.multiprocessing as mp
        import torch.nn as nn

        def worker(rank, model):
            return model

        mp.spawn(worker, args=(nn.LSTM(4, 4),))
        worker(0, nn.GRU(4, 4))
    """})
    values = project.values("train.py", "model", -1)
    assert classes(values) == ["torch.nn.GRU"] and values.unknown and not values.untraced


def test_parameters_across_modules_and_a_trainer_built_in_another_module(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "trainer.py": """
            class Trainer:
                def __init__(self, model, optimizer, criterion):
                    self.model = model
                    self.optimizer = optimizer
                    self.criterion = criterion

                def fit(self, loader):
                    for x, y in loader:
                        loss = self.criterion(self.model(x), y)
        """,
        "train.py": """
            import torch
            import torch.nn as nn
            from trainer import Trainer

            model = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())
            trainer = Trainer(model, torch.optim.Adam(model.parameters()), nn.BCELoss())
            trainer.fit([])
        """,
    })
    assert classes(project.values("trainer.py", "self.criterion", -1)) == ["torch.nn.BCELoss"]
    output = project.values("trainer.py", "self.model(x)")
    assert tensor_kinds(output) == ["sigmoid"]
    assert "passed at train.py:6" in evidence_text(output) or "passed at train.py:6" in evidence_text(
        project.values("trainer.py", "self.model", -1)
    )


# -- returns, containers, iteration ------------------------------------------------------------------
def test_return_summaries_tuple_unpacking_and_iteration(tmp_path: Path) -> None:
    project = Project(tmp_path, {
        "factory.py": """
            import torch
            import torch.nn as nn
            from torch.nn.parallel import DistributedDataParallel as DDP

            def build(cfg):
                model = nn.LSTM(cfg.width, cfg.width).cuda()
                optimizer = torch.optim.Adam(model.parameters())
                return DDP(model), optimizer

            def wrap(module):
                return module.to("cuda")
        """,
        "train.py": """
            import torch.nn as nn
            from factory import build, wrap

            model, optimizer = build(cfg)
            head = wrap(nn.Linear(4, 2))
            optimizers = [optimizer, {"params": model.parameters()}]
            for opt in optimizers:
                opt.step()
            for name, p in model.named_parameters():
                p.grad
        """,
    })
    assert classes(project.values("train.py", "model", -1)) == ["torch.nn.LSTM"]
    assert classes(project.values("train.py", "optimizer", -1)) == ["torch.optim.Adam"]
    assert classes(project.values("train.py", "head")) == ["torch.nn.Linear"]  # a parameter returned
    opt = project.values("train.py", "opt", -1)
    assert classes(opt) == ["torch.optim.Adam"] and len(opt.of_type(Collection)) == 1
    parameters = project.values("train.py", "p", -1).of_type(Parameters)
    assert [classes(p.owners) for p in parameters] == [["torch.nn.LSTM"]]


# -- tensors and models ------------------------------------------------------------------------------
def test_a_forward_that_ends_in_a_softmax_on_every_path(tmp_path: Path) -> None:
    project = Project(tmp_path, {"policy.py": """
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class Policy(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(4, 2)

            def forward(self, obs, greedy=False):
                logits = self.net(obs)
                if greedy:
                    return F.softmax(logits / 0.1, dim=-1)
                return F.softmax(logits, dim=-1)

            def act(self, obs, actions):
                probs = self(obs)
                picked = probs.gather(1, actions).squeeze(1)
                return torch.log(picked)

        class Mixed(nn.Module):
            def forward(self, x):
                if self.training:
                    return x
                return x.softmax(-1)
    """})
    values = project.values("policy.py", "picked", -1)
    assert tensor_kinds(values) == ["softmax", "softmax"] and values.must(lambda v: isinstance(v, Tensor))
    assert all(t.selected for t in values.of_type(Tensor))
    ctx = project.context("policy.py")
    mixed = next(c for c in ctx.nodes.of(cst.ClassDef) if c.name.value == "Mixed")
    forward = next(s for s in mixed.body.body if isinstance(s, cst.FunctionDef))
    summary = ctx.get(ValueFlow).summary(forward)
    assert summary.may(lambda v: isinstance(v, Tensor)) and not summary.must(lambda v: isinstance(v, Tensor))


def test_an_nn_sequential_ending_in_a_sigmoid_and_exp_of_log_softmax(tmp_path: Path) -> None:
    project = Project(tmp_path, {"gan.py": """
        import torch
        import torch.nn as nn

        class Discriminator(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = nn.Sequential(nn.Linear(784, 1), nn.LeakyReLU(0.2), nn.Linear(1, 1), nn.Sigmoid())

            def forward(self, img):
                return self.model(img.view(img.size(0), -1))

        D = Discriminator()
        validity = D(torch.randn(2, 784))
        p = torch.exp(torch.log_softmax(validity, dim=1))
    """})
    validity = project.values("gan.py", "validity", -1)
    (tensor,) = validity.of_type(Tensor)
    assert (tensor.kind, tensor.style) == ("sigmoid", "layer") and tensor.module is not None
    assert tensor.module.code() == "nn.Sigmoid()"
    assert tensor_kinds(project.values("gan.py", "p", -1)) == ["softmax"]


def test_a_loss_module_is_not_a_model(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.LSTM(4, 4)

        def step(model, criterion, x, y):
            return criterion(model(x), y)

        step(Net(), nn.CrossEntropyLoss(), None, None)
    """})
    ctx = project.context("train.py")
    structure = ctx.get(ModelStructure)
    step = next(f for f in ctx.nodes.of(cst.FunctionDef) if f.name.value == "step")
    runs = structure.runs_in(step)
    assert [ctx.code(run.model) for run in runs] == ["model"]
    assert runs[0].built_by == {"train.Net"}


# -- bounds -------------------------------------------------------------------------------------------
def test_recursion_cycles_and_self_reassignment_end(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.nn as nn

        def ping(x):
            return pong(x)

        def pong(x):
            return ping(x)

        class Trainer:
            def __init__(self):
                self.model = nn.LSTM(4, 4)
                self.model = self.model.cuda()
                self.scale = 0.5
                self.scale = self.scale * 2

            def step(self):
                return self.model, self.scale, ping(1)

        h = nn.GRU(4, 4)
        for _ in range(3):
            h = h.cuda()
    """})
    assert classes(project.values("train.py", "self.model", -1)) == ["torch.nn.LSTM"]  # .cuda() keeps it
    scale = project.values("train.py", "self.scale", -1)
    assert scale.unknown and scale.untraced  # 0.5, then something computed from it
    assert project.values("train.py", "ping(1)").unknown
    assert classes(project.values("train.py", "h", -1)) == ["torch.nn.GRU"]


def test_deep_chains_of_calls_stay_bounded(tmp_path: Path) -> None:
    chain = "\n".join(f"def f{i}(x):\n    return f{i + 1}(x)\n" for i in range(200))
    project = Project(tmp_path, {"deep.py": chain + "def f200(x):\n    return x\nresult = f0(1)\n"})
    assert project.values("deep.py", "f0(1)").unknown  # past the depth limit: unknown, no RecursionError


@pytest.mark.parametrize("scale,expected", [("", 65536.0), ("init_scale=1024", 1024.0), ("init_scale=2.0**10", 1024.0)])
def test_the_scale_a_grad_scaler_starts_with(tmp_path: Path, scale: str, expected: float) -> None:
    project = Project(tmp_path, {"train.py": f"""
        import torch
        scaler = torch.cuda.amp.GradScaler({scale})
        scaler.update()
    """})
    ctx = project.context("train.py")
    flow = ctx.get(ValueFlow)
    (instance,) = flow.values(_find(ctx, "scaler")).of_type(Instance)
    assert flow.scaler_init_scale(instance) == expected


def test_the_project_index_is_asked_only_where_needed(tmp_path: Path) -> None:
    """A function of a script nobody imports: no other module is read for its callers."""
    project = Project(tmp_path, {
        "train.py": "def train(model):\n    return model\n",
        "other.py": "import torch\ndef train(model):\n    return model\ntrain(torch.nn.GRU(2, 2))\n",
    })
    ctx = project.context("train.py")
    values = ctx.get(ValueFlow).values(_find(ctx, "model", -1))
    assert values.unknown and not values.items
    assert str((tmp_path / "other.py").resolve()) not in ctx.project.consulted


def test_class_refs_for_classes_of_the_project_and_of_libraries(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": "import torch.nn as nn\nclass Net(nn.Module):\n    pass\nA = Net\nB = nn.LSTM\n"})
    (net,) = project.values("train.py", "A", -1).of_type(ClassRef)
    (lstm,) = project.values("train.py", "B", -1).of_type(ClassRef)
    assert (net.qualified, net.site is not None) == ("train.Net", True)
    assert (lstm.qualified, lstm.site) == ("torch.nn.LSTM", None)


# -- attached to a graph: the code backpropagates it ---------------------------------------------


def _attached(values: Values) -> bool:
    from trainlint.analysis.values import Facts

    return values.may(lambda v: isinstance(v, Facts) and v.attached)


def test_a_backpropagated_loss_and_its_terms_are_attached(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        def fit(model, loader, optimizer, criterion, beta):
            total = 0.0
            for x, y in loader:
                out = model(x)
                ce = criterion(out, y)
                reg = out.pow(2).mean()
                loss = ce + beta * reg
                loss.backward()
                optimizer.step()
                total += loss
                total += ce
                total += reg
                total += loss.item()
                total += loss.detach()
                total += 0.9 * loss
    """})
    assert _attached(project.values("train.py", "loss", -3))
    assert evidence_text(project.values("train.py", "loss", -3).items).startswith(" (backpropagated at train.py:8")
    assert _attached(project.values("train.py", "ce", -1)) and _attached(project.values("train.py", "reg", -1))
    assert not _attached(project.values("train.py", "loss.item()"))
    assert not _attached(project.values("train.py", "loss.detach()"))
    assert _attached(project.values("train.py", "0.9 * loss"))
    assert not _attached(project.values("train.py", "out", 0))  # the model's output is no term of the loss


def test_a_false_tensor_type_test_narrows_a_name_to_what_is_not_a_tensor(tmp_path: Path) -> None:
    project = Project(tmp_path, {"meter.py": """
        import torch
        from torch.autograd import Variable

        def add(v, p, q, w):
            if isinstance(v, Variable):
                v = v.data.sum()
            elif isinstance(v, torch.Tensor):
                in_elif = v
                v = v.sum()
            else:
                in_else = v
            if not isinstance(q, (torch.Tensor, float)):
                in_not_body = q
            if isinstance(p, torch.nn.Parameter):
                p = p.detach()
            if isinstance(w, torch.Tensor):
                w = w.item()
            w = w if w else p
            return v, p, in_not_body, in_elif, in_else, w

        def fit(model, criterion, x, y):
            loss = criterion(model(x), y)
            loss.backward()
            add(loss, loss, loss, loss)
    """})
    values = lambda code, occurrence=-1: project.values("meter.py", code, occurrence)  # noqa: E731
    assert not _attached(values("v", -1))  # the fall-through of the chain: not a tensor
    assert not _attached(values("in_elif", -1))  # `isinstance(v, Variable)` was false: no tensor gets here
    assert not _attached(values("in_else", -1))  # past two false tests
    assert not _attached(values("in_not_body", -1))  # `if not isinstance(q, torch.Tensor)`: not a tensor
    assert _attached(values("p", -1))  # a tensor need not be a Parameter: the loss passes through
    assert _attached(values("w", -1))  # rebound after the test (from `p`): the test says nothing of it
    assert not _attached(values("w", -3))  # `w if w else v`: past the test that took `.item()`


def test_a_loop_that_rewrites_every_entry_of_a_dict_decides_what_its_entries_are(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        def fit(model, criterion, batches):
            for x, y in batches:
                losses = criterion(model(x), y)
                losses["loss"].backward()
                before = losses["loss"]
                for key, value in losses.items():
                    losses[key] = value.item()
                converted = losses["loss"]
                partial = criterion(model(x), y)
                partial["loss"].backward()
                for i, (key, value) in enumerate(partial.items()):
                    if key == "loss":
                        continue
                    partial[key] = value.item()
                skipped = partial["loss"]
    """})
    assert _attached(project.values("train.py", "before", -1))
    assert not _attached(project.values("train.py", "converted", -1))
    assert _attached(project.values("train.py", "skipped", -1))  # the total is skipped before the store


@pytest.mark.parametrize("backward", [
    "scaler.scale(loss).backward()", "accelerator.backward(loss)", "(loss / accum).backward()",
    "torch.autograd.backward(loss)", "self.manual_backward(loss)",
])
def test_each_spelling_of_a_backward_attaches_its_loss(tmp_path: Path, backward: str) -> None:
    project = Project(tmp_path, {"train.py": f"""
        import torch
        def step(self, criterion, scaler, accelerator, accum, x, y):
            loss = criterion(x, y)
            {backward}
            return loss
    """})
    assert _attached(project.values("train.py", "loss", -1))


def test_a_loss_returned_by_a_training_step_helper_is_attached_at_its_caller(tmp_path: Path) -> None:
    project = Project(tmp_path, {"trainer.py": """
        class Trainer:
            def _train_batch(self, model, x, y):
                loss = self.loss_func(model(x), y)
                loss.backward()
                self.optimizer.step()
                return loss

            def train(self, model, batches):
                total = 0
                for x, y in batches:
                    loss = self._train_batch(model, x, y)
                    total += loss
    """})
    assert _attached(project.values("trainer.py", "loss", -1))


def test_what_a_lightning_training_step_returns_is_attached_and_a_loss_not_backpropagated_is_not(tmp_path: Path) -> None:
    project = Project(tmp_path, {"module.py": """
        import torch.nn.functional as F
        class Net:
            def training_step(self, batch, batch_idx):
                loss = F.cross_entropy(self(batch[0]), batch[1])
                self.outputs.append(loss)
                return {"loss": loss}

            def validation_step(self, batch, batch_idx):
                loss = F.cross_entropy(self(batch[0]), batch[1])
                self.outputs.append(loss)
    """})
    assert _attached(project.values("module.py", "loss", 2))
    assert not _attached(project.values("module.py", "loss", -1))


# -- gradient hooks ------------------------------------------------------------------------------------
def test_what_a_registered_gradient_hook_receives_is_a_gradient(tmp_path: Path) -> None:
    """Autograd calls a hook with gradients: a lambda written in the registration, a method passed
    as ``self._hook``, a ``partial`` of a function of another module, a module's backward hook
    (tuples of gradients)."""
    project = Project(tmp_path, {
        "hooks.py": """
            def clip_hook(limit, grad):
                return grad.clamp(-limit, limit)
        """,
        "model.py": """
            import functools
            import torch.nn as nn
            from hooks import clip_hook

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(4, 4)
                    for p in self.parameters():
                        p.register_hook(lambda g: g * 2)
                        p.register_hook(self._hook)
                        p.register_hook(functools.partial(clip_hook, 1.0))
                    self.fc.register_full_backward_hook(self._module_hook)
                    self.callback = lambda x: x

                def _hook(self, grad):
                    return grad

                def _module_hook(self, module, grad_input, grad_output):
                    return tuple(g for g in grad_input)
        """,
    })
    assert tensor_kinds(project.values("model.py", "g", 0)) == ["grad"]
    assert tensor_kinds(project.values("model.py", "grad", 0)) == ["grad"]
    assert tensor_kinds(project.values("hooks.py", "grad", -1)) == ["grad"]
    assert project.values("hooks.py", "limit", -1).constants() == [1.0]
    (inputs,) = project.values("model.py", "grad_input", -1).of_type(Collection)
    assert inputs.homogeneous and tensor_kinds(inputs.every_item()) == ["grad"]
    assert tensor_kinds(project.values("model.py", "g", -2)) == ["grad"]  # `g for g in grad_input`
    unknown = project.values("model.py", "x", -1)  # a lambda nobody registers: unknown
    assert unknown.unknown and not unknown.items


def test_a_method_read_as_a_value_is_bound_to_its_instance(tmp_path: Path) -> None:
    project = Project(tmp_path, {"train.py": """
        import torch.nn as nn

        class Net(nn.Module):
            def scale(self, x):
                return self

            @staticmethod
            def helper(x):
                return x

        net = Net()
        f = net.scale
        g = net.helper
        out = f(1)
    """})
    (bound,) = project.values("train.py", "f", -1).of_type(FunctionRef)
    assert bound.qualified == "train.Net.scale" and len(bound.bound) == 1
    (static,) = project.values("train.py", "g", -1).of_type(FunctionRef)
    assert static.bound == ()
    assert classes(project.values("train.py", "f(1)")) == ["train.Net"]


def test_what_factories_comparisons_and_their_products_make_carries_no_gradient(tmp_path: Path) -> None:
    """``torch.arange``/``zeros``/``eye`` make leaves with no gradient; a comparison makes bools;
    joining, arithmetic on and probabilities of such tensors carry none either. What asks for a
    gradient (``requires_grad=True``) or mixes in a computed tensor is not known."""
    project = Project(tmp_path, {"train.py": """
        import torch

        def positions(q_len, k_len, scores, lengths):
            rel = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
            table = torch.cat([torch.zeros(1, k_len), torch.eye(k_len)], 0)
            mask = torch.arange(k_len)[None, :] < lengths[:, None]
            probs = torch.log_softmax(table * mask.float(), dim=-1)
            learned = torch.zeros(3, requires_grad=True)
            mixed = rel + scores
            return rel, table, mask, probs, learned, mixed
    """})

    def detached(code: str) -> bool:
        return project.values("train.py", code, 0).must(lambda v: getattr(v, "detached", False))

    assert detached("rel") and detached("table") and detached("mask") and detached("probs")
    assert not detached("learned") and not detached("mixed")


def test_a_function_called_from_too_many_modules_is_unknown_without_reading_them(tmp_path: Path) -> None:
    """Past the bound on caller modules the parameter is unknown: the summaries say so, and
    none of those modules is parsed to find out (a model zoo's shared builder, called from every
    model file, made each question about its parameters read a dozen modules for nothing)."""
    from trainlint.analysis.values.calls import _MAX_CALLER_MODULES

    callers = {
        f"model_{i}.py": f"from builder import build\n\ndef make():\n    return build({i})\n"
        for i in range(_MAX_CALLER_MODULES + 1)
    }
    ctx = Project(tmp_path, {"builder.py": "def build(width):\n    return width\n", **callers}).context("builder.py")
    function = next(iter(ctx.nodes.of(cst.FunctionDef)))
    assert ctx.get(ValueFlow).parameter_values(function, "width").unknown
    assert not ctx.project._contexts  # no caller module was parsed

    fewer = {name: text for name, text in callers.items() if name != "model_0.py"}
    ctx = Project(tmp_path / "fewer", {"builder.py": "def build(width):\n    return width\n", **fewer}).context("builder.py")
    function = next(iter(ctx.nodes.of(cst.FunctionDef)))
    widths = ctx.get(ValueFlow).parameter_values(function, "width")
    assert not widths.unknown and {c.value for c in widths.of_type(Constant)} == set(range(1, _MAX_CALLER_MODULES + 1))


def test_from_pretrained_of_a_project_subclass_of_a_library_model_builds_the_class(tmp_path: Path) -> None:
    """``Model.from_pretrained`` inherited from a library base (a Hugging Face model) builds an
    instance of the project class, named directly or picked from a table; a library class, or a
    project class with its own ``from_pretrained``, is not guessed at."""
    project = Project(tmp_path, {
        "models.py": """
            from transformers import BertModel, BertPreTrainedModel

            class Classifier(BertPreTrainedModel):
                pass

            class Loader:
                @classmethod
                def from_pretrained(cls, path):
                    return load(path)

            CLASSES = {"bert": (None, Classifier)}
            _, picked = CLASSES[kind]
            direct = Classifier.from_pretrained("bert-base-uncased")
            from_table = picked.from_pretrained("bert-base-uncased")
            library = BertModel.from_pretrained("bert-base-uncased")
            own = Loader.from_pretrained("weights.pt")
        """,
    })
    for name in ("direct", "from_table"):
        values = project.values("models.py", name)
        assert [v.cls for v in values.of_type(Instance)] == ["models.Classifier"] and not values.unknown
    assert not project.values("models.py", "library").of_type(Instance)
    assert not project.values("models.py", "own").of_type(Instance)
