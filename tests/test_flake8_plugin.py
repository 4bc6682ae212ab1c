"""The flake8 plugin, run through flake8's real command line on fixtures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli

pytest.importorskip("flake8")

FLAKE8_FIXTURES = FIXTURES / "flake8"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The fixtures in a directory of their own: no flake8 or trainlint configuration around."""
    for source in FLAKE8_FIXTURES.glob("*.py"):
        shutil.copyfile(source, tmp_path / source.name)
    return tmp_path


def flake8(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def reported(result: subprocess.CompletedProcess[str]) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in result.stdout.splitlines():
        path, row, column, rest = line.split(":", 3)
        rows.append((path.removeprefix("./"), int(row), int(column), rest.split()[0]))
    return rows


def test_flake8_reports_trainlints_findings_at_the_same_positions(project: Path) -> None:
    before = {p.name: p.read_bytes() for p in project.glob("*.py")}
    result = flake8(project, "--select", "TL", ".")
    assert {p.name: p.read_bytes() for p in project.glob("*.py")} == before  # it never fixes
    assert result.returncode == 1, result.stderr
    assert reported(result) == [
        ("losses.py", 8, 17, "TL202"),
        ("losses.py", 14, 18, "TL202"),  # `# noqa: E501` does not silence TL202
        ("video_train.py", 23, 18, "TL108"),
    ]
    assert "./losses.py:8:17: TL202 `log` of a `softmax` output is -inf" in result.stdout
    # The same 1-based columns as trainlint's own report (which knows no flake8 noqa rules).
    own = json.loads(run_cli("--no-cache", "--output-format", "json", "--select", "TL108,TL202", ".", cwd=project).stdout)
    own_positions = {(Path(r["filename"]).name, r["location"]["row"], r["location"]["column"], r["code"]) for r in own}
    assert set(reported(result)) <= own_positions


def test_flake8_noqa_is_flake8s(project: Path) -> None:
    everything = reported(flake8(project, "--select", "TL", "--disable-noqa", "."))
    assert ("losses.py", 18, 13, "TL202") in everything  # `# noqa: TL202`
    assert ("losses.py", 23, 13, "TL202") in everything  # bare `# noqa`
    assert ("video_train.py", 33, 27, "TL108") in everything
    assert len(everything) == 6


def test_flake8_select_and_ignore_decide(project: Path) -> None:
    assert reported(flake8(project, "--select", "TL108", ".")) == [("video_train.py", 23, 18, "TL108")]
    others = reported(flake8(project, "--select", "E,TL", "--extend-ignore", "TL2", "."))
    assert [row for row in others if row[3].startswith("TL")] == [("video_train.py", 23, 18, "TL108")]


def test_flake8_reads_stdin(project: Path) -> None:
    source = (project / "losses.py").read_text(encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", "--select", "TL", "--stdin-display-name", "losses.py", "-"],
        cwd=project,
        input=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reported(result) == [("losses.py", 8, 17, "TL202"), ("losses.py", 14, 18, "TL202")]
