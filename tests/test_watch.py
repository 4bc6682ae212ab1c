"""`--watch`: lint, wait, lint again when a file changes, until Ctrl-C (SIGINT), which ends it
with status 0 and no traceback."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import FIXTURES, default_sigint

AMP_VIDEO = (FIXTURES / "cli" / "amp_video.py").read_text(encoding="utf-8")


class Output:
    """The lines a running process prints, readable with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.seen) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} in {''.join(self.seen)!r}"
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue


def test_watch_lints_again_on_change_until_ctrl_c(tmp_path: Path) -> None:
    train = tmp_path / "train.py"
    train.write_text("import torch\n\nx = torch.zeros(3)\n", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "trainlint", "--watch", "--output-format", "concise", "."],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        preexec_fn=default_sigint,
    )
    try:
        output = Output(process.stdout)
        output.wait_for("Starting trainlint in watch mode...")
        output.wait_for("All checks passed!")
        train.write_text(AMP_VIDEO, encoding="utf-8")
        output.wait_for("File change detected...")
        output.wait_for("train.py:15:14: TL108 ")
        output.wait_for("Found 1 warning.")
        (tmp_path / "other.py").write_text("import torch\n", encoding="utf-8")  # a new file is seen too
        output.wait_for("File change detected...", count=2)
        output.wait_for("Found 1 warning.", count=2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
