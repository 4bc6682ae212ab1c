"""Factories in another module: the value-flow engine follows them through method chains,
wrappers and local names, and the project index gives the layers of the class they build."""

from __future__ import annotations

from pathlib import Path

import libcst as cst

from trainlint.analysis.model_structure import ModelStructure
from trainlint.context import FileContext
from trainlint.project import ProjectIndex, module_name_for
from trainlint.source import SourceText


def test_factory_returning_a_wrapped_moved_model_is_followed(tmp_path: Path) -> None:
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text("from .factory import build\n")
    (package / "factory.py").write_text(
        "import torch.nn as nn\n"
        "from torch.nn.parallel import DistributedDataParallel as DDP\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn = nn.LSTM(4, 4)\n\n"
        "def build():\n"
        "    model = Net().cuda()\n"
        "    return DDP(model)\n\n"
        "def build_sequential():\n"
        "    return nn.Sequential(Net(), nn.Linear(4, 2)).to('cuda')\n"
    )
    script = (
        "from models import build\n"
        "from models.factory import build_sequential, missing\n"
        "wrapped = build()\n"
        "stacked = build_sequential()\n"
        "unknown = missing()\n"
    )
    path = tmp_path / "train.py"
    ctx = FileContext("train.py", SourceText(script), cst.parse_module(script), ProjectIndex([tmp_path]),
                      module_name_for(path)[0], path)
    ctx.project.register(ctx)
    structure = ctx.get(ModelStructure)

    def assigned(name: str) -> cst.BaseExpression:
        return next(a.value for a in ctx.nodes.of(cst.Assign) if ctx.code(a.targets[0].target) == name)

    def layers(name: str) -> frozenset[str]:
        return structure.model_layers(assigned(name))

    assert "torch.nn.LSTM" in layers("wrapped")
    assert structure.built_by(assigned("wrapped")) == {"models.factory.Net"}
    assert "torch.nn.LSTM" in layers("stacked")  # an nn.Sequential holds what it was built with
    assert layers("unknown") == frozenset()
