"""Import-alias resolution: rules see torch APIs by qualified name whatever the import style.

trainlint resolves names with its own import table (trainlint/analysis/imports.py) instead of
LibCST's QualifiedNameProvider, which costs several times the parse. These tests pin the answers
it must give, and check them against QualifiedNameProvider where that provider has an answer.
"""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, QualifiedNameProvider

from trainlint.analysis.imports import dotted_name
from trainlint.context import FileContext
from trainlint.project import ProjectIndex
from trainlint.source import SourceText


def context(code: str, module_name: str | None = None, path: str = "train.py") -> FileContext:
    text = textwrap.dedent(code).lstrip("\n")
    return FileContext(path, SourceText(text), cst.parse_module(text), ProjectIndex([]), module_name)


def called(ctx: FileContext) -> dict[str, str | None]:
    """Each call's callee as written -> its qualified name."""
    return {ctx.code(call.func): ctx.qualified_name(call.func) for call in ctx.nodes.of(cst.Call)}


@pytest.mark.parametrize(
    "code,callee,expected",
    [
        ("import torch as t\nt.nn.functional.relu(x)\n", "t.nn.functional.relu", "torch.nn.functional.relu"),
        ("import torch\ntorch.log(x)\n", "torch.log", "torch.log"),
        (
            "from torch.cuda.amp import GradScaler as GS\nscaler = GS()\n",
            "GS",
            "torch.cuda.amp.GradScaler",
        ),
        ("from torch.cuda.amp import GradScaler\nGradScaler()\n", "GradScaler", "torch.cuda.amp.GradScaler"),
        ("from torch import nn\nnn.Conv3d(1, 2, 3)\n", "nn.Conv3d", "torch.nn.Conv3d"),
        (
            "import torch.nn.functional as F\nF.log_softmax(x, dim=-1)\n",
            "F.log_softmax",
            "torch.nn.functional.log_softmax",
        ),
        ("import torch.nn\ntorch.nn.Linear(1, 2)\n", "torch.nn.Linear", "torch.nn.Linear"),
        ("from torch.cuda import amp\namp.GradScaler()\n", "amp.GradScaler", "torch.cuda.amp.GradScaler"),
        ("import torch.nn as nn, torch.optim as optim\noptim.AdamW(p)\n", "optim.AdamW", "torch.optim.AdamW"),
        # an import inside a function binds too (imports are read wherever they are)
        ("def f(x):\n    import torch as th\n    return th.exp(x)\n", "th.exp", "torch.exp"),
        # a module-level definition resolves to the module's own name
        ("def build():\n    pass\nbuild()\n", "build", "__main__.build"),
    ],
)
def test_alias_resolves_to_the_qualified_name(code: str, callee: str, expected: str) -> None:
    assert called(context(code))[callee] == expected


@pytest.mark.parametrize(
    "code,callee",
    [
        ("softmax(x)\n", "softmax"),  # never imported
        ("model.forward(x)\n", "model.forward"),  # a local variable, not a module
        ("from torch import *\nlog_softmax(x)\n", "log_softmax"),  # star imports are not guessed
        ("import torch as t\nimport numpy as t\nt.log(x)\n", "t.log"),  # two bindings: ambiguous
        ("get_model()(x)\n", "get_model()"),  # not a dotted name
    ],
)
def test_unknown_or_ambiguous_names_resolve_to_nothing(code: str, callee: str) -> None:
    assert called(context(code))[callee] is None


def test_the_same_import_twice_is_not_ambiguous() -> None:
    ctx = context(
        """
        import torch
        if TYPE_CHECKING:
            import torch
        torch.zeros(1)
        """
    )
    assert called(ctx)["torch.zeros"] == "torch.zeros"


@pytest.mark.parametrize(
    "module_name,path,code,callee,expected",
    [
        ("pkg.sub.train", "pkg/sub/train.py", "from . import models\nmodels.Net()\n", "models.Net", "pkg.sub.models.Net"),
        ("pkg.sub.train", "pkg/sub/train.py", "from .models import Net\nNet()\n", "Net", "pkg.sub.models.Net"),
        (
            "pkg.sub.train",
            "pkg/sub/train.py",
            "from ..utils import helper as h\nh()\n",
            "h",
            "pkg.utils.helper",
        ),
        # inside a package's __init__.py, "." is the package itself
        ("pkg.sub", "pkg/sub/__init__.py", "from .models import Net\nNet()\n", "Net", "pkg.sub.models.Net"),
        ("pkg.sub.train", "pkg/sub/train.py", "def local():\n    pass\nlocal()\n", "local", "pkg.sub.train.local"),
    ],
)
def test_relative_imports_resolve_inside_their_package(
    module_name: str, path: str, code: str, callee: str, expected: str
) -> None:
    assert called(context(code, module_name, path))[callee] == expected


def test_relative_import_beyond_the_top_level_package_resolves_to_nothing() -> None:
    ctx = context("from ...far import thing\nthing()\n", "pkg.train", "pkg/train.py")
    assert called(ctx)["thing"] is None


def test_relative_import_without_a_known_module_resolves_to_nothing() -> None:
    """Text read from stdin has no module name, so `from . import x` cannot be placed."""
    assert called(context("from . import models\nmodels.Net()\n"))["models.Net"] is None


AGREEMENT_SAMPLE = """
import torch
import torch as t
import torch.nn.functional as F
from torch import nn, optim
from torch.cuda.amp import GradScaler as GS, autocast
from torch.utils.data import DataLoader


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 8, 3)
        self.fc = torch.nn.Linear(8, 2)


def train(model, loader):
    scaler = GS()
    opt = optim.AdamW(model.parameters(), lr=t.tensor(1e-3).item())
    for x, y in DataLoader(loader):
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t.log(F.softmax(x, dim=-1))
    return Net()
"""


def test_answers_agree_with_libcst_qualified_name_provider() -> None:
    """Where LibCST's provider has exactly one answer, ours is the same; where we answer, the
    provider agrees. This is the cheaper resolver's license to replace it."""
    ctx = context(AGREEMENT_SAMPLE)
    wrapper = MetadataWrapper(ctx.module, unsafe_skip_copy=True)
    provided = wrapper.resolve(QualifiedNameProvider)
    compared = 0
    for call in ctx.nodes.of(cst.Call):
        value = provided.get(call.func, set())
        theirs = {q.name for q in (value() if callable(value) else value)}
        ours = ctx.qualified_name(call.func)
        if ours is not None and not ours.startswith("__main__."):
            assert ours in theirs, ctx.code(call.func)
            compared += 1
        # Only plain dotted names: for `t.tensor(1).item` LibCST answers "torch.tensor.item",
        # which is not a torch API (it is a method of the call's result); we answer nothing.
        if len(theirs) == 1 and dotted_name(call.func) is not None:
            name = next(iter(theirs))
            if name.startswith("torch."):
                assert ours == name, ctx.code(call.func)
    assert compared >= 10
