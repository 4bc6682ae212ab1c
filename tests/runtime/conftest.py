"""Shared helpers for the runtime companion's tests: small real training loops and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FIXTURES = ROOT / "tests" / "fixtures" / "runtime"


def run_trainlint(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m trainlint ARGS`` in a fresh process, one thread, as CI runs it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "trainlint", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests train tiny models; one thread is faster on a shared machine and deterministic."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
