"""``trainlint smoke`` through the real command line, on scripts under tests/fixtures/runtime."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from conftest import RUNTIME_FIXTURES, run_trainlint  # noqa: E402


def rows(stdout: str) -> dict[str, str]:
    """The report table as {label: value}."""
    table = {}
    for line in stdout.splitlines():
        label, _, value = line.partition("  ")
        if value.strip():
            table[label.strip()] = value.strip()
    return table


def test_healthy_script_with_arguments_stops_after_n_steps(tmp_path):
    out = tmp_path / "smoke.json"
    result = run_trainlint(
        "smoke", "--steps", "7", "--json", str(out),
        str(RUNTIME_FIXTURES / "args_train.py"), "--lr", "0.05", "--hidden", "16", "--epochs", "50",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "args: lr=0.05 hidden=16 epochs=50" in result.stdout  # its own options reached it
    assert "finished all epochs" not in result.stdout  # stopped after 7 steps, not 50
    table = rows(result.stdout)
    assert table["verdict"] == "healthy" and table["optimizer steps"] == "7 applied / 7"
    report = json.loads(out.read_text())["runs"]["smoke"]["report"]
    assert report["steps_run"] == 7 and report["loss_fell"] is True and report["stopped_at_limit"]


def test_script_that_raises_is_reported_unhealthy_with_its_traceback():
    result = run_trainlint("smoke", "--steps", "5", str(RUNTIME_FIXTURES / "raises.py"))
    assert result.returncode == 1
    table = rows(result.stdout)
    assert table["verdict"] == "unhealthy" and table["optimizer steps"] == "3 applied / 3"
    assert table["exception"].startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert 'raises.py", line 11' in result.stderr  # the traceback points into the user's script


def test_script_that_never_steps_an_optimizer_is_unhealthy():
    result = run_trainlint("smoke", str(RUNTIME_FIXTURES / "no_optimizer.py"))
    assert result.returncode == 1
    assert "done without stepping" in result.stdout  # it ran to its end
    assert "unhealthy: 5 backward passes but no optimizer step" in result.stdout
    assert "warning: optimizers created but never stepped" not in result.stdout


def test_cuda_mixed_precision_runs_as_cpu_float16_and_says_so(tmp_path):
    png, out = tmp_path / "smoke.png", tmp_path / "smoke.json"
    result = run_trainlint(
        "smoke", "--steps", "30", "--device", "cpu", "--png", str(png), "--json", str(out),
        str(RUNTIME_FIXTURES / "cuda_amp_train.py"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())["runs"]["smoke"]["report"]
    # 2**24 overflows float16 gradients: the scaler skips and halves it until it does not (in
    # float32, as unmapped CUDA autocast would run on a CPU, nothing overflows and nothing skips).
    skipped = report["steps_skipped"]
    assert skipped >= 3 and report["steps_run"] == 30
    assert report["scale_first"] == 2.0**24 and report["scale_last"] == 2.0 ** (24 - skipped)
    mapping = (
        'note: cpu mapping: torch.autocast("cuda", float16) ran as torch.autocast("cpu", float16); '
        'GradScaler("cuda") ran as GradScaler("cpu"); .cuda() and device "cuda" ran on the CPU'
    )
    assert mapping in result.stdout
    assert "note: results may differ on a GPU" in result.stdout
    assert f"wrote {png}" in result.stdout or "PNG not written: matplotlib is not installed" in result.stdout


def test_usage_errors_exit_2():
    missing = run_trainlint("smoke", "no/such/script.py")
    assert missing.returncode == 2 and "no such script: no/such/script.py" in missing.stderr
    wrong_device = run_trainlint("smoke", "--device", "tpu", str(RUNTIME_FIXTURES / "raises.py"))
    assert wrong_device.returncode == 2 and "--device must be auto, cpu or cuda" in wrong_device.stderr
