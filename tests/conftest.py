from __future__ import annotations

import os
import pty
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "trainlint", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture
def cli():
    return run_cli


def run_on_a_terminal(arguments: list[str], cwd: Path, env: dict[str, str], terminal: str = "stdout") -> tuple[str, str]:
    """Run the real command line with its stdout or stderr (``terminal``) on a pseudo-terminal and
    the other stream in a file (a pipe could fill and block); returns (stdout, stderr)."""
    leader, follower = pty.openpty()
    with tempfile.TemporaryFile() as other:
        streams = {"stdout": follower, "stderr": other} if terminal == "stdout" else {"stdout": other, "stderr": follower}
        try:
            process = subprocess.Popen([sys.executable, "-m", "trainlint", *arguments], cwd=cwd, env=env, **streams)
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            process.wait(timeout=120)
        finally:
            os.close(leader)
        other.seek(0)
        on_terminal, in_file = b"".join(chunks).decode(), other.read().decode()
    return (on_terminal, in_file) if terminal == "stdout" else (in_file, on_terminal)


def default_sigint() -> None:
    """For a child that the test interrupts with SIGINT: a shell that starts jobs in the background
    (``nohup``, ``&``) hands them SIGINT ignored, and Python then keeps it ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
