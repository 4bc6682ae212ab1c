"""Output formats, each read by its own consumer: full (source line and caret, colour only on a
terminal), concise, json (ruff's shape), sarif (validated against the SARIF 2.1.0 schema), github
annotations; the summary line, --statistics, --quiet, --exit-zero; sorted, 1-based, stable."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT, run_cli, run_on_a_terminal
from trainlint import output
from trainlint.findings import Finding, Position

SARIF_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "sarif-schema-2.1.0.json"
AMP_VIDEO = FIXTURES / "cli" / "amp_video.py"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """a_broken.py (TL001, error), b_amp.py and sub/d_amp.py (TL108, warning, unsafe fix),
    c_clean.py (nothing)."""
    root = tmp_path_factory.mktemp("output")
    shutil.copy(AMP_VIDEO, root / "b_amp.py")
    (root / "sub").mkdir()
    shutil.copy(AMP_VIDEO, root / "sub" / "d_amp.py")
    (root / "a_broken.py").write_text("import torch\nx = (\n", encoding="utf-8")
    (root / "c_clean.py").write_text("import torch\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tl108_message(project: Path) -> str:
    from trainlint.api import lint_source

    findings = lint_source(AMP_VIDEO.read_text(encoding="utf-8"), "x.py", select=["TL108"])
    assert len(findings) == 1
    return findings[0].message


def lint(project: Path, *arguments: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("--no-cache", *arguments, cwd=project, env=env)


def test_full_shows_the_line_and_a_caret_under_the_range(project: Path, tl108_message: str) -> None:
    result = lint(project, "a_broken.py", "b_amp.py")
    assert result.returncode == 1
    assert result.stdout == (
        "a_broken.py:2:5: TL001 syntax error: '(' was never closed\n"
        "  |\n"
        "2 | x = (\n"
        "  |     ^\n"
        "\n"
        f"b_amp.py:15:14: TL108 {tl108_message}\n"
        "   |\n"
        '15 |         with torch.autocast("cuda"):\n'
        "   |              ^^^^^^^^^^^^^^^^^^^^^^\n"
        "   = help: Add `dtype=torch.bfloat16` (unsafe fix)\n"
        "\n"
        "Found 1 error and 1 warning. 1 more fixable with `--fix --unsafe-fixes`.\n"
    )


def test_concise_is_sorted_by_path_line_column_and_stable(project: Path, tl108_message: str) -> None:
    result = lint(project, "--output-format", "concise", "sub", ".", "c_clean.py")
    assert result.stdout.splitlines() == [
        "a_broken.py:2:5: TL001 syntax error: '(' was never closed",
        f"b_amp.py:15:14: TL108 {tl108_message}",
        f"sub/d_amp.py:15:14: TL108 {tl108_message}",
        "Found 1 error and 2 warnings. 2 more fixable with `--fix --unsafe-fixes`.",
    ]
    assert lint(project, "--output-format", "concise", ".", "--jobs", "2").stdout == result.stdout


def test_json_has_ruffs_shape(project: Path, tl108_message: str) -> None:
    result = lint(project, "--output-format", "json", ".")
    assert result.returncode == 1
    records = json.loads(result.stdout)  # nothing but JSON on stdout: no summary line
    ruff_keys = {"cell", "code", "end_location", "filename", "fix", "location", "message", "noqa_row", "url"}
    assert all(ruff_keys <= set(record) for record in records)
    assert [(r["code"], Path(r["filename"]).relative_to(project).as_posix()) for r in records] == [
        ("TL001", "a_broken.py"),
        ("TL108", "b_amp.py"),
        ("TL108", "sub/d_amp.py"),
    ]
    broken, amp = records[0], records[1]
    assert Path(amp["filename"]).is_absolute()
    assert broken["fix"] is None and broken["location"] == {"row": 2, "column": 5}
    assert amp["message"] == tl108_message and amp["noqa_row"] == 15 and amp["cell"] is None
    assert amp["location"] == {"row": 15, "column": 14} and amp["end_location"] == {"row": 15, "column": 36}
    assert amp["url"] is None  # the rule pages have no public address yet: no made-up URL
    assert amp["fix"] == {
        "applicability": "unsafe",
        "message": "Add `dtype=torch.bfloat16`",
        "edits": [
            {
                "content": 'torch.autocast("cuda", dtype=torch.bfloat16)',
                "location": {"row": 15, "column": 14},
                "end_location": {"row": 15, "column": 36},
            }
        ],
    }
    clean = lint(project, "--output-format", "json", "c_clean.py")
    assert (clean.returncode, json.loads(clean.stdout)) == (0, [])


def test_sarif_validates_against_the_2_1_0_schema(project: Path) -> None:
    if not SARIF_SCHEMA.exists():
        pytest.skip(f"SARIF schema not found at {SARIF_SCHEMA} (it ships with the team's shared folder)")
    import jsonschema

    result = lint(project, "--output-format", "sarif", ".")
    document = json.loads(result.stdout)
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])

    run = document["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(r["id"] for r in rules)
    results = run["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [("TL001", "error"), ("TL108", "warning"), ("TL108", "warning")]
    for entry in results:
        assert rules[entry["ruleIndex"]]["id"] == entry["ruleId"]
    location = results[1]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "b_amp.py"
    assert location["region"] == {"startLine": 15, "startColumn": 14, "endLine": 15, "endColumn": 36}
    assert results[1]["fixes"][0]["artifactChanges"][0]["replacements"][0]["insertedContent"] == {
        "text": 'torch.autocast("cuda", dtype=torch.bfloat16)'
    }


def test_sarif_of_awkward_paths_is_still_valid() -> None:
    if not SARIF_SCHEMA.exists():
        pytest.skip(f"SARIF schema not found at {SARIF_SCHEMA}")
    import jsonschema

    findings = [
        Finding("TL001", "syntax-error", "m", path, Position(1, 1), Position(1, 1))
        for path in ("dir with space/x.py", "/abs/päth/y.py", "-")
    ]
    document = output.sarif(findings)
    jsonschema.validate(document, json.loads(SARIF_SCHEMA.read_text(encoding="utf-8")))
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in document["runs"][0]["results"]]
    assert uris == ["dir%20with%20space/x.py", "file:///abs/p%C3%A4th/y.py", "-"]


def test_github_annotations(project: Path, tl108_message: str) -> None:
    result = lint(project, "--output-format", "github", "a_broken.py", "b_amp.py")
    assert result.stdout.splitlines() == [
        "::error title=trainlint (TL001),file=a_broken.py,line=2,col=5,endLine=2,endColumn=5::"
        "a_broken.py:2:5: TL001 syntax error: '(' was never closed",
        "::warning title=trainlint (TL108),file=b_amp.py,line=15,col=14,endLine=15,endColumn=36::"
        f"b_amp.py:15:14: TL108 {tl108_message}",
    ]
    assert result.returncode == 1


def test_github_annotations_escape_what_the_runner_would_parse() -> None:
    finding = Finding("TL001", "n", "100% bad\nline, two: x", "a,b:c.py", Position(1, 2), Position(3, 4), level="warning")
    stream = io.StringIO()
    output.github([finding], stream)
    assert stream.getvalue() == (
        "::warning title=trainlint (TL001),file=a%2Cb%3Ac.py,line=1,col=2,endLine=3,endColumn=4::"
        "a,b:c.py:1:2: TL001 100%25 bad%0Aline, two: x\n"
    )


def test_statistics_quiet_and_exit_zero(project: Path) -> None:
    statistics = lint(project, "--statistics", ".")
    assert statistics.stdout.splitlines() == [
        "2\tTL108\t    fp16-autocast-conv3d",
        "1\tTL001\t    syntax-error",
        "Found 1 error and 2 warnings. 2 more fixable with `--fix --unsafe-fixes`.",
    ]
    quiet = lint(project, "--quiet", "--exit-zero", "--output-format", "concise", "a_broken.py")
    assert quiet.stdout == "a_broken.py:2:5: TL001 syntax error: '(' was never closed\n"
    assert quiet.returncode == 0


def test_summary_counts_fixable_findings_and_levels() -> None:
    def finding(level: str = "error") -> Finding:
        return Finding("TL001", "n", "m", "p", Position(1, 1), Position(1, 1), level=level)  # type: ignore[arg-type]

    found = [finding(), finding(), finding("warning"), finding()]
    counts = output.SummaryCounts
    assert output.summary([], counts()) == "All checks passed!"
    assert output.summary(found, counts(fixable=2, unsafe_fixable=1)) == (
        "Found 3 errors and 1 warning. [*] 2 fixable with `trainlint --fix`. 1 more fixable with `--fix --unsafe-fixes`."
    )
    # unsafe fixes on: from the configuration `--fix` suffices, from this command line it must be repeated
    assert output.summary(found, counts(fixable=2, unsafe_fixable=1, unsafe_fixes=True)) == (
        "Found 3 errors and 1 warning. [*] 3 fixable with `trainlint --fix`."
    )
    on_command_line = counts(fixable=2, unsafe_fixable=1, unsafe_fixes=True, fix_command="trainlint --fix --unsafe-fixes")
    assert output.summary(found, on_command_line) == (
        "Found 3 errors and 1 warning. [*] 3 fixable with `trainlint --fix --unsafe-fixes`."
    )
    fixed = (finding(), finding("warning"))
    assert output.summary(found[3:], counts(fixed=fixed, fix_mode=True)) == (
        "Found 2 errors and 1 warning (2 fixed, 1 remaining)."
    )
    assert output.summary(found[2:], counts(fixed=fixed, fix_mode=True, unsafe_fixable=2)) == (
        "Found 2 errors and 2 warnings (2 fixed, 2 remaining). 2 hidden fixes can be enabled with `--unsafe-fixes`."
    )
    assert output.summary(found[3:], counts(fix_mode=True, unsafe_fixable=1)) == (
        "Found 1 error. 1 hidden fix can be enabled with `--unsafe-fixes`."
    )
    assert output.summary([], counts(fixed=fixed[:1], fix_mode=True)) == "Found 1 error (1 fixed, 0 remaining)."
    assert output.summary([finding("warning")], counts()) == "Found 1 warning."


def _run_on_a_terminal(arguments: list[str], cwd: Path, env: dict[str, str]) -> str:
    """What the command line printed with its stdout on a pseudo-terminal."""
    return run_on_a_terminal(arguments, cwd, env)[0]


def test_colour_only_on_a_terminal_unless_forced_or_disabled(project: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    base["PYTHONPATH"] = str(ROOT)
    arguments = ["--no-cache", "a_broken.py"]
    on_terminal = _run_on_a_terminal(arguments, project, base)
    assert "\x1b[1;31mTL001\x1b[0m" in on_terminal and "\x1b[1;31m^\x1b[0m" in on_terminal
    assert "\x1b[" not in _run_on_a_terminal(arguments, project, {**base, "NO_COLOR": "1"})
    piped = run_cli(*arguments, cwd=project, env={"NO_COLOR": ""})
    assert "\x1b[" not in piped.stdout
    forced = run_cli(*arguments, cwd=project, env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    assert "\x1b[1;31mTL001\x1b[0m" in forced.stdout


def test_positions_are_one_based_like_ruff_and_flake8(tmp_path: Path) -> None:
    """A finding at the very start of a file is 1:1, not 0:0 or 1:0."""
    (tmp_path / "x.py").write_text("(\nimport torch\n", encoding="utf-8")
    (tmp_path / "y.py").write_text(")\nimport torch\n", encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert result.stdout.splitlines()[:2] == [
        "x.py:1:1: TL001 syntax error: '(' was never closed",
        "y.py:1:1: TL001 syntax error: unmatched ')'",
    ]


def test_safe_fixes_are_marked(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "cli" / "log_softmax.py", tmp_path / "loss.py")
    result = run_cli("--no-cache", "--output-format", "concise", "loss.py", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("loss.py:7:17: TL202 [*] `log` of a `softmax`")
    assert lines[1] == "Found 1 error. [*] 1 fixable with `trainlint --fix`."
    statistics = run_cli("--no-cache", "--statistics", "loss.py", cwd=tmp_path)
    assert statistics.stdout.splitlines()[0] == "1\tTL202\t[*] log-of-softmax"


BF16_SCALER = '''import torch


def train(model, loader, optimizer):
    scaler = torch.amp.GradScaler("cuda")
    for x, y in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
'''


def test_an_info_finding_is_a_note_in_sarif_a_notice_on_github_and_counted_apart(tmp_path: Path) -> None:
    """TL111 reports at the info level: off by default, and each format names the level its
    consumer knows."""
    (tmp_path / "train.py").write_text(BF16_SCALER, encoding="utf-8")
    assert lint(tmp_path, "train.py").returncode == 0  # off by default
    concise = lint(tmp_path, "--extend-select", "TL111", "--output-format", "concise", "train.py")
    assert concise.returncode == 1
    assert concise.stdout.splitlines()[-1].startswith("Found 1 info finding.")
    records = json.loads(lint(tmp_path, "--extend-select", "TL111", "--output-format", "json", "train.py").stdout)
    assert [(r["code"], r["level"]) for r in records] == [("TL111", "info")]
    annotations = lint(tmp_path, "--extend-select", "TL111", "--output-format", "github", "train.py").stdout
    assert annotations.startswith("::notice title=trainlint (TL111),file=train.py,line=9,col=9,")
    document = json.loads(lint(tmp_path, "--extend-select", "TL111", "--output-format", "sarif", "train.py").stdout)
    run = document["runs"][0]
    assert [r["level"] for r in run["results"]] == ["note"]
    (descriptor,) = [r for r in run["tool"]["driver"]["rules"] if r["id"] == "TL111"]
    assert descriptor["defaultConfiguration"]["level"] == "note"
    if SARIF_SCHEMA.exists():
        import jsonschema

        jsonschema.validate(document, json.loads(SARIF_SCHEMA.read_text(encoding="utf-8")))


def test_the_summary_names_three_levels() -> None:
    def finding(level: str) -> Finding:
        return Finding("TL001", "n", "m", "p", Position(1, 1), Position(1, 1), level=level)  # type: ignore[arg-type]

    found = [finding("error"), finding("warning"), finding("info"), finding("info")]
    assert output.summary(found, output.SummaryCounts()) == "Found 1 error, 1 warning and 2 info findings."
    assert output.summary(found[2:], output.SummaryCounts()) == "Found 2 info findings."
