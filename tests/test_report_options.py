"""Report options a ruff user expects: `--statistics --output-format json` (ruff's shape),
`-o/--output-file`, `--show-files`, `--show-settings`, and SARIF for notebooks that points a
viewer at the cell's line in the `.ipynb` file (validated against the SARIF 2.1.0 schema)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli

SARIF_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "sarif-schema-2.1.0.json"
AMP_VIDEO = FIXTURES / "cli" / "amp_video.py"
LOG_SOFTMAX = FIXTURES / "cli" / "log_softmax.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(AMP_VIDEO, tmp_path / "video.py")
    shutil.copy(AMP_VIDEO, tmp_path / "video2.py")
    shutil.copy(LOG_SOFTMAX, tmp_path / "loss.py")
    (tmp_path / "build").mkdir()
    shutil.copy(AMP_VIDEO, tmp_path / "build" / "excluded.py")  # excluded by default
    (tmp_path / "notes.txt").write_text("not python\n", encoding="utf-8")
    return tmp_path


def test_statistics_as_json_has_ruffs_shape(project: Path) -> None:
    result = run_cli("--no-cache", "--statistics", "--output-format", "json", ".", cwd=project)
    assert result.returncode == 1
    assert json.loads(result.stdout) == [  # nothing but JSON on stdout
        {"code": "TL108", "name": "fp16-autocast-conv3d", "count": 2, "fixable": False, "fixable_count": 0},
        {"code": "TL202", "name": "log-of-softmax", "count": 1, "fixable": True, "fixable_count": 1},
    ]
    sarif = run_cli("--statistics", "--output-format", "sarif", ".", cwd=project)
    assert sarif.returncode == 2 and "--statistics: works with --output-format full, concise or json" in sarif.stderr


def test_output_file_holds_the_report_and_stdout_stays_empty(project: Path) -> None:
    printed = run_cli("--no-cache", "--output-format", "concise", ".", cwd=project)
    written = run_cli("--no-cache", "--output-format", "concise", "-o", "reports/lint.txt", ".", cwd=project)
    assert (written.returncode, written.stdout) == (printed.returncode, "")
    assert (project / "reports" / "lint.txt").read_text(encoding="utf-8") == printed.stdout
    as_json = run_cli("--no-cache", "--output-format", "json", "--output-file", "lint.json", ".", cwd=project)
    assert as_json.stdout == "" and len(json.loads((project / "lint.json").read_text(encoding="utf-8"))) == 3
    (project / "blocker").write_text("a file, not a directory\n", encoding="utf-8")
    failed = run_cli("--no-cache", "-o", "blocker/out.txt", ".", cwd=project)
    assert failed.returncode == 2 and failed.stderr.startswith("trainlint: error: argument --output-file: cannot write")


def test_show_files_lists_what_would_be_linted(project: Path) -> None:
    result = run_cli("--show-files", ".", cwd=project)
    assert (result.returncode, result.stdout) == (0, "loss.py\nvideo.py\nvideo2.py\n")
    assert not (project / ".trainlint_cache").exists()  # nothing was linted


def test_show_settings_names_the_source_of_each_setting(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.trainlint]\nignore = ["TL105"]\nextend-exclude = ["legacy"]\n\n[tool.trainlint.rules.TL201]\neps = 2e-05\n',
        encoding="utf-8",
    )
    result = run_cli("--show-settings", "--select", "TL1,TL2", "--unsafe-fixes", ".", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["Settings for: .", "Configuration file: pyproject.toml"]

    def setting(key: str) -> tuple[str, str]:
        line = next(line for line in lines if line.startswith(f"{key} = "))
        value, source = line.split("  # ")
        return value.split(" = ", 1)[1].strip(), source

    assert setting("select")[1] == "--select" and '"TL101"' in setting("select")[0]
    assert setting("extend-exclude") == ('["legacy"]', "pyproject.toml")
    assert setting("unsafe-fixes") == ("true", "--unsafe-fixes")
    assert setting("respect-gitignore") == ("true", "default")
    assert setting("rules.TL201.eps") == ("2e-05", "pyproject.toml")
    assert setting("rules.TL401.max_norm") == ("1.0", "default")
    enabled = lines[-1]
    assert enabled.startswith("Enabled rules (") and "TL101" in enabled and "TL301" not in enabled


def test_sarif_for_a_notebook_points_at_the_cell_line_in_the_file(tmp_path: Path) -> None:
    if not SARIF_SCHEMA.exists():
        pytest.skip(f"SARIF schema not found at {SARIF_SCHEMA}")
    import jsonschema

    notebook = tmp_path / "classifier.ipynb"
    shutil.copy(FIXTURES / "notebooks" / "classifier.ipynb", notebook)
    result = run_cli("--no-cache", "--output-format", "sarif", "classifier.ipynb", cwd=tmp_path)
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads(SARIF_SCHEMA.read_text(encoding="utf-8")))
    concise = run_cli("--no-cache", "--output-format", "concise", "classifier.ipynb", cwd=tmp_path)
    file_lines = notebook.read_text(encoding="utf-8").splitlines()
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    results = document["runs"][0]["results"]
    assert len(results) == len(concise.stdout.splitlines()) - 1 == 3
    for entry, printed in zip(results, concise.stdout.splitlines()):
        cell, row, column = (int(part) for part in printed.split(":cell ")[1].split(":")[:3])
        assert entry["properties"]["cell"] == cell
        assert entry["properties"]["cellRegion"]["startLine"] == row
        assert entry["properties"]["cellRegion"]["startColumn"] == column
        assert "fixes" not in entry  # a fix's positions are the cell's, not the file's
        region = entry["locations"][0]["physicalLocation"]["region"]
        # the region is where that code sits in the .ipynb text: the JSON string of that line
        code_line = "".join(cells[cell - 1]["source"]).splitlines()[row - 1]
        text_at_region = file_lines[region["startLine"] - 1][region["startColumn"] - 1 :]
        assert text_at_region.startswith(json.dumps(code_line[column - 1 :])[1:12])
