"""``trainlint smoke`` under torchrun: two CPU processes with gloo; each records, rank 0 reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from conftest import ROOT, RUNTIME_FIXTURES  # noqa: E402


def test_each_rank_records_and_rank_zero_reports(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRAINLINT_RANK_DIR": str(tmp_path)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "trainlint", "smoke", "--steps", "5", str(RUNTIME_FIXTURES / "ddp_train.py"),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("trainlint smoke:") == 1 and "on cpu, 2 ranks" in out  # only rank 0 prints
    rank_lines = [line for line in out.splitlines() if line.startswith("rank ")]
    assert [line.split(":")[0] for line in rank_lines] == ["rank 0", "rank 1"]
    assert all("healthy, 5 steps" in line for line in rank_lines)
    # DDP averages the gradients: both ranks step with the same gradient norm, on their own losses.
    norms = {line.rsplit("grad norm max ", 1)[1] for line in rank_lines}
    assert len(norms) == 1
    assert "cpu mapping" not in out  # gloo names the CUDA device; nothing was run on it
    assert list(tmp_path.iterdir()) == []  # rank 1's record was read and removed
