"""Fixes that only work together: a NaN/Inf check on still-scaled gradients that `continue`s.

As written, the check sees the overflow that the scaler was meant to handle and skips the step
behind the scaler's back: the scale never backs off and no step is ever applied. Moving
`unscale_` before the check (TL101) alone makes the next iteration's `unscale_` raise; the repair
also needs the gradients cleared (TL107) and `scaler.update()` (TL109) before the `continue`.
`trainlint --fix` must write all of it in one run, and the step it leaves must train.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.test_rules import linter_for

COMPOSE = FIXTURES / "compose"
ORIGINAL = COMPOSE / "nan_check_before_unscale.py"
REPAIRED = COMPOSE / "nan_check_before_unscale.fixed.py"
BATCHES = 120


def test_fix_writes_the_whole_repair_in_one_run(tmp_path: Path) -> None:
    copy = tmp_path / ORIGINAL.name
    shutil.copy(ORIGINAL, copy)
    result = run_cli("--fix", "--show-fixes", "--no-cache", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for code in ("TL101", "TL107", "TL109"):
        assert code in result.stdout
    assert copy.read_text(encoding="utf-8") == REPAIRED.read_text(encoding="utf-8")
    again = run_cli("--no-cache", str(copy), cwd=tmp_path)
    assert again.returncode == 0, again.stdout


def test_tl101_alone_leaves_a_step_that_crashes(tmp_path: Path) -> None:
    """Why the fixes must compose: TL101's edit by itself is only half of the repair."""
    torch = pytest.importorskip("torch")
    source = ORIGINAL.read_text(encoding="utf-8")
    only_tl101 = linter_for("TL101").fix(source, ORIGINAL.name, None, unsafe_fixes=False).text
    assert only_tl101 != source
    module = _load(tmp_path / "only_tl101.py", only_tl101)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        _train(torch, module)


def test_the_original_step_never_trains(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    outcome = _train(torch, _load(tmp_path / "original.py", ORIGINAL.read_text(encoding="utf-8")))
    assert outcome["applied"] == 0
    assert outcome["scale"] == 2.0**24  # never backed off
    assert outcome["loss_after"] == pytest.approx(outcome["loss_before"])


def test_the_repaired_step_runs_and_trains(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    copy = tmp_path / "repaired.py"
    shutil.copy(ORIGINAL, copy)
    assert run_cli("--fix", "--no-cache", str(copy), cwd=tmp_path).returncode == 0
    outcome = _train(torch, _load(copy, copy.read_text(encoding="utf-8")))  # raises if the step is broken
    assert outcome["applied"] >= 100  # only the overflowing steps are skipped (109 of 120 measured)
    assert outcome["scale"] < 2.0**24  # the scaler saw the overflows and backed off
    assert outcome["loss_after"] < outcome["loss_before"] / 10


def _load(path: Path, text: str) -> ModuleType:
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"compose_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(torch: Any, module: ModuleType) -> dict[str, float]:
    """Run the fixture's ``train`` on a small CPU regression in float16 autocast, with a scale
    (2**24) large enough that the first steps overflow, counting the optimizer steps applied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    weights = torch.randn(16, 1)
    batches = [(x, x @ weights) for x in (torch.randn(32, 16) for _ in range(BATCHES))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    applied = 0
    step = optimizer.step

    def counting_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal applied
        applied += 1
        return step(*args, **kwargs)

    optimizer.step = counting_step  # scaler.step calls it only for a step it does not skip
    inputs = torch.cat([x for x, _ in batches[:8]])
    targets = torch.cat([y for _, y in batches[:8]])
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(model(inputs), targets).item()
    module.train(model, batches, optimizer, scaler)
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(model(inputs), targets).item()
    return {"applied": applied, "scale": scaler.get_scale(), "loss_before": before, "loss_after": after}


def test_a_skip_flag_gets_its_update_and_its_clear_in_one_else(tmp_path: Path) -> None:
    """TL109 and TL107 both repair the side of `if not skip_update:` that skips: the first adds
    the `else:`, the second writes into it; a second run changes nothing."""
    original = COMPOSE / "skip_flag_after_unscale.py"
    copy = tmp_path / original.name
    shutil.copy(original, copy)
    result = run_cli("--fix", "--show-fixes", "--no-cache", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TL107" in result.stdout and "TL109" in result.stdout
    repaired = (COMPOSE / "skip_flag_after_unscale.fixed.py").read_text(encoding="utf-8")
    assert copy.read_text(encoding="utf-8") == repaired
    assert repaired.count("else:") == 1
    run_cli("--fix", "--no-cache", str(copy), cwd=tmp_path)
    assert copy.read_text(encoding="utf-8") == repaired
