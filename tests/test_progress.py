"""Progress (`trainlint: 12/20 files`) on stderr, only on a terminal, only for a run that takes a
while (TRAINLINT_PROGRESS_AFTER seconds, 2 by default), never in a pipe, a CI log or with a
machine-readable format; erased before the report. Terminals are real pseudo-terminals here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_on_a_terminal

AMP_VIDEO = (FIXTURES / "cli" / "amp_video.py").read_text(encoding="utf-8")
ERASE_LINE = "\r\x1b[K"


def run_with_stderr_on_a_terminal(arguments: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """(stdout from a file, stderr from a pseudo-terminal) of the real command line."""
    return run_on_a_terminal(arguments, cwd, env, terminal="stderr")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for index in range(12):
        (tmp_path / f"m{index:02}.py").write_text(AMP_VIDEO, encoding="utf-8")
    return tmp_path


def environment(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TRAINLINT_PROGRESS_AFTER")}
    env.update(NO_COLOR="1", **changes)
    return env


def test_progress_on_a_terminal_once_the_run_is_slow(project: Path) -> None:
    arguments = ["--no-cache", "--jobs", "1", "--output-format", "concise", "."]
    stdout, stderr = run_with_stderr_on_a_terminal(arguments, project, environment(TRAINLINT_PROGRESS_AFTER="0"))
    assert stderr.startswith(f"{ERASE_LINE}trainlint: ") and "/12 files" in stderr
    shown = [int(part.split("/")[0]) for part in stderr.split("trainlint: ")[1:]]
    assert shown and shown == sorted(shown) and all(0 <= n <= 12 for n in shown)
    assert stderr.endswith(ERASE_LINE)  # erased before the report
    assert stdout.count(" TL108 ") == 12  # the report itself is untouched, on stdout


def test_no_progress_for_a_quick_run(project: Path) -> None:
    _, stderr = run_with_stderr_on_a_terminal(["--no-cache", "m00.py"], project, environment())
    assert stderr == ""  # the default delay (2 s) is longer than this run


@pytest.mark.parametrize(
    "arguments,env",
    [
        (["--output-format", "json"], {}),
        (["--output-format", "sarif"], {}),
        (["--quiet"], {}),
        ([], {"CI": "true"}),
    ],
    ids=["json", "sarif", "quiet", "ci"],
)
def test_no_progress_where_it_would_be_read_by_a_machine(project: Path, arguments: list[str], env: dict[str, str]) -> None:
    _, stderr = run_with_stderr_on_a_terminal(
        ["--no-cache", "--jobs", "1", *arguments, "."], project, environment(TRAINLINT_PROGRESS_AFTER="0", **env)
    )
    assert stderr == ""


def test_no_progress_in_a_pipe(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainlint", "--no-cache", "--jobs", "1", "."],
        cwd=project,
        capture_output=True,
        text=True,
        env=environment(TRAINLINT_PROGRESS_AFTER="0"),
        timeout=120,
    )
    assert result.stderr == ""
