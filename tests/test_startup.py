"""Start-up: what a command imports decides how long a pre-commit hook or an editor waits.

LibCST (and so the engine and the rule modules) is loaded only when a file must be parsed:
never for `--version`, `--list-rules`, `--explain`, `--show-settings`, `--show-files`, nor for a
run whose files all come from the cache. Checked structurally with `python -X importtime`,
which lists every module a process imports; `benchmarks/startup.py` measures the time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from trainlint.catalog import catalog_texts, rule_infos, rule_page

HEAVY = ("libcst", "trainlint.engine", "trainlint.rules.", "trainlint.context", "multiprocessing", "torch")


def imported_modules(arguments: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainlint", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=120,
    )
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


@pytest.mark.parametrize(
    "arguments",
    [["--version"], ["--list-rules"], ["--explain", "TL101"], ["--show-settings"], ["--show-files"], ["--help"]],
    ids=lambda a: a[0],
)
def test_commands_that_parse_nothing_import_no_libcst(tmp_path: Path, arguments: list[str]) -> None:
    (tmp_path / "train.py").write_text("import torch\n", encoding="utf-8")
    result, modules = imported_modules(arguments, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trainlint.cli" in modules  # the listing works: the command line itself is in it
    assert heavy(modules) == []


def test_a_warm_run_over_cached_files_imports_no_libcst(tmp_path: Path) -> None:
    """Five files, the second run from the cache, findings included: what a pre-commit hook does
    on a commit that touches files already linted."""
    for index in range(4):
        (tmp_path / f"clean_{index}.py").write_text(f"import torch\n\nx{index} = torch.zeros(3)\n", encoding="utf-8")
    shutil.copy(FIXTURES / "cli" / "amp_video.py", tmp_path / "train.py")
    cold, cold_modules = imported_modules(["--output-format", "full", "."], tmp_path)
    assert "libcst" in cold_modules  # the first run parses: the listing does see LibCST
    warm, warm_modules = imported_modules(["--output-format", "full", "."], tmp_path)
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout) == (1, cold.stdout)
    assert heavy(warm_modules) == []


def test_catalog_matches_the_rule_modules() -> None:
    """The metadata the command line reads without importing the rules is the rules' own."""
    for path, text in catalog_texts().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m trainlint.docs rules/"


def test_catalog_answers_like_the_registry_without_the_rules_loaded(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from trainlint.catalog import rule_infos, rule_page\n"
        "infos = {c: i.to_json() for c, i in rule_infos().items()}\n"
        "pages = {c: rule_page(c) for c in infos}\n"
        "print(json.dumps({'infos': infos, 'pages': pages, 'libcst': 'libcst' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    data = json.loads(result.stdout)
    assert data["libcst"] is False
    assert data["infos"] == {c: i.to_json() for c, i in rule_infos().items()}
    assert data["pages"] == {c: rule_page(c) for c in data["infos"]}
