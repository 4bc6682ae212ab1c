"""`trainlint ... | head`: a reader that goes away ends trainlint quietly, as it ends `git log`.

Each case runs the real command line with its stdout on a pipe whose reading end is already
closed, so the first write fails with EPIPE whatever the output's size: no traceback and no
"Exception ignored" on stderr, and the status a shell shows for a program ended by SIGPIPE.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

SIGPIPE_STATUS = 141


def run_into_closed_pipe(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    reader, writer = os.pipe()
    os.close(reader)  # the `head` that has already read all it wanted
    try:
        return subprocess.run(
            [sys.executable, "-m", "trainlint", *arguments],
            cwd=cwd,
            stdout=writer,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=120,
        )
    finally:
        os.close(writer)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "cli" / "amp_video.py", tmp_path / "train.py")
    shutil.copy(FIXTURES / "cli" / "log_softmax.py", tmp_path / "loss.py")
    return tmp_path


@pytest.mark.parametrize(
    "arguments,status",
    [
        (["--no-cache", "."], SIGPIPE_STATUS),
        (["--no-cache", "--output-format", "json", "."], SIGPIPE_STATUS),
        (["--no-cache", "--diff", "."], SIGPIPE_STATUS),
        (["--list-rules"], SIGPIPE_STATUS),
        (["--explain", "TL101"], SIGPIPE_STATUS),
        (["--help"], 0),  # argparse prints the help and ignores a failed write itself
        (["--version"], SIGPIPE_STATUS),
    ],
    ids=["lint", "json", "diff", "list-rules", "explain", "help", "version"],
)
def test_a_closed_pipe_ends_the_run_quietly(project: Path, arguments: list[str], status: int) -> None:
    result = run_into_closed_pipe(arguments, project)
    assert result.stderr.decode() in ("", "Would fix 1 error in 1 file.\n")  # --diff's summary is on stderr
    assert result.returncode == status


def test_head_reads_the_first_line_and_the_pipeline_is_quiet(project: Path) -> None:
    """The shell pipeline a user types, with more output than a pipe buffers."""
    for index in range(120):  # about 80 kB of output, more than a pipe holds
        shutil.copy(project / "train.py", project / f"copy_{index}.py")
    pipeline = f"{sys.executable} -m trainlint --no-cache --jobs 2 --output-format full . | head -n 1"
    result = subprocess.run(
        ["bash", "-c", pipeline], cwd=project, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}
    )
    assert result.stdout.count("\n") == 1 and " TL108 " in result.stdout
    assert result.stderr == ""
