"""Multi-file projects in the shapes real training code has, through the real command line.

Each directory of ``tests/fixtures/projects`` with an ``expected.txt`` is a small project: a model
in ``models/``, a loss in ``losses.py``, a ``Trainer`` class that receives what it trains with,
a policy network whose method returns probabilities, a step built as a closure... Its
``expected.txt`` lists every finding of every rule, one per line, as ``PATH:ROW:COLUMN CODE``
followed by a fragment the message must contain (where the value came from); an empty file is a
look-alike that must stay clean. Most positive projects have a corrected twin that is clean.

Each project is copied to a temporary directory, so that neither this repository's configuration
(which excludes ``tests/fixtures``) nor a cache can change the answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli

PROJECTS = FIXTURES / "projects"
CASES = sorted(p.parent.name for p in PROJECTS.glob("*/expected.txt"))


def _expected(project: Path) -> dict[tuple[str, int, int, str], str]:
    found = {}
    for line in (project / "expected.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        place, code, fragment = (line.split(" ", 2) + [""])[:3]
        path, row, column = place.rsplit(":", 2)
        found[(path, int(row), int(column), code)] = fragment
    return found


@pytest.mark.parametrize("name", CASES)
def test_project_findings_and_where_they_come_from(name: str, tmp_path: Path) -> None:
    project = tmp_path / name
    shutil.copytree(PROJECTS / name, project)
    result = run_cli(".", "--select", "ALL", "--no-cache", "--output-format", "json", cwd=project)
    assert result.returncode in (0, 1), result.stderr
    findings = {
        (Path(f["filename"]).resolve().relative_to(project.resolve()).as_posix(), f["location"]["row"],
         f["location"]["column"], f["code"]): f["message"]
        for f in json.loads(result.stdout)
    }
    expected = _expected(project)
    assert sorted(findings) == sorted(expected)
    for key, fragment in expected.items():
        assert fragment in findings[key], f"{key}: {findings[key]!r} lacks {fragment!r}"


def test_every_positive_project_has_a_clean_twin() -> None:
    """A finding is only as good as the look-alike it leaves alone."""
    positives = [name for name in CASES if _expected(PROJECTS / name)]
    negatives = [name for name in CASES if not _expected(PROJECTS / name)]
    assert len(negatives) >= len(positives) - 1, (positives, negatives)


def test_editing_the_model_module_changes_the_cached_finding_in_the_training_script(tmp_path: Path) -> None:
    """The finding in train.py is about models/discriminator.py: the cache must follow it."""
    project = tmp_path / "gan"
    shutil.copytree(PROJECTS / "gan_logits", project)

    def tl204() -> list[int]:
        result = run_cli(".", "--select", "TL204", "--output-format", "json", cwd=project)
        return sorted(f["location"]["row"] for f in json.loads(result.stdout) if f["code"] == "TL204")

    assert tl204() == []
    (project / "losses.py").write_text("import torch.nn as nn\n\nadversarial_loss = nn.BCELoss()\n", encoding="utf-8")
    assert tl204() == []  # logits into BCELoss: wrong, but not this rule's bug
    discriminator = project / "models" / "discriminator.py"
    text = discriminator.read_text(encoding="utf-8")
    discriminator.write_text(text.replace("nn.Linear(256, 1),\n", "nn.Linear(256, 1),\n            nn.Sigmoid(),\n"), encoding="utf-8")
    assert tl204() == [21, 26, 27]
    discriminator.write_text(text, encoding="utf-8")
    assert tl204() == []


def test_a_new_call_in_the_training_script_changes_the_cached_result_of_the_helper_module(tmp_path: Path) -> None:
    """The helper's finding depends on who calls it: a training loop that starts handing it the
    loss is a change in another file, which the cached (clean) result of the helper must see, as
    must a loop that stops."""
    project = tmp_path / "meter"
    shutil.copytree(PROJECTS / "loss_meter", project)
    train = project / "train.py"
    calling = train.read_text(encoding="utf-8")

    def tl405() -> list[str]:
        result = run_cli(".", "--select", "TL405", "--output-format", "json", cwd=project)
        return sorted(Path(f["filename"]).name for f in json.loads(result.stdout))

    train.write_text(calling.replace("            meter.update_losses(losses)\n", ""), encoding="utf-8")
    assert tl405() == []
    assert tl405() == []  # from the cache
    train.write_text(calling, encoding="utf-8")
    assert tl405() == ["metrics.py"]
    train.write_text(calling.replace("            meter.update_losses(losses)\n", ""), encoding="utf-8")
    assert tl405() == []


def test_a_module_level_loss_another_module_imports_is_not_rewritten(tmp_path: Path) -> None:
    """`criterion = nn.BCELoss()` fed a local sigmoid: switching it to `BCEWithLogitsLoss` is safe
    only while no other module of the project imports it (and may call it on probabilities)."""
    rule = FIXTURES / "rules" / "TL204" / "pos_module_global_criterion.py"
    (tmp_path / "train.py").write_text(rule.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "evaluate.py").write_text(
        "from train import criterion\n\n\ndef bce(probs, y):\n    return criterion(probs, y)\n", encoding="utf-8"
    )
    original = (tmp_path / "train.py").read_text(encoding="utf-8")
    result = run_cli("--no-cache", "--fix", "--select", "TL204", "train.py", cwd=tmp_path)
    assert result.returncode == 1 and "train.py:9:12: TL204" in run_cli("--no-cache", "--select", "TL204", "--output-format", "concise", "train.py", cwd=tmp_path).stdout
    assert (tmp_path / "train.py").read_text(encoding="utf-8") == original
    (tmp_path / "evaluate.py").unlink()
    run_cli("--no-cache", "--fix", "--select", "TL204", "train.py", cwd=tmp_path)
    assert "criterion = nn.BCEWithLogitsLoss()" in (tmp_path / "train.py").read_text(encoding="utf-8")


def test_two_scripts_asking_about_one_model_module_both_depend_on_it(tmp_path: Path) -> None:
    """The engine keeps the model module parsed between the two scripts; each script's cached
    answer must still record that it read it, or editing it would leave one script stale."""
    shutil.copytree(PROJECTS / "gan_logits", tmp_path / "gan")
    project = tmp_path / "gan"
    (project / "losses.py").write_text("import torch.nn as nn\n\nadversarial_loss = nn.BCELoss()\n", encoding="utf-8")
    (project / "finetune.py").write_text((project / "train.py").read_text(encoding="utf-8"), encoding="utf-8")

    def files_with_tl204() -> list[str]:
        result = run_cli(".", "--select", "TL204", "--jobs", "1", "--output-format", "json", cwd=project)
        return sorted({Path(f["filename"]).name for f in json.loads(result.stdout)})

    assert files_with_tl204() == []
    discriminator = project / "models" / "discriminator.py"
    discriminator.write_text(
        discriminator.read_text(encoding="utf-8").replace("nn.Linear(256, 1),\n", "nn.Linear(256, 1),\n            nn.Sigmoid(),\n"),
        encoding="utf-8",
    )
    assert files_with_tl204() == ["finetune.py", "train.py"]
