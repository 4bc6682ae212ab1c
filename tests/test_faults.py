"""Nothing lost, nothing hung, nothing written outside: the command line under faults. A file
edited while ``--fix`` works on it, SIGTERM, Ctrl-C and SIGKILL in the middle of a run, one file
failing in a ``--fix`` run, a bug escaping the run, a symbolic link out of the tree, and a checkout
that plants a module where ``python -m`` would import it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, default_sigint, run_cli

LOG_OF_SOFTMAX = "import torch\n\n\ndef loss(logits):\n    return torch.log(torch.softmax(logits, dim=1))\n"
FIXED = LOG_OF_SOFTMAX.replace("torch.log(torch.softmax(logits, dim=1))", "torch.log_softmax(logits, dim=1)")


def run_cli_with(prelude: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line's ``main``, in a process that first runs ``prelude`` (a hook)."""
    program = f"{prelude}\nimport sys\nfrom trainlint.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=300,
    )


# -- a file edited by the user while --fix works on it ---------------------------------------------
EDITOR_SAVES = '''
from trainlint.rule import Rule

class EditorSaves(Rule):
    """## What it does
    Test hook: the user's editor saves `edited.py` after trainlint read it, before it writes.
    ## Why is this bad?
    It is a test.
    """

    code = "TL997"
    name = "test-editor-saves"
    summary = "saves edited.py while it is being linted"

    def check(self, ctx):
        path = ctx.real_path
        if path is not None and path.name == "edited.py" and "# saved" not in path.read_text():
            with open(path, "a") as stream:
                stream.write("# saved by the user's editor\\n")
        return iter(())
'''


def test_a_file_edited_during_fix_keeps_the_users_edit(tmp_path: Path) -> None:
    for index in range(9):  # enough files for the worker pool
        (tmp_path / f"f{index}.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    (tmp_path / "edited.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    result = run_cli_with(EDITOR_SAVES, "--fix", "--jobs", "2", "--output-format", "concise", ".", cwd=tmp_path)
    assert (tmp_path / "edited.py").read_text(encoding="utf-8") == LOG_OF_SOFTMAX + "# saved by the user's editor\n"
    assert all((tmp_path / f"f{index}.py").read_text(encoding="utf-8") == FIXED for index in range(9))
    assert result.stdout.splitlines() == [
        "edited.py:1:1: TL002 fixes not written: the file changed during the run "
        "(your edit is kept; run trainlint again)",
        "Found 10 errors (9 fixed, 1 remaining).",
    ], result.stderr
    assert result.returncode == 1


# -- stopping a run: SIGTERM, Ctrl-C, SIGKILL ------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(status.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its exit status is left


def _alive_after(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [pid for pid in pids if _alive(pid)]


def _slow_fix_run(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A `--fix` run over 24 files of 200 fixable findings each (seconds of work per file), with
    its two workers started and busy for a moment."""
    body = "".join(f"def loss_{i}(logits):\n    return torch.log(torch.softmax(logits, dim=1))\n\n" for i in range(200))
    for index in range(24):
        (tmp_path / f"m{index:02}.py").write_text("import torch\n\n" + body, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "trainlint", "--no-cache", "--fix", "--jobs", "2", "."],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    return process, _children(process.pid)


def _every_file_whole(tmp_path: Path) -> None:
    """Each file is as it was or fully fixed, and no temporary file is left behind."""
    for path in tmp_path.glob("m*.py"):
        text = path.read_text(encoding="utf-8")
        assert text.count("torch.log(torch.softmax(") in (0, 200), path
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
@pytest.mark.parametrize(("sent", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_sigterm_or_ctrl_c_stops_the_run_and_its_workers(tmp_path: Path, sent: int, status: int, name: str) -> None:
    process, workers = _slow_fix_run(tmp_path)
    assert len(workers) == 2
    process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=30)
    assert _alive_after(workers, 1.0) == []
    assert (process.returncode, stdout) == (status, "")
    assert stderr == (
        f"trainlint: interrupted by {name}: stopped before the report "
        "(a file is either fixed completely or left as it was)\n"
    )
    _every_file_whole(tmp_path)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_workers_of_a_killed_run_die_and_write_nothing_more(tmp_path: Path) -> None:
    process, workers = _slow_fix_run(tmp_path)
    process.kill()  # kill -9: the main process cannot clean anything up
    process.communicate(timeout=30)
    assert _alive_after(workers, 1.0) == []
    written = {path.name: path.read_bytes() for path in tmp_path.glob("m*.py")}
    time.sleep(1.0)
    assert {path.name: path.read_bytes() for path in tmp_path.glob("m*.py")} == written
    _every_file_whole(tmp_path)


# -- one file's failure is one file's finding --------------------------------------------------------
def _deeply_nested_notebook(depth: int) -> str:
    """A notebook whose metadata nests ``depth`` lists (JSON accepts it) with one fixable cell."""
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": LOG_OF_SOFTMAX}
    metadata = '{"kernelspec": {"language": "python", "name": "python3"}, "deep": %s}' % ("[" * depth + "]" * depth)
    return '{"cells": [%s], "metadata": %s, "nbformat": 4, "nbformat_minor": 5}\n' % (json.dumps(cell), metadata)


def test_a_recursion_error_in_one_notebook_does_not_end_the_fix_run(tmp_path: Path) -> None:
    for index in range(9):
        (tmp_path / f"f{index}.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    notebook = _deeply_nested_notebook(950)
    (tmp_path / "deep.ipynb").write_text(notebook, encoding="utf-8")
    result = run_cli("--fix", "--jobs", "2", "--output-format", "concise", ".", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    first, summary = result.stdout.splitlines()
    assert first.startswith("deep.ipynb:1:1: TL003 internal error while checking this file: RecursionError: ")
    assert summary == "Found 10 errors (9 fixed, 1 remaining)."
    assert result.returncode == 1
    assert (tmp_path / "deep.ipynb").read_text(encoding="utf-8") == notebook
    assert all((tmp_path / f"f{index}.py").read_text(encoding="utf-8") == FIXED for index in range(9))
    [cache] = (tmp_path / ".trainlint_cache").glob("*.json")  # the cache still comes out
    assert sorted(Path(p).name for p in json.loads(cache.read_text())["files"]) == [f"f{i}.py" for i in range(9)]


def test_an_error_escaping_the_run_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    broken_report = "import trainlint.output\ndef summary(*args):\n    raise RuntimeError('boom')\ntrainlint.output.summary = summary\n"
    result = run_cli_with(broken_report, "--output-format", "concise", "train.py", cwd=tmp_path)
    assert result.returncode == 2  # not 1, which says "findings remain"
    assert re.fullmatch(r"trainlint: error: internal error \(please report it\): RuntimeError: boom at cli\.py:\d+\n", result.stderr)


# -- nothing written outside the linted tree ---------------------------------------------------------
def test_a_symlink_out_of_the_tree_is_reported_not_written_through(tmp_path: Path) -> None:
    outside, project = tmp_path / "outside", tmp_path / "project"
    outside.mkdir()
    project.mkdir()
    (outside / "victim.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    (project / "link.py").symlink_to(outside / "victim.py")
    (project / "own.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    result = run_cli("--no-cache", "--fix", "--output-format", "concise", ".", cwd=project)
    assert (outside / "victim.py").read_text(encoding="utf-8") == LOG_OF_SOFTMAX
    assert (project / "link.py").is_symlink() and (project / "own.py").read_text(encoding="utf-8") == FIXED
    io_error, tl202, summary = result.stdout.splitlines()
    assert io_error == (
        f"link.py:1:1: TL002 fixes not written: it is a symbolic link to {outside.resolve() / 'victim.py'}, "
        "outside the linted tree"
    )
    assert tl202.startswith("link.py:5:12: TL202 ")  # still there: nothing was written
    assert summary == "Found 3 errors (1 fixed, 2 remaining)."
    assert result.returncode == 1


def test_python_m_trainlint_and_the_corpus_run_never_import_from_the_checkout(tmp_path: Path) -> None:
    """A checkout's `libcst.py` would be imported by `python -m trainlint` run inside it (Python
    puts the current directory first on sys.path); neither trainlint nor its benchmarks run it."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    marker = tmp_path / "imported"
    (checkout / "libcst.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('planted')\n")
    (checkout / "train.py").write_text(LOG_OF_SOFTMAX, encoding="utf-8")
    direct = run_cli("--no-cache", "--output-format", "concise", ".", cwd=checkout)
    assert direct.stdout.startswith("train.py:5:12: TL202 ") and direct.returncode == 1
    corpus = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "corpus_run.py"), str(checkout)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert corpus.returncode == 0, corpus.stderr
    assert "| checkout | 2 | " in corpus.stdout and "{'TL202': 1}" in corpus.stdout
    assert not marker.exists()
