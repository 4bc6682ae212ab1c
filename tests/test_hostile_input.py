"""Bad input gets a clear finding, never a traceback: syntax errors, undecodable bytes, NUL bytes,
unreadable, missing and vanishing files, symlink loops, FIFOs, input nested too deeply for the
parser, and a rule that raises or a worker that dies."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import libcst as cst
import pytest

from tests.conftest import FIXTURES, run_cli
from trainlint import rule as rule_module
from trainlint.api import lint_source
from trainlint.config import Settings, apply_cli_overrides
from trainlint.discovery import discover
from trainlint.rule import Rule
from trainlint.runner import RunOptions, run

AMP_VIDEO = FIXTURES / "cli" / "amp_video.py"


def test_hostile_tree_through_the_command_line(tmp_path: Path) -> None:
    files: dict[str, bytes] = {
        "a_syntax.py": b"import torch\n\ndef train(:\n    pass\n",
        "b_nul.py": b"import torch\nx = 1\x00\n",
        "c_undecodable.py": b"import torch\n# caf\xe9 (latin-1 without a coding cookie)\n",
        "d_bad_cookie.py": b"# -*- coding: klingon -*-\nimport torch\n",
        "e_deep.py": b"import torch\nx = " + b"(" * 5000 + b"1" + b")" * 5000 + b"\n",
        "f_unary.py": b"import torch\nx = " + b"-" * 100000 + b"1\n",
        "g_empty.py": b"",
        "h_bom_only.py": b"\xef\xbb\xbf",
        "i_cr_only.py": b"import torch\rx = torch.zeros(1)\r",
        "j_formfeed.py": b"import torch\n\x0c\ndef f():\n    return torch.ones(1)\n",
        "k_unicode.py": "import torch\nnäme = torch.zeros(1)  # ü 🚀\n".encode(),
        "l_indent.py": b"import torch\n  x = 1\n",
        "z_amp.py": AMP_VIDEO.read_bytes(),  # a real finding: the other files never stop the run
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "loop_a.py").symlink_to("loop_b.py")
    (tmp_path / "loop_b.py").symlink_to("loop_a.py")
    (tmp_path / "dangling.py").symlink_to("nowhere.py")
    (tmp_path / "dir.py").mkdir()  # a directory with a Python name is walked, not read
    os.mkfifo(tmp_path / "fifo.py")  # must not block: walks skip it, naming it reports it
    result = run_cli(
        "--no-cache", "--output-format", "concise", "--jobs", "2",
        ".", "missing.py", "loop_a.py", "dangling.py", "fifo.py", cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    tl108 = next(line for line in lines if line.startswith("z_amp.py"))
    assert lines == [
        "a_syntax.py:3:11: TL001 syntax error: invalid syntax",
        "b_nul.py:2:6: TL001 source contains a NUL byte",
        "c_undecodable.py:2:6: TL001 cannot decode: byte 0xe9 is not valid utf-8",
        "d_bad_cookie.py:1:1: TL001 cannot detect the encoding: unknown encoding: klingon",
        "dangling.py:1:1: TL002 cannot read: No such file or directory",
        "e_deep.py:2:205: TL001 syntax error: too many nested parentheses",
        "f_unary.py:1:1: TL001 cannot parse: the code is nested too deeply for Python's parser",
        "fifo.py:1:1: TL002 not a regular file",
        "l_indent.py:2:2: TL001 syntax error: unexpected indent",
        "loop_a.py:1:1: TL002 cannot read: Too many levels of symbolic links",
        "missing.py:1:1: TL002 no such file or directory",
        tl108,
        "Found 11 errors and 1 warning. 1 more fixable with `--fix --unsafe-fixes`.",
    ]
    assert tl108.startswith("z_amp.py:15:14: TL108 ")
    assert result.returncode == 1


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (see the API test below)")
    (tmp_path / "secret.py").write_text("import torch\n", encoding="utf-8")
    (tmp_path / "secret.py").chmod(0)
    try:
        result = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
        assert result.stdout.splitlines()[0] == "secret.py:1:1: TL002 cannot read: Permission denied"
        assert result.returncode == 1
    finally:
        (tmp_path / "secret.py").chmod(0o644)


def _run(paths: list[str], settings: Settings | None = None, **options) -> list[tuple[str, str, str]]:
    settings = settings or Settings(root=Path.cwd())
    targets = discover(paths, settings)
    result = run(targets, settings, RunOptions(use_cache=False, **options), [Path.cwd()])
    return [(f.path, f.code, f.message) for f in result.findings]


def test_unreadable_file_through_the_runner(tmp_path: Path, monkeypatch) -> None:
    """The same as chmod 000, for any user: reading raises PermissionError."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(AMP_VIDEO, tmp_path / "ok.py")
    (tmp_path / "secret.py").write_text("import torch\n", encoding="utf-8")
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "secret.py":
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    found = _run(["."], jobs=1)
    assert found[0] == ("ok.py", "TL108", found[0][2])
    assert found[1] == ("secret.py", "TL002", "cannot read: Permission denied")


def test_a_file_that_vanishes_during_the_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a.py", "b.py"):
        shutil.copy(AMP_VIDEO, tmp_path / name)
    settings = Settings(root=tmp_path)
    targets = discover(["."], settings)
    (tmp_path / "a.py").unlink()  # after discovery, before linting
    result = run(targets, settings, RunOptions(use_cache=True, jobs=1), [tmp_path])
    assert [(f.path, f.code) for f in result.findings] == [("a.py", "TL002"), ("b.py", "TL108")]
    assert result.findings[0].message == "cannot read: No such file or directory"


@pytest.fixture
def exploding_rule() -> Iterator[str]:
    class Exploding(Rule):
        """## What it does
        Test rule.
        ## Why is this bad?
        Test rule.
        """

        code = "TL998"
        name = "test-exploding"
        summary = "raises on files that mention EXPLODE, dies on files that mention CRASH"
        triggers = ("EXPLODE", "CRASH")

        def check(self, ctx):
            if "CRASH" in ctx.source.text:
                os._exit(70)  # a worker process dying, as a native crash would
            for _ in ctx.nodes.of(cst.Call):
                raise ZeroDivisionError("division by zero")
            yield from ()

    try:
        yield Exploding.code
    finally:
        rule_module._REGISTRY.pop(Exploding.code, None)


def test_a_rule_that_raises_is_reported_and_the_run_goes_on(exploding_rule: str) -> None:
    findings = lint_source("import torch\nEXPLODE = torch.zeros(1)\n", "t.py", select=["TL998", "TL108"])
    assert [(f.code, f.path, f.message) for f in findings] == [
        (
            "TL003",
            "t.py",
            "internal error in rule TL998 (test-exploding) on this file: ZeroDivisionError: division by zero",
        )
    ]


def test_a_dying_worker_costs_only_its_file(exploding_rule: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for index in range(12):
        shutil.copy(AMP_VIDEO, tmp_path / f"m{index:02}.py")
    (tmp_path / "m05.py").write_text("import torch\nCRASH = 1\n", encoding="utf-8")
    settings = apply_cli_overrides(Settings(root=tmp_path), None, ["TL998"], None)
    found = _run(["."], settings, jobs=2)
    assert ("m05.py", "TL003") in [(path, code) for path, code, _ in found]
    assert [path for path, code, _ in found if code == "TL108"] == [f"m{i:02}.py" for i in range(12) if i != 5]


def test_a_file_of_100k_lines_is_linted_whole(tmp_path: Path) -> None:
    """A generated module of 100,000 lines: every repeated bug is found, at its own line."""
    block = [
        "def loss_{i}(logits, target):",
        "    # a loss written the long way round",
        "    probs = torch.softmax(logits, dim=1)",
        "    log_probs = torch.log(torch.softmax(logits, dim=1))",
        "    return F.nll_loss(log_probs, target) + 0 * probs.sum()",
        "",
        "",
        "",
        "",
        "",
    ]
    header = ["import torch", "import torch.nn.functional as F", ""]
    body = [line.format(i=i) for i in range(10_000) for line in block]
    path = tmp_path / "huge.py"
    path.write_text("\n".join(header + body) + "\n")
    assert len(path.read_text().splitlines()) >= 100_000
    findings = [f for f in lint_source(path.read_text(), "huge.py") if f.code == "TL202"]
    assert len(findings) == 10_000
    assert (findings[0].start.row, findings[-1].start.row) == (7, 3 + 9_999 * 10 + 4)


# -- nesting and sizes trainlint's parser must survive ---------------------------------------------
LOG_OF_SOFTMAX_LINE = "y = torch.log(torch.softmax(x, dim=1))\n"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_10000_operand_and_chain_is_linted_not_a_crash(tmp_path: Path, jobs: str) -> None:
    """Valid Python that LibCST nests 10,000 levels deep: on the main thread's stack its parser
    crashed the process (SIGSEGV, exit 139, no output), the pre-commit case of one file."""
    chain = " and ".join(["a"] * 10_000)
    (tmp_path / "deep.py").write_text(f"import torch\nx = {chain}\n{LOG_OF_SOFTMAX_LINE}", encoding="utf-8")
    result = run_cli("--no-cache", "--jobs", jobs, "--output-format", "concise", "deep.py", cwd=tmp_path)
    assert result.stdout.splitlines()[0].startswith("deep.py:3:5: TL202 ")
    assert result.returncode == 1


def test_a_chain_deeper_than_trainlint_can_follow_is_not_checked_not_a_syntax_error(tmp_path: Path) -> None:
    chain = " or ".join(["a"] * 100_000)
    (tmp_path / "deeper.py").write_text(f"import torch\nx = {chain}\n", encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "concise", "deeper.py", cwd=tmp_path)
    assert result.stdout.splitlines() == [
        "deeper.py:2:5: TL003 not checked: an `and`/`or` chain of 100,000 operands nests deeper than "
        "trainlint's parser can follow (20,000 levels); the code is valid Python",
        "Found 1 error.",
    ]


def test_5000_joined_string_literals_are_valid_python_not_a_syntax_error(tmp_path: Path) -> None:
    """LibCST reads at most 3,000 juxtaposed strings; Python joins any number: not a TL001."""
    joined = " ".join(['"s"'] * 5000)
    (tmp_path / "strings.py").write_text(f"import torch\nx = ({joined})\n", encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "concise", "strings.py", cwd=tmp_path)
    [finding, _] = result.stdout.splitlines()
    assert finding.startswith("strings.py:2:1: TL003 not checked: trainlint's parser cannot read this valid Python (")


# -- what reaches the terminal -----------------------------------------------------------------------
def test_a_megabyte_line_prints_a_bounded_excerpt_per_finding(tmp_path: Path) -> None:
    """2,000 findings on one 1 MB line: each shows a cut of the line around its column, not the line."""
    call = "torch.log(torch.softmax(x, dim=1))"
    padding = "#" * 1_000_000
    line = "y = [" + ", ".join([call] * 2000) + "]  " + padding
    (tmp_path / "minified.py").write_text(f"import torch\n{line}\n", encoding="utf-8")
    result = run_cli("--no-cache", "minified.py", cwd=tmp_path)
    excerpts = [text for text in result.stdout.splitlines() if text.startswith("2 | ")]
    assert len(excerpts) == 2000 and len(result.stdout) < 1_500_000
    assert max(len(text) for text in excerpts) <= len("2 | ") + 160 + 2
    # the excerpt still shows the finding's own call, with the caret under its start
    lines = result.stdout.splitlines()
    last = lines.index(excerpts[-1])
    caret = lines[last + 1].index("^") - len("  | ")
    assert excerpts[-1][len("2 | ") + caret :].startswith(call)


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    """A flagged line and a file name carrying escape sequences are shown with them made visible."""
    line = 'y = torch.log(torch.softmax(x, dim=1))  # "\x1b]0;owned\x07\x1b[2J\x9b31m"\n'
    name = "evil\x1b[31m.py"
    (tmp_path / name).write_text(f"import torch\n{line}", encoding="utf-8")
    for output_format in ("full", "concise", "github"):
        result = run_cli("--no-cache", "--output-format", output_format, ".", cwd=tmp_path)
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\x9b" not in result.stdout
        assert "evil\u241b[31m.py" in result.stdout
    full = run_cli("--no-cache", ".", cwd=tmp_path).stdout
    assert '# "\u241b]0;owned\u2407\u241b[2J\ufffd31m"' in full


def test_a_file_name_that_is_not_utf8_never_breaks_the_output(tmp_path: Path) -> None:
    """Shown with a replacement character, read and written under its real bytes, and in SARIF
    percent-encoded from those bytes; under a strict UTF-8 stdout, and after fixes are written."""
    name = os.fsdecode(b"caf\xe9.py")
    (tmp_path / name).write_bytes(AMP_VIDEO.read_bytes())
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    for output_format in ("full", "concise", "github"):
        result = run_cli("--no-cache", "--output-format", output_format, ".", cwd=tmp_path, env=strict)
        assert "caf\ufffd.py" in result.stdout and "Traceback" not in result.stderr
        assert result.returncode == 1
    records = json.loads(run_cli("--no-cache", "--output-format", "json", ".", cwd=tmp_path, env=strict).stdout)
    assert records[0]["filename"].endswith("caf\ufffd.py")
    sarif = json.loads(run_cli("--no-cache", "--output-format", "sarif", ".", cwd=tmp_path, env=strict).stdout)
    location = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "caf%E9.py"
    fixed = run_cli("--no-cache", "--fix", "--unsafe-fixes", "--show-fixes", ".", cwd=tmp_path, env=strict)
    assert fixed.returncode == 0 and "- caf\ufffd.py:" in fixed.stdout, fixed.stderr
    assert b"dtype=torch.bfloat16" in (tmp_path / name).read_bytes()
