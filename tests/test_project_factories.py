"""The project index follows factories through method chains, wrappers and local names."""

from __future__ import annotations

from pathlib import Path

from trainlint.project import ProjectIndex


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
    index = ProjectIndex([tmp_path])
    assert "torch.nn.LSTM" in index.layers_of("models.build")
    assert "torch.nn.LSTM" in index.layers_of("models.factory.build_sequential")
    assert index.layers_of("models.factory.missing") == frozenset()
