"""Suppression: ``# noqa: CODE`` (several codes), a bare ``# noqa`` (every code on its line, as in
ruff and flake8), ``# trainlint: skip-file``, and TL004 for unused or unknown codes (off by
default). A suppressed finding is never fixed, and no fix edits a line that suppresses its code."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import libcst as cst
import pytest

from tests.conftest import FIXTURES, run_cli
from trainlint import rule as rule_module
from trainlint.config import Settings, apply_cli_overrides
from trainlint.engine import Linter
from trainlint.noqa import has_skip_file, parse_noqa
from trainlint.project import ProjectIndex

AMP_VIDEO = (FIXTURES / "cli" / "amp_video.py").read_text(encoding="utf-8")
AUTOCAST = 'with torch.autocast("cuda"):'


@pytest.fixture
def foo_rule() -> Iterator[str]:
    """A test-only rule: `torch.foo(...)` -> `torch.bar(...)` (safe). Registered for one test."""
    from trainlint.rule import Rule

    class FooRule(Rule):
        """## What it does
        Test rule.
        ## Why is this bad?
        Test rule.
        """

        code = "TL990"
        name = "test-foo"
        summary = "torch.foo call"
        fix_applicability = "safe"
        triggers = ("foo",)

        def check(self, ctx):
            for call in ctx.nodes.of(cst.Call):
                if ctx.qualified_name(call.func) == "torch.foo":
                    fix = ctx.fix([ctx.replace(call.func, "torch.bar")], "safe", "Use torch.bar")
                    yield ctx.report(self, call, "torch.foo is slow", fix=fix)

    try:
        yield FooRule.code
    finally:
        rule_module._REGISTRY.pop(FooRule.code, None)


def linter(*codes: str) -> Linter:
    settings = apply_cli_overrides(Settings(), list(codes), None, None)
    return Linter(settings, ProjectIndex([]))


def lint(code: str, *codes: str) -> list[tuple[int, int, str]]:
    text = textwrap.dedent(code).lstrip("\n")
    return [(f.start.row, f.start.column, f.code) for f in linter(*codes).lint(text, "t.py")]


def test_noqa_with_the_code_suppresses_that_line_only(foo_rule: str) -> None:
    code = """
        import torch
        a = torch.foo(1)  # noqa: TL990
        b = torch.foo(2)
        c = torch.foo(3)  # noqa: E501
        """
    assert lint(code, "TL990") == [(3, 5, "TL990"), (4, 5, "TL990")]


@pytest.mark.parametrize(
    "comment",
    ["# noqa: TL101, TL990", "# noqa:TL990,TL101", "# NOQA: tl990", "# noqa: TL101 TL990", "#noqa:TL990  because"],
)
def test_several_codes_and_spellings(foo_rule: str, comment: str) -> None:
    assert lint(f"import torch\nx = torch.foo(1)  {comment}\n", "TL990") == []


def test_bare_noqa_suppresses_every_code_on_its_line(foo_rule: str) -> None:
    code = "import torch\nx = torch.foo(1)  # noqa\ny = torch.foo(2)  # noqa because flake8 E501\nz = torch.foo(3)\n"
    assert lint(code, "TL990") == [(4, 5, "TL990")]


def test_no_fix_edits_a_line_whose_noqa_names_its_code(foo_rule: str) -> None:
    """A fix whose edit reaches another line leaves it alone when that line says `# noqa` for the
    fix's code (or a bare `# noqa`): TL990 here also rewrites the argument's line."""
    from trainlint.engine import edits_a_suppressed_line
    from trainlint.findings import Edit, Finding, Fix, Position
    from trainlint.noqa import parse_noqa
    from trainlint.source import SourceText

    text = "a = f(\n    1,  # noqa: TL990\n)\nb = g(\n    2,  # noqa\n)\nc = h(\n    3,  # noqa: TL101\n)\n"
    source = SourceText(text)

    def finding_editing(line: int) -> Finding:
        start = source.offset(line, 4)
        fix = Fix((Edit(start, start + 1, "9"),), "safe", "change the argument")
        return Finding("TL990", "test-foo", "m", "t.py", Position(line - 1, 1), Position(line - 1, 2), fix=fix)

    comments = parse_noqa(text)
    assert edits_a_suppressed_line(finding_editing(2), source, comments)  # its own code
    assert edits_a_suppressed_line(finding_editing(5), source, comments)  # bare
    assert not edits_a_suppressed_line(finding_editing(8), source, comments)  # another code
    inserted = Finding("TL990", "test-foo", "m", "t.py", Position(1, 1), Position(1, 2),
                       fix=Fix((Edit(source.offset(2, 0), source.offset(2, 0), "x = 0\n"),), "safe", "insert"))
    assert not edits_a_suppressed_line(inserted, source, comments)  # a new line before it changes nothing


def test_noqa_in_a_string_is_not_a_comment(foo_rule: str) -> None:
    assert lint('import torch\nx = torch.foo("# noqa: TL990")\n', "TL990") == [(2, 5, "TL990")]


def test_noqa_applies_to_the_line_where_a_finding_starts(foo_rule: str) -> None:
    code = """
        import torch
        x = torch.foo(  # noqa: TL990
            1,
        )
        y = torch.foo(
            2,
        )  # noqa: TL990
        """
    assert lint(code, "TL990") == [(5, 5, "TL990")]


def test_skip_file(foo_rule: str) -> None:
    code = "# trainlint: skip-file\nimport torch\nx = torch.foo(1)\n"
    assert has_skip_file(code)
    assert lint(code, "TL990") == []
    assert not has_skip_file('s = "# trainlint: skip-file"\n')  # only a real comment counts
    # a file that skips itself is not parsed, so not even its syntax errors are reported
    assert lint("# trainlint: skip-file\nimport torch\nx = (\n", "TL001") == []


def test_unused_and_unknown_noqa_codes_are_tl004_when_enabled(foo_rule: str) -> None:
    code = """
        import torch
        a = torch.foo(1)  # noqa: TL990
        b = 1  # noqa: TL990
        c = torch.foo(2)  # noqa: TL990, TL999, E501
        """
    assert lint(code, "TL990") == []  # off by default
    findings = linter("TL990", "TL004").lint(textwrap.dedent(code).lstrip("\n"), "t.py")
    assert [(f.start.row, f.start.column, f.message) for f in findings] == [
        (3, 8, "unused code TL990 in `noqa` comment"),
        (4, 19, "unknown code TL999 in `noqa` comment"),  # E501 belongs to another tool
    ]


def test_a_suppressed_finding_is_never_fixed(foo_rule: str) -> None:
    text = "import torch\na = torch.foo(1)  # noqa: TL990\nb = torch.foo(2)\n"
    outcome = linter("TL990").fix(text, "t.py", None, unsafe_fixes=True)
    assert outcome.text == "import torch\na = torch.foo(1)  # noqa: TL990\nb = torch.bar(2)\n"
    assert [f.start.row for f in outcome.fixed] == [3]


def test_per_file_ignores_also_silence_tl004(foo_rule: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = apply_cli_overrides(Settings(root=tmp_path), ["TL990", "TL004"], None, None)
    settings.per_file_ignores = {"t.py": ["TL004"]}
    assert Linter(settings, ProjectIndex([])).lint("x = 1  # noqa: TL990\n", "t.py") == []


def test_parse_noqa_reads_only_comments() -> None:
    comments = parse_noqa('x = 1  # noqa: TL101,TL102\ny = "# noqa"\nz = 2  # NoQA\n')
    assert {line: c.codes for line, c in comments.items()} == {1: ("TL101", "TL102"), 3: ()}
    assert comments[1].column == 8


# -- through the command line, with a real rule (TL108) --------------------------------------------


def test_noqa_bare_and_coded_through_the_command_line(tmp_path: Path) -> None:
    """`--fix --unsafe-fixes` on three copies of one file: the coded and the bare `# noqa` keep
    their line as written, the copy without a comment is fixed."""
    suppressed = AMP_VIDEO.replace(AUTOCAST, AUTOCAST + "  # noqa: TL108")
    bare = AMP_VIDEO.replace(AUTOCAST, AUTOCAST + "  # noqa")
    (tmp_path / "suppressed.py").write_text(suppressed, encoding="utf-8")
    (tmp_path / "bare.py").write_text(bare, encoding="utf-8")
    (tmp_path / "plain.py").write_text(AMP_VIDEO, encoding="utf-8")
    arguments = ("--no-cache", "--output-format", "concise", "--extend-select", "TL004")

    result = run_cli(*arguments, "--fix", "--unsafe-fixes", ".", cwd=tmp_path)
    assert (tmp_path / "suppressed.py").read_text(encoding="utf-8") == suppressed
    assert (tmp_path / "bare.py").read_text(encoding="utf-8") == bare
    assert (tmp_path / "plain.py").read_text(encoding="utf-8") != AMP_VIDEO
    assert result.stdout.splitlines()[-1] == "Found 1 warning (1 fixed, 0 remaining)."
    assert result.returncode == 0

    (tmp_path / "stale.py").write_text("import torch\nx = 1  # noqa: TL108\n", encoding="utf-8")
    result = run_cli(*arguments, ".", cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "stale.py:2:8: TL004 unused code TL108 in `noqa` comment",
        "Found 1 warning.",
    ]
    assert result.returncode == 1


def test_bare_noqa_setting_is_deprecated_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.trainlint]\nbare-noqa = false\n", encoding="utf-8")
    (tmp_path / "bare.py").write_text(AMP_VIDEO.replace(AUTOCAST, AUTOCAST + "  # noqa"), encoding="utf-8")
    result = run_cli("--no-cache", ".", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "All checks passed!\n")
    assert result.stderr == (
        "trainlint: warning: pyproject.toml [tool.trainlint]: 'bare-noqa' is deprecated and has no effect: "
        "a bare `# noqa` now always suppresses trainlint's findings on its line, as in ruff and flake8; "
        "remove the key\n"
    )


def test_noqa_is_recognised_in_any_case() -> None:
    from trainlint.api import lint_source

    source = "import torch\ny = torch.log(torch.softmax(x, dim=1))  # NoQa: TL202\n"
    assert lint_source(source, "train.py") == []
