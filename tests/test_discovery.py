"""Which files a run lints: Python files under the given paths, minus the excluded ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainlint.config import Settings, load_settings
from trainlint.discovery import discover


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    files = [
        "train.py",
        "stubs.pyi",
        "README.md",
        "setup.cfg",
        "pkg/__init__.py",
        "pkg/model.py",
        "pkg/generated/out.py",
        ".venv/lib/site.py",
        "venv/lib/site.py",
        "build/lib/copy.py",
        "dist/x.py",
        ".git/hooks/pre-commit.py",
        "node_modules/pkg/x.py",
        ".tox/py311/x.py",
        ".trainlint_cache/x.py",
        "__pypackages__/x.py",
        "logs/run.py",
        "notes.txt",
    ]
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import torch\n", encoding="utf-8")
    (tmp_path / ".gitignore").write_text("logs/\n*.log\n", encoding="utf-8")
    (tmp_path / "pkg" / ".gitignore").write_text("generated/\n", encoding="utf-8")
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def displays(paths: list[str], settings: Settings | None = None) -> list[str]:
    return [t.display for t in discover(paths, settings or Settings(root=Path.cwd()))]


def test_default_excludes_and_gitignore(tree: Path) -> None:
    # virtualenvs, build output, .git, caches and what .gitignore ignores (at any level) are skipped
    assert displays(["."]) == ["pkg/__init__.py", "pkg/model.py", "stubs.pyi", "train.py"]


def test_gitignore_can_be_disabled(tree: Path) -> None:
    settings = Settings(root=tree, respect_gitignore=False)
    assert "logs/run.py" in displays(["."], settings)
    assert "pkg/generated/out.py" in displays(["."], settings)


def test_gitignore_above_the_repository_is_not_read(tree: Path) -> None:
    """Only the repository's own .gitignore files apply: the walk up stops at the `.git` dir."""
    inner = tree / "pkg" / "repo"
    (inner / ".git").mkdir(parents=True)
    (inner / "generated").mkdir()
    (inner / "generated" / "kept.py").write_text("import torch\n", encoding="utf-8")
    # pkg/.gitignore says generated/, but pkg/repo is its own repository
    assert displays(["pkg/repo"]) == ["pkg/repo/generated/kept.py"]


def test_exclude_replaces_and_extend_exclude_adds(tree: Path) -> None:
    (tree / "pyproject.toml").write_text('[tool.trainlint]\nextend-exclude = ["pkg/model.py", "*.pyi"]\n')
    assert displays(["."], load_settings(None, tree)) == ["pkg/__init__.py", "train.py"]
    (tree / "pyproject.toml").write_text('[tool.trainlint]\nexclude = ["pkg"]\n')
    # `exclude` replaces the defaults: build/ and venv/ are linted again
    found = displays(["."], load_settings(None, tree))
    assert "build/lib/copy.py" in found and "pkg/model.py" not in found


def test_explicit_files_are_linted_even_when_excluded_unless_force_exclude(tree: Path) -> None:
    assert displays(["build/lib/copy.py", "logs/run.py"]) == ["build/lib/copy.py", "logs/run.py"]
    forced = Settings(root=tree, force_exclude=True)
    # force-exclude applies the exclude patterns (build/ is a default one), not .gitignore (as in
    # ruff): pre-commit names tracked files, and a tracked file under logs/ was added on purpose
    assert displays(["build/lib/copy.py", "logs/run.py", "train.py"], forced) == ["logs/run.py", "train.py"]


def test_explicit_non_python_files_are_skipped(tree: Path) -> None:
    """pre-commit may pass a README: it is not Python, so there is nothing to lint."""
    assert displays(["README.md", "notes.txt", "setup.cfg"]) == []
    script = tree / "run_training"
    script.write_text("#!/usr/bin/env python3\nimport torch\n", encoding="utf-8")
    shell = tree / "run.sh"
    shell.write_text("#!/bin/sh\necho\n", encoding="utf-8")
    # an extension-less script with a python shebang is Python (as pre-commit's `types`)
    assert displays(["run_training", "run.sh"]) == ["run_training"]


def test_missing_paths_are_targets_that_report_tl002(tree: Path) -> None:
    targets = discover(["nope.py", "train.py"], Settings(root=tree))
    assert [(t.display, t.missing) for t in targets] == [("nope.py", True), ("train.py", False)]


def test_order_is_stable_and_files_are_not_repeated(tree: Path) -> None:
    assert displays(["train.py", ".", "pkg", "./train.py"]) == displays(["."])


def test_symlinked_directories_are_not_followed_so_loops_are_harmless(tree: Path) -> None:
    (tree / "pkg" / "loop").symlink_to(tree / "pkg")
    (tree / "self").symlink_to(tree)
    (tree / "link.py").symlink_to(tree / "logs" / "run.py")  # a symlinked file is linted
    assert displays(["."]) == ["link.py", "pkg/__init__.py", "pkg/model.py", "stubs.pyi", "train.py"]


def test_a_link_to_a_file_already_linted_is_not_linted_twice(tree: Path) -> None:
    """Fixing one file under two names at once would race: the file is linted under its own."""
    (tree / "alias.py").symlink_to(tree / "train.py")
    (tree / "pkg" / "alias2.py").symlink_to(tree / "train.py")
    assert displays(["."]) == ["pkg/__init__.py", "pkg/model.py", "stubs.pyi", "train.py"]
    assert displays(["alias.py", "pkg/alias2.py"]) == ["alias.py"]


def test_paths_outside_the_current_directory_are_shown_absolute(tree: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "x.py").write_text("import torch\n", encoding="utf-8")
    assert displays([str(outside)]) == [(outside / "x.py").as_posix()]


def test_nothing_to_lint_is_exit_0_with_a_warning(tree: Path) -> None:
    """pre-commit with nothing relevant staged, an empty directory, a README: exit 0."""
    (tree / "empty").mkdir()
    for arguments in (["README.md"], ["empty"]):
        result = run_cli("--no-cache", *arguments, cwd=tree)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no Python files found" in result.stderr
        assert result.stdout == "All checks passed!\n"


def test_walk_skips_unreadable_directories_without_failing(tree: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading a directory")
    locked = tree / "locked"
    locked.mkdir()
    (locked / "x.py").write_text("import torch\n", encoding="utf-8")
    locked.chmod(0)
    try:
        assert "locked/x.py" not in displays(["."])
    finally:
        locked.chmod(0o755)
