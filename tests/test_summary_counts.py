"""The summary line tells the truth: a finding that `--fix` removes counts as fixable even when
its own fix exists only after another fix lands (TL103 and TL109 after TL101); the number that
`--fix` then reports matches; after `--fix` the unsafe fixes left are counted as hidden; the hint
names the flags that apply them; warnings are counted as warnings. From the cache too."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import FIXTURES, run_cli

CLIP_AND_CHECK_BEFORE_UNSCALE = """\
import torch


def train(model, batches, optimizer, scaler):
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):
            continue
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
"""


def summary(result) -> str:
    return result.stdout.splitlines()[-1]


def test_findings_fixable_only_after_another_fix_are_counted(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(CLIP_AND_CHECK_BEFORE_UNSCALE, encoding="utf-8")
    cold = run_cli("--output-format", "concise", "train.py", cwd=tmp_path)
    codes = [line.split()[1] for line in cold.stdout.splitlines()[:-1]]
    assert codes == ["TL103", "TL101", "TL107", "TL109"]
    assert " TL109 [*]" not in cold.stdout  # TL109's own fix needs TL101's first: no marker...
    assert summary(cold) == "Found 4 errors. [*] 4 fixable with `trainlint --fix`."  # ...but it is counted
    warm = run_cli("--output-format", "concise", "train.py", cwd=tmp_path)
    assert warm.stdout == cold.stdout  # the counts come back from the cache
    fixed = run_cli("--fix", "train.py", cwd=tmp_path)
    assert summary(fixed) == "Found 4 errors (4 fixed, 0 remaining)."  # what was promised
    assert run_cli("train.py", cwd=tmp_path).stdout == "All checks passed!\n"


def test_the_hint_names_the_flags_that_apply_the_fixes(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "cli" / "amp_video.py", tmp_path / "video.py")  # TL108: an unsafe fix
    shutil.copy(FIXTURES / "cli" / "log_softmax.py", tmp_path / "loss.py")  # TL202: a safe fix
    plain = run_cli("--no-cache", ".", cwd=tmp_path)
    assert summary(plain) == (
        "Found 1 error and 1 warning. [*] 1 fixable with `trainlint --fix`. 1 more fixable with `--fix --unsafe-fixes`."
    )
    unsafe_here = run_cli("--no-cache", "--unsafe-fixes", ".", cwd=tmp_path)
    assert summary(unsafe_here) == "Found 1 error and 1 warning. [*] 2 fixable with `trainlint --fix --unsafe-fixes`."
    (tmp_path / "pyproject.toml").write_text("[tool.trainlint]\nunsafe-fixes = true\n", encoding="utf-8")
    unsafe_configured = run_cli("--no-cache", ".", cwd=tmp_path)
    assert summary(unsafe_configured) == "Found 1 error and 1 warning. [*] 2 fixable with `trainlint --fix`."
    (tmp_path / "pyproject.toml").unlink()
    fixed = run_cli("--fix", ".", cwd=tmp_path)
    assert summary(fixed) == (
        "Found 1 error and 1 warning (1 fixed, 1 remaining). 1 hidden fix can be enabled with `--unsafe-fixes`."
    )
    again = run_cli("--fix", ".", cwd=tmp_path)  # from the cache: nothing safe left to fix
    assert summary(again) == "Found 1 warning. 1 hidden fix can be enabled with `--unsafe-fixes`."
    done = run_cli("--fix", "--unsafe-fixes", ".", cwd=tmp_path)
    assert summary(done) == "Found 1 warning (1 fixed, 0 remaining)."
