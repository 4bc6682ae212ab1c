"""The pre-commit hooks for real: ``pre-commit try-repo`` installs this repository into its own
environment (pip, ``language: python``) and runs the ``trainlint`` and ``trainlint-fix`` hooks in
a temporary git repository.

try-repo only sees committed files, so the test commits a copy of the working tree (the files git
tracks or would track) into a temporary repository first; the real checkout is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "trainlint tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "trainlint tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}


def git(cwd: Path, *arguments: str) -> None:
    subprocess.run(["git", *arguments], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_IDENTITY})


def snapshot_of_this_repository(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot snapshot the hook repository")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "snapshot")
    return destination


@pytest.fixture(scope="module")
def hook_repository(tmp_path_factory) -> Path:
    try:
        import pre_commit  # noqa: F401
    except ImportError:
        pytest.skip("pre-commit is not installed (it is in the `test` extra)")
    return snapshot_of_this_repository(tmp_path_factory.mktemp("hook-repository"))


def try_repo(hook_repository: Path, project: Path, home: Path, hook: str, *arguments: str):
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(hook_repository), hook, *arguments],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_IDENTITY, "PRE_COMMIT_HOME": str(home), "NO_COLOR": "1", "PRE_COMMIT_COLOR": "never"},
        timeout=600,
    )


# What pip prints when the hook's environment cannot get its dependencies (no index reachable).
OFFLINE_MARKERS = ("No matching distribution found", "Could not find a version", "Failed to establish a new connection")


def skip_if_offline(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    if result.returncode not in (0, 1) and any(marker in output for marker in OFFLINE_MARKERS):
        pytest.skip("pre-commit could not install the hook's environment: no package index is reachable")


def test_hooks_with_pre_commit_try_repo(hook_repository: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q")
    (project / "broken.py").write_text("import torch\nx = (\n", encoding="utf-8")
    shutil.copy(FIXTURES / "cli" / "log_softmax.py", project / "loss.py")
    (project / "legacy").mkdir()
    (project / "legacy" / "old.py").write_text("import torch\nx = (\n", encoding="utf-8")
    shutil.copy(FIXTURES / "notebooks" / "classifier.ipynb", project / "classifier.ipynb")
    (project / "README.md").write_text("# a project\n", encoding="utf-8")
    (project / "pyproject.toml").write_text('[tool.trainlint]\nextend-exclude = ["legacy"]\n', encoding="utf-8")
    git(project, "add", "-A")
    home = tmp_path / "pre-commit-home"

    lint = try_repo(hook_repository, project, home, "trainlint", "--all-files")
    skip_if_offline(lint)
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "broken.py:2:5: TL001 syntax error: '(' was never closed" in lint.stdout
    assert "loss.py:7:17: TL202 [*] " in lint.stdout
    assert "classifier.ipynb:cell 7:7:25: TL202 [*] " in lint.stdout  # types_or includes jupyter
    assert "legacy/old.py" not in lint.stdout  # pre-commit names it, --force-exclude skips it
    assert (project / "loss.py").read_text(encoding="utf-8") == (FIXTURES / "cli" / "log_softmax.py").read_text()

    # nothing Python among the files: pre-commit skips the hook, trainlint is not even run
    readme_only = try_repo(hook_repository, project, home, "trainlint", "--files", "README.md")
    assert readme_only.returncode == 0, readme_only.stdout + readme_only.stderr
    assert "(no files to check)Skipped" in readme_only.stdout

    fix = try_repo(hook_repository, project, home, "trainlint-fix", "--files", "loss.py")
    assert fix.returncode == 1  # pre-commit fails a hook that modified files, so they get reviewed
    assert "files were modified by this hook" in fix.stdout
    assert "F.log_softmax(logits, dim=-1)" in (project / "loss.py").read_text(encoding="utf-8")
    assert "Found 1 error (1 fixed, 0 remaining)." in fix.stdout
