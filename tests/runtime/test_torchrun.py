"""``trainlint smoke`` under torchrun: two CPU processes with gloo; each records, rank 0 reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from conftest import ROOT, RUNTIME_FIXTURES  # noqa: E402


def test_each_rank_records_and_rank_zero_reports(tmp_path):
    temp, json_path = tmp_path / "tmp", tmp_path / "smoke.json"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "trainlint", "smoke", "--steps", "5", "--seed", "3", "--json", str(json_path),
        str(RUNTIME_FIXTURES / "ddp_train.py"), "--unused", "x",
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
    assert not [p for p in temp.iterdir() if p.name.startswith("trainlint")]  # rank 1's record: read, removed
    data = json.loads(json_path.read_text())
    assert {k: data[k] for k in ("script", "args", "device", "seed", "world_size")} == {
        "script": str(RUNTIME_FIXTURES / "ddp_train.py"), "args": ["--unused", "x"], "device": "cpu", "seed": 3,
        "world_size": 2,
    }
    assert data["torch"].startswith("2.")
    ranks = data["runs"]["smoke"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["record"]["rank"] for r in ranks] == [0, 1]
    assert all(len(r["record"]["steps"]) == 5 for r in ranks)
    # Each rank's own loss (its shard), the same averaged gradient.
    losses = [[s["loss"] for s in r["record"]["steps"]] for r in ranks]
    norms = [[s["grad_norm"] for s in r["record"]["steps"]] for r in ranks]
    assert losses[0] != losses[1] and norms[0] == norms[1]
