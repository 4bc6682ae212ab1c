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

from tests.conftest import FIXTURES, run_cli
from trainlint.config import Settings, apply_cli_overrides
from trainlint.engine import Linter
from trainlint.project import ProjectIndex

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
