"""The command line as a user runs it: options, exit codes (0 clean, 1 findings, 2 usage or
configuration error with one line naming the problem), stdin, rule selection, --list-rules,
--explain, --version, and a directory of 1,000 generated files linted identically by any --jobs.

Most cases run the real ``trainlint`` in a subprocess; the many usage-error cases call the same
entry point (``trainlint.cli.main``) in-process, which is what the console script runs."""

from __future__ import annotations

import io
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.conftest import FIXTURES, ROOT, run_cli
from trainlint import DISTRIBUTION, __version__
from trainlint.cli import main
from trainlint.docs import render_page
from trainlint.rule import all_rules

AMP_VIDEO = FIXTURES / "cli" / "amp_video.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(AMP_VIDEO, tmp_path / "train.py")
    (tmp_path / "clean.py").write_text("import torch\n\nx = torch.zeros(3)\n", encoding="utf-8")
    return tmp_path


def run_main(arguments: list[str], capsys, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- exit codes ------------------------------------------------------------------------------------


def test_exit_codes_0_1_and_default_path(project: Path) -> None:
    dirty = run_cli("--no-cache", cwd=project)  # no path: "."
    assert dirty.returncode == 1 and "train.py:15:14: TL108" in dirty.stdout
    clean = run_cli("--no-cache", "clean.py", cwd=project)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "All checks passed!\n", "")
    zero = run_cli("--no-cache", "--exit-zero", cwd=project)
    assert zero.returncode == 0 and "TL108" in zero.stdout


USAGE_ERRORS = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--output-format", "xml"], "argument --output-format: invalid choice: 'xml'"),
    (["--jobs", "-1"], "argument --jobs: must be 0 (all cores) or more"),
    (["--jobs", "many"], "argument --jobs/-j: invalid int value: 'many'"),
    (["--explain", "TL999"], "argument --explain: unknown rule code 'TL999'"),
    (["--select", "TL9"], "--select: unknown rule code or prefix 'TL9'"),
    (["--ignore", "E501"], "--ignore: unknown rule code or prefix 'E501'"),
    (["--extend-select", "X"], "--extend-select: unknown rule code or prefix 'X'"),
    (["-", "train.py"], "'-' (stdin) cannot be combined with other paths"),
    (["--config", "missing.toml"], "--config: missing.toml: no such file"),
]


@pytest.mark.parametrize("arguments,message", USAGE_ERRORS, ids=[m for _, m in USAGE_ERRORS])
def test_usage_errors_exit_2_with_one_line(project: Path, monkeypatch, capsys, arguments, message) -> None:
    monkeypatch.chdir(project)
    code, out, err = run_main(["--no-cache", *arguments], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("trainlint: error: ") and message in err


def test_usage_error_through_a_real_process(project: Path) -> None:
    result = run_cli("--output-format", "xml", ".", cwd=project)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "trainlint: error: argument --output-format: invalid choice: 'xml' "
        "(choose from 'full', 'concise', 'json', 'sarif', 'github')\n"
    )


def test_version_names_the_distribution() -> None:
    """`trainlint --version` tells this project from the other `trainlint` on the package index."""
    version = run_cli("--version")
    assert (version.returncode, version.stdout) == (0, f"trainlint {__version__} ({DISTRIBUTION})\n")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == DISTRIBUTION
    assert pyproject["project"]["scripts"] == {"trainlint": "trainlint.cli:main"}


def test_help_lists_every_option_and_command_in_plain_text() -> None:
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    for option in (
        "--fix", "--unsafe-fixes", "--diff", "--show-fixes", "--select", "--ignore", "--extend-select",
        "--output-format", "--statistics", "--exit-zero", "--list-rules", "--explain", "--config",
        "--no-cache", "--jobs", "--quiet", "--exit-non-zero-on-fix", "--version", "--stdin-filename",
        "--add-noqa", "--output-file", "--watch", "--show-files", "--show-settings",
    ):
        assert option in help_text.stdout, option
    for command in ("check", "smoke", "confirm", "server"):
        assert re.search(rf"^  {command} ", help_text.stdout, re.MULTILINE), command
    assert run_cli("check", "--help").stdout == help_text.stdout
    server_help = run_cli("server", "--help")
    assert server_help.returncode == 0 and "Language Server Protocol" in server_help.stdout
    for text in (help_text.stdout, server_help.stdout):
        assert "`" not in text and ":ref:" not in text and ".. " not in text  # no reST or markdown markup


def test_check_subcommand_is_the_lint_command(project: Path) -> None:
    plain = run_cli("--no-cache", "--output-format", "concise", "train.py", cwd=project)
    check = run_cli("check", "--no-cache", "--output-format", "concise", "train.py", cwd=project)
    assert (check.returncode, check.stdout) == (plain.returncode, plain.stdout) == (1, plain.stdout)
    assert "train.py:15:14: TL108" in check.stdout


# -- rule selection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments,expected",
    [
        (["--select", "TL1"], 1),  # a prefix
        (["--select", "TL108"], 1),
        (["--select", "tl10"], 1),  # case does not matter
        (["--select", "TL001,TL002"], 0),
        (["--ignore", "TL1"], 0),
        (["--select", "TL1", "--ignore", "TL108"], 0),
        (["--select", "TL001", "--extend-select", "TL10"], 1),
    ],
)
def test_select_ignore_extend_select(project: Path, monkeypatch, capsys, arguments, expected) -> None:
    monkeypatch.chdir(project)
    code, out, _ = run_main(["--no-cache", "--jobs", "1", "--output-format", "concise", *arguments, "train.py"], capsys)
    assert code == expected
    assert ("train.py:15:14: TL108 " in out) == bool(expected)


def test_list_rules_is_a_table_of_every_rule(project: Path) -> None:
    result = run_cli("--list-rules", "--ignore", "TL108", cwd=project)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["code", "name", "fix", "on", "summary"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == list(all_rules())
    assert rows["TL001"][1:4] == ["syntax-error", "-", "yes"]
    assert rows["TL004"][3] == "no"  # off by default
    assert rows["TL108"][1:4] == ["fp16-autocast-conv3d", "unsafe", "no"]  # --ignore shows


def test_explain_prints_the_rule_page(monkeypatch, capsys) -> None:
    code, out, _ = run_main(["--explain", "tl108"], capsys)
    assert code == 0 and out == render_page(all_rules()["TL108"])
    page = ROOT / "rules" / "TL108.md"
    if page.exists():
        assert out == page.read_text(encoding="utf-8")
    result = run_cli("--explain", "TL001")
    assert result.returncode == 0 and result.stdout.startswith("# TL001: syntax-error\n")


# -- stdin -----------------------------------------------------------------------------------------


def test_stdin_is_linted_and_named(project: Path) -> None:
    source = AMP_VIDEO.read_text(encoding="utf-8")
    plain = run_cli("--no-cache", "--output-format", "concise", "-", stdin=source, cwd=project)
    assert plain.returncode == 1 and plain.stdout.startswith("-:15:14: TL108 ")
    named = run_cli("--output-format", "concise", "-", "--stdin-filename", "src/train.py", stdin=source, cwd=project)
    assert named.stdout.startswith("src/train.py:15:14: TL108 ")
    assert not (project / ".trainlint_cache").exists()  # stdin is never cached
    clean = run_cli("-", stdin="import torch\n", cwd=project)
    assert (clean.returncode, clean.stdout) == (0, "All checks passed!\n")


def test_python_warnings_about_the_linted_code_are_not_echoed(tmp_path: Path) -> None:
    # Python's parser warns about `"\d"` and `x is 1` (a SyntaxWarning, shown by default from
    # Python 3.12; PYTHONWARNINGS=always shows it on any version). Both the file and the local
    # module the project index reads are parsed by Python: neither may print to stderr.
    odd = 'PATTERN = "\\d+"\nSAME = PATTERN is 1\n'
    (tmp_path / "helpers.py").write_text(odd, encoding="utf-8")
    (tmp_path / "train.py").write_text("import torch\nfrom helpers import PATTERN\n" + odd, encoding="utf-8")
    result = run_cli("--no-cache", ".", cwd=tmp_path, env={"PYTHONWARNINGS": "always"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "All checks passed!\n", "")


def test_stdin_filename_finds_its_configuration(project: Path, monkeypatch, capsys) -> None:
    (project / "sub").mkdir()
    (project / "sub" / "pyproject.toml").write_text(
        '[tool.trainlint]\nper-file-ignores = { "legacy/*" = ["TL108"] }\n', encoding="utf-8"
    )
    monkeypatch.chdir(project)
    source = AMP_VIDEO.read_bytes()
    code, out, _ = run_main(["-", "--stdin-filename", "sub/legacy/train.py"], capsys, source, monkeypatch)
    assert (code, out) == (0, "All checks passed!\n")
    code, out, _ = run_main(["-", "--stdin-filename", "sub/new/train.py"], capsys, source, monkeypatch)
    assert code == 1


def test_stdin_that_cannot_be_decoded(project: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(project)
    code, out, _ = run_main(["--output-format", "concise", "-"], capsys, b"import torch\n\xff\n", monkeypatch)
    assert code == 1 and out.splitlines()[0] == "-:2:1: TL001 cannot decode: byte 0xff is not valid utf-8"


# -- many files, in parallel -----------------------------------------------------------------------


def _generate(root: Path, count: int) -> dict[str, int]:
    """count files in 10 packages: every 10th has TL108, every 50th a syntax error, a fifth are
    clean torch code and the rest plain Python that never mentions torch (skipped before
    parsing, as in a real repository's utility modules); returns the expected findings per code."""
    source = AMP_VIDEO.read_text(encoding="utf-8")
    fixed = source.replace('torch.autocast("cuda")', 'torch.autocast("cuda", dtype=torch.bfloat16)')
    expected = {"TL108": 0, "TL001": 0}
    for index in range(count):
        package = root / f"pkg{index % 10}"
        package.mkdir(exist_ok=True)
        if index % 50 == 7:
            text, code = "import torch\nx = (\n", "TL001"
        elif index % 10 == 3:
            text, code = source, "TL108"
        elif index % 10 == 5:
            text, code = fixed, None
        elif index % 10 == 9:
            text, code = f"import torch\n\n\ndef f{index}(x):\n    return torch.relu(x) * {index}\n", None
        else:
            text, code = f"import os\n\n\ndef path{index}(name):\n    return os.path.join('data', name)\n", None
        (package / f"m{index:04}.py").write_text(text, encoding="utf-8")
        if code:
            expected[code] += 1
    return expected


def test_a_thousand_files_with_any_number_of_jobs(tmp_path: Path) -> None:
    expected = _generate(tmp_path, 1000)
    started = time.perf_counter()
    serial = run_cli("--no-cache", "--jobs", "1", "--output-format", "concise", ".", cwd=tmp_path)
    serial_seconds = time.perf_counter() - started
    parallel = run_cli("--no-cache", "--jobs", "2", "--output-format", "concise", ".", cwd=tmp_path)
    assert parallel.stdout == serial.stdout and parallel.returncode == serial.returncode == 1
    lines = serial.stdout.splitlines()
    assert lines[-1] == (
        f"Found {expected['TL001']} errors and {expected['TL108']} warnings. "
        f"{expected['TL108']} more fixable with `--fix --unsafe-fixes`."
    )
    findings = lines[:-1]
    assert sum(" TL108 " in line for line in findings) == expected["TL108"]
    assert sum(" TL001 " in line for line in findings) == expected["TL001"]
    keys = [(line.split(":")[0], int(line.split(":")[1]), int(line.split(":")[2])) for line in findings]
    assert keys == sorted(keys)  # by path, line, column
    assert serial_seconds < 120, f"1,000 files took {serial_seconds:.1f}s"


def test_every_install_line_names_this_distribution() -> None:
    """`pip install trainlint` installs another project: the README never tells anyone to."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    installs = 0
    for line in readme.splitlines():
        if "pip install" not in line or line.lstrip().startswith("Do not"):
            continue
        command = line.split("pip install", 1)[1].split("&&")[0].split("#")[0]
        words = [word.strip("'\"`),.") for word in command.split()]
        assert not any(word == "trainlint" or word.startswith("trainlint[") for word in words), line
        installs += "torch-trainlint" in command or ".[" in command
    assert installs >= 5  # the editable install, the package, CI, flake8, the lsp and runtime extras
