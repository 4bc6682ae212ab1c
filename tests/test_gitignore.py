"""``.gitignore`` matching: git's answers, in time linear in the pattern and the path."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainlint.config import Settings
from trainlint.discovery import discover
from trainlint.gitignore import GitIgnore

PATTERNS = [
    "*.pyc", "build/", "/dist", "doc/*.txt", "**/logs", "logs/**", "a/**/b", "!keep.py", "*.py", "!src/*.py",
    "foo?.py", "[abc].py", "[!abc]x.py", "[^a-c]y.py", "\\#hash.py", "\\!bang.py", "trailing.py   ", "sp\\ .py",
    "deep/**/x/**/y.py", "**", "nested/", "*a*a*a*b", "/anch/*.py", "mid/dle.py", "x/**/", "**/z/*.py",
]
PATHS = [
    "a.pyc", "x/a.pyc", "build/f.py", "x/build/f.py", "dist/f.py", "x/dist/f.py", "doc/a.txt", "doc/x/a.txt",
    "logs/r.py", "x/logs/r.py", "logs/x/y.py", "a/x/y/b", "a/b/c.py", "keep.py", "x/keep.py", "src/m.py",
    "src/x/m.py", "foo1.py", "foo12.py", "a.py", "d.py", "bx.py", "ax.py", "dy.py", "by.py", "#hash.py",
    "!bang.py", "trailing.py", "sp .py", "deep/x/y.py", "deep/1/x/2/y.py", "deep/x/z/y.py", "nested/f.py",
    "q/nested/f.py", "aaab.py", "aab", "xaxaxab", "anch/f.py", "q/anch/f.py", "mid/dle.py", "q/mid/dle.py",
    "x/q/r.py", "z/a.py", "q/z/a.py", "q/z/b/a.py",
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is the reference")
def test_every_pattern_gives_gits_answer(tmp_path: Path) -> None:
    """Each pattern alone, after `*.py` and before `!a.py`, against paths at several depths (a
    file inside an ignored directory included), compared with `git check-ignore`."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for path in PATHS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    differences = []
    for pattern in PATTERNS:
        for lines in ([pattern], ["*.py", pattern], [pattern, "!a.py"]):
            (tmp_path / ".gitignore").write_text("\n".join(lines) + "\n", encoding="utf-8")
            git = subprocess.run(
                ["git", "check-ignore", "--no-index", "--stdin", "--verbose", "--non-matching"],
                cwd=tmp_path, input="\n".join(PATHS) + "\n", capture_output=True, text=True, check=False,
            )
            ours = GitIgnore.from_lines(lines)
            for line in git.stdout.splitlines():
                source, path = line.split("\t")
                ignored_by_git = bool(source.split(":", 2)[0]) and not source.split(":", 2)[2].startswith("!")
                if ignored_by_git != (ours.verdict(path, False) is True):
                    differences.append((lines, path, ignored_by_git))
    assert differences == []


def test_a_backtracking_pattern_costs_under_a_second_of_cpu(tmp_path: Path, monkeypatch) -> None:
    """`*a*a*a*a*a*a*a*a*b` against long names of `a`: a regular expression translation
    backtracks through about n**8 ways (minutes for a 100-character name); here each name costs
    a few scans."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("*a*a*a*a*a*a*a*a*b\n", encoding="utf-8")
    for length in range(100, 140):
        (tmp_path / f"{'a' * length}.py").write_text("import torch\n", encoding="utf-8")
    ignored = tmp_path / ("a" * 120 + "b")  # a directory the pattern does match
    ignored.mkdir()
    (ignored / "inside.py").write_text("import torch\n", encoding="utf-8")
    start = time.process_time()
    targets = discover(["."], Settings(root=tmp_path))
    assert time.process_time() - start < 1.0
    assert len(targets) == 40 and not any("inside" in t.display for t in targets)
    result = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert result.stdout == "All checks passed!\n" and result.returncode == 0
