"""Rules that follow the model across modules (TL108), through the real command line.

``tests/fixtures/projects/conv3d`` is a small project: ``models/`` holds a ``VideoNet`` whose
``nn.Conv3d`` sits two submodules deep in another module (``models/blocks.py``), built by a
factory in ``models/factory.py`` and re-exported by ``models/__init__.py``; ``train.py`` runs it
under ``torch.autocast("cuda")`` (float16). ``conv2d`` is the same project with ``nn.Conv2d``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import libcst as cst

from tests.conftest import FIXTURES, run_cli
from trainlint.analysis.model_structure import (
    CONV3D,
    RECURRENT,
    ModelStructure,
    contains,
)
from trainlint.analysis.values import Constant, Instance, ValueFlow, Values
from trainlint.config import Settings, apply_cli_overrides
from trainlint.context import FileContext
from trainlint.engine import Linter
from trainlint.project import ProjectIndex, module_name_for
from trainlint.source import SourceText

PROJECTS = FIXTURES / "projects"


def _copy(name: str, tmp_path: Path) -> Path:
    """A copy of a fixture project, so that the CLI's cache and fixes never touch the fixtures."""
    target = tmp_path / name
    shutil.copytree(PROJECTS / name, target)
    return target


def _tl108(stdout: str) -> list[tuple[str, int, int]]:
    return [
        (Path(f["filename"]).name, f["location"]["row"], f["location"]["column"])
        for f in json.loads(stdout)
        if f["code"] == "TL108"
    ]


def test_cli_reports_fp16_autocast_around_conv3d_model_of_another_module(tmp_path: Path) -> None:
    project = _copy("conv3d", tmp_path)
    result = run_cli(".", "--no-cache", "--output-format", "json", cwd=project)
    assert _tl108(result.stdout) == [("train.py", 11, 14)], result.stderr
    assert result.returncode == 1


def test_cli_is_quiet_for_the_same_project_with_conv2d(tmp_path: Path) -> None:
    project = _copy("conv2d", tmp_path)
    result = run_cli(".", "--no-cache", "--output-format", "json", cwd=project)
    assert _tl108(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_resolves_models_when_only_train_py_is_named(tmp_path: Path) -> None:
    project = _copy("conv3d", tmp_path)
    result = run_cli("train.py", "--no-cache", "--output-format", "json", "--select", "TL108", cwd=project)
    assert _tl108(result.stdout) == [("train.py", 11, 14)]


def test_cli_unsafe_fix_switches_to_bfloat16_and_is_idempotent(tmp_path: Path) -> None:
    project = _copy("conv3d", tmp_path)
    result = run_cli(".", "--no-cache", "--fix", "--unsafe-fixes", "--select", "TL108", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (project / "train.py").read_text(encoding="utf-8")
    assert 'with torch.autocast("cuda", dtype=torch.bfloat16):' in text
    again = run_cli(".", "--no-cache", "--fix", "--unsafe-fixes", "--select", "TL108", cwd=project)
    assert again.returncode == 0
    assert (project / "train.py").read_text(encoding="utf-8") == text


def test_cached_result_follows_a_change_in_the_model_module(tmp_path: Path) -> None:
    """The finding in train.py depends on models/blocks.py: editing it must invalidate the cache."""
    project = _copy("conv3d", tmp_path)
    first = run_cli(".", "--output-format", "json", "--select", "TL108", cwd=project)
    assert _tl108(first.stdout) == [("train.py", 11, 14)]
    blocks = project / "models" / "blocks.py"
    blocks.write_text(blocks.read_text(encoding="utf-8").replace("nn.Conv3d", "nn.Conv2d"), encoding="utf-8")
    second = run_cli(".", "--output-format", "json", "--select", "TL108", cwd=project)
    assert _tl108(second.stdout) == []


def test_linter_api_gives_the_same_answers() -> None:
    for name, expected in (("conv3d", [(11, 14)]), ("conv2d", [])):
        train = PROJECTS / name / "train.py"
        settings = apply_cli_overrides(Settings(), ["TL108"], None, None)
        linter = Linter(settings, ProjectIndex([PROJECTS / name]))
        findings = linter.lint(train.read_text(encoding="utf-8"), "train.py", train)
        assert [(f.start.row, f.start.column) for f in findings if f.code == "TL108"] == expected


# -- the shared analysis the rules ask (trainlint/analysis/model_structure.py) ------------------
def _structure(source: str, path: Path, roots: list[Path]) -> tuple[FileContext, ModelStructure]:
    ctx = FileContext(
        path=path.name,
        source=SourceText(source),
        module=cst.parse_module(source),
        project=ProjectIndex(roots),
        module_name=module_name_for(path)[0],
        real_path=path,
    )
    ctx.project.register(ctx)  # as the linter does: questions about this file read this text
    return ctx, ctx.get(ModelStructure)


def test_model_structure_follows_trainer_attribute_to_factory_in_other_module() -> None:
    project = PROJECTS / "conv3d"
    source = (
        "from models import build_model\n"
        "class Trainer:\n"
        "    def __init__(self, model):\n"
        "        self.model = model\n"
        "    def step(self, clips):\n"
        "        return self.model(clips)\n"
        "def main(cfg):\n"
        "    Trainer(build_model(cfg).cuda())\n"
    )
    ctx, structure = _structure(source, project / "trainer.py", [project])
    step = next(f for f in ctx.nodes.of(cst.FunctionDef) if f.name.value == "step")
    runs = structure.runs_in(step)
    assert [ctx.code(run.model) for run in runs] == ["self.model"]
    assert runs[0].built_by == {"models.video.VideoNet"}  # what the factory returns
    assert contains(runs[0].layers, CONV3D)


def test_model_structure_reads_this_files_classes_from_the_text_being_linted(tmp_path: Path) -> None:
    source = (
        "import torch.nn as nn\n"
        "class Outer(nn.Module):\n"
        "    class Cell(nn.Module):\n"
        "        def __init__(self):\n"
        "            super().__init__()\n"
        "            self.rnn = nn.GRU(8, 8)\n"
        "            self.residual_scale = 0.1\n"
        "        def forward(self, x):\n"
        "            return self(x)\n"
        "model = nn.DataParallel(Outer())\n"
    )
    path = tmp_path / "nested.py"  # not on disk: the analysis must not need it
    ctx, structure = _structure(source, path, [tmp_path])
    cell = next(c for c in ctx.nodes.of(cst.ClassDef) if c.name.value == "Cell")
    model_class = structure.class_for(cell)
    assert model_class.qualified == "nested.Outer.Cell"
    flow = ctx.get(ValueFlow)
    scale = next(n for n in ctx.nodes.of(cst.Attribute) if ctx.code(n) == "self.residual_scale")
    rnn = next(n for n in ctx.nodes.of(cst.Attribute) if ctx.code(n) == "self.rnn")
    assert flow.values(scale) == Values.of(Constant(0.1))
    assert [v.cls for v in flow.values(rnn).of_type(Instance)] == ["torch.nn.GRU"]
    assert contains(structure.layers_of("nested.Outer"), RECURRENT)
    model = next(n for n in ctx.nodes.of(cst.Name) if n.value == "model")
    assert structure.built_by(model) == {"nested.Outer"}
