"""TL401 across modules, through the real command line.

``tests/fixtures/projects/gru`` is a small speech project: ``train.py`` builds its model with
``models.build_model`` (re-exported by ``models/__init__.py``), which returns a
``SpeechRecognizer`` (``models/speech.py``) holding a ``RecurrentEncoder`` submodule
(``models/layers.py``) that holds the ``nn.GRU``. The loop in ``train.py`` never clips.
``tests/fixtures/projects/mlp`` is the same project where ``RecurrentEncoder`` is an MLP: same
names, same ``train.py``, no recurrent layer, so no finding.

Each test copies its project to a temporary directory so that neither the repository's own
configuration (which excludes ``tests/fixtures``) nor a cache can change the answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PROJECTS = Path(__file__).parent / "fixtures" / "projects"
CLIP_LINE = "            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n"


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(PROJECTS / name, target)
    return target


def _tl401(cli, *args: str, cwd: Path) -> list[dict]:
    result = cli(*args, "--select", "TL401", "--no-cache", "--output-format", "json", cwd=cwd)
    assert result.returncode in (0, 1), result.stderr
    return [f for f in json.loads(result.stdout) if f["code"] == "TL401"]


def test_gru_built_by_a_factory_in_another_module_is_reported_in_train_py(cli, tmp_path: Path) -> None:
    project = _copy("gru", tmp_path)
    findings = _tl401(cli, str(project), cwd=tmp_path)
    assert [(Path(f["filename"]).name, f["location"]["row"], f["location"]["column"]) for f in findings] == [
        ("train.py", 17, 13)
    ]
    assert "nn.GRU" in findings[0]["message"]
    assert findings[0]["fix"]["applicability"] == "unsafe"


def test_linting_only_train_py_still_reads_the_models_package(cli, tmp_path: Path) -> None:
    project = _copy("gru", tmp_path)
    findings = _tl401(cli, "train.py", cwd=project)
    assert [(f["location"]["row"], f["location"]["column"]) for f in findings] == [(17, 13)]


def test_same_project_with_an_mlp_gives_nothing(cli, tmp_path: Path) -> None:
    project = _copy("mlp", tmp_path)
    assert _tl401(cli, str(project), cwd=tmp_path) == []


@pytest.mark.parametrize("name", ["gru", "mlp"])
def test_the_two_projects_differ_only_in_the_encoder(name: str) -> None:
    """Guard the fixtures themselves: the answer must come from the layers, not the loop."""
    other = "mlp" if name == "gru" else "gru"
    for relative in ("train.py", "models/__init__.py", "models/factory.py", "models/speech.py"):
        assert (PROJECTS / name / relative).read_text() == (PROJECTS / other / relative).read_text()


def test_unsafe_fix_clips_the_optimizers_parameters_before_the_step(cli, tmp_path: Path) -> None:
    project = _copy("gru", tmp_path)
    original = (project / "train.py").read_text()
    result = cli(str(project), "--select", "TL401", "--no-cache", "--fix", "--unsafe-fixes", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    fixed = (project / "train.py").read_text()
    assert fixed == original.replace("            optimizer.step()\n", CLIP_LINE + "            optimizer.step()\n")
    assert _tl401(cli, str(project), cwd=tmp_path) == []


def test_safe_fix_alone_leaves_the_file_unchanged(cli, tmp_path: Path) -> None:
    project = _copy("gru", tmp_path)
    original = (project / "train.py").read_text()
    cli(str(project), "--select", "TL401", "--no-cache", "--fix", cwd=tmp_path)
    assert (project / "train.py").read_text() == original


def test_max_norm_comes_from_the_projects_configuration(cli, tmp_path: Path) -> None:
    project = _copy("gru", tmp_path)
    (project / "pyproject.toml").write_text("[tool.trainlint.rules.TL401]\nmax_norm = 5.0\n", encoding="utf-8")
    result = cli(".", "--select", "TL401", "--no-cache", "--fix", "--unsafe-fixes", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)\n" in (project / "train.py").read_text()
