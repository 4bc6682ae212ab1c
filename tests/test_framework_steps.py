"""Steps a framework runs for you: Lightning hooks, a Hugging Face Trainer override, Accelerate.
The findings themselves are in ``tests/fixtures/projects`` (lightning_*, hf_trainer_*,
accelerate_*); these tests follow the fixes and the cache through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import FIXTURES, run_cli

PROJECTS = FIXTURES / "projects"


def _codes(project: Path, *args: str) -> list[tuple[str, int, str]]:
    result = run_cli(".", "--select", "TL101,TL103", "--output-format", "json", *args, cwd=project)
    assert result.returncode in (0, 1), result.stderr
    return sorted((Path(f["filename"]).name, f["location"]["row"], f["code"]) for f in json.loads(result.stdout))


def test_the_lightning_hook_moves_only_as_an_unsafe_fix_and_then_stays_clean(tmp_path: Path) -> None:
    project = tmp_path / "lit"
    shutil.copytree(PROJECTS / "lightning_fp16_hook", project)
    classifier = project / "models" / "classifier.py"
    original = classifier.read_text(encoding="utf-8")
    run_cli(".", "--no-cache", "--fix", cwd=project)
    assert classifier.read_text(encoding="utf-8") == original  # moving code between hooks is unsafe
    run_cli(".", "--no-cache", "--fix", "--unsafe-fixes", cwd=project)
    fixed = (PROJECTS / "lightning_fp16_hook_fixed" / "models" / "classifier.py").read_text(encoding="utf-8")
    assert classifier.read_text(encoding="utf-8") == fixed
    assert _codes(project, "--no-cache") == []
    run_cli(".", "--no-cache", "--fix", "--unsafe-fixes", cwd=project)
    assert classifier.read_text(encoding="utf-8") == fixed  # idempotent


def test_the_cached_hook_finding_follows_the_trainers_precision_in_another_module(tmp_path: Path) -> None:
    project = tmp_path / "lit"
    shutil.copytree(PROJECTS / "lightning_fp16_hook", project)
    assert _codes(project) == [("classifier.py", 21, "TL101"), ("classifier.py", 23, "TL103")]
    train = project / "train.py"
    train.write_text(train.read_text(encoding="utf-8").replace('"16-mixed"', '"bf16-mixed"'), encoding="utf-8")
    assert _codes(project) == []  # bf16 has no loss scale: the hook reads true gradients
    train.write_text(train.read_text(encoding="utf-8").replace('"bf16-mixed"', "16"), encoding="utf-8")
    assert _codes(project) == [("classifier.py", 21, "TL101"), ("classifier.py", 23, "TL103")]


def test_accelerate_clip_is_replaced_by_the_accelerators_own(tmp_path: Path) -> None:
    project = tmp_path / "acc"
    shutil.copytree(PROJECTS / "accelerate_torch_clip", project)
    run_cli(".", "--no-cache", "--fix", cwd=project)
    text = (project / "train.py").read_text(encoding="utf-8")
    assert "accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)" in text
    assert "torch.nn.utils.clip_grad_norm_" not in text
    assert _codes(project, "--no-cache") == []
