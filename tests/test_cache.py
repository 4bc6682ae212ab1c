"""The result cache: ``.trainlint_cache/``, JSON, keyed by each file's content, trainlint's version
and the effective configuration, and by the modules an answer read (editing a model module
invalidates the training script that imports it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli

AMP_VIDEO = (FIXTURES / "cli" / "amp_video.py").read_text(encoding="utf-8")

TRAIN = '''import torch
from models import VideoNet


def train(loader):
    model = VideoNet().cuda()
    for clips in loader:
        with torch.autocast("cuda"):
            loss = model(clips).mean()
        loss.backward()
'''
MODELS = '''import torch.nn as nn


class VideoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3)
'''


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".trainlint_cache").glob("*.json"))


def concise(root: Path, *arguments: str):
    return run_cli("--output-format", "concise", *arguments, cwd=root)


def test_warm_run_prints_the_same_and_reads_the_json_cache(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    (tmp_path / "broken.py").write_text("import torch\nx = (\n", encoding="utf-8")
    cold = concise(tmp_path, ".")
    assert cold.returncode == 1 and len(cold.stdout.splitlines()) == 3
    [cache] = cache_files(tmp_path)
    assert (tmp_path / ".trainlint_cache" / ".gitignore").read_text(encoding="utf-8").endswith("*\n")
    data = json.loads(cache.read_text(encoding="utf-8"))  # JSON, never pickle
    entries = data["files"]
    assert {Path(p).name for p in entries} == {"train.py", "broken.py"}
    warm = concise(tmp_path, ".")
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)

    # the warm run really answers from the cache: an entry edited by hand is what it prints
    train_entry = next(e for p, e in entries.items() if p.endswith("train.py"))
    train_entry["findings"][0]["message"] = "FROM THE CACHE"
    cache.write_text(json.dumps(data), encoding="utf-8")
    assert "train.py:15:14: TL108 FROM THE CACHE" in concise(tmp_path, ".").stdout
    # ... until the file's content changes
    (tmp_path / "train.py").write_text(AMP_VIDEO + "\n", encoding="utf-8")
    assert "FROM THE CACHE" not in concise(tmp_path, ".").stdout


def test_configuration_and_options_are_part_of_the_key(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    concise(tmp_path, ".")
    selected = concise(tmp_path, "--select", "TL001", ".")
    assert selected.returncode == 0 and "TL108" not in selected.stdout
    assert len(cache_files(tmp_path)) == 2  # one per effective configuration
    (tmp_path / "pyproject.toml").write_text('[tool.trainlint]\nignore = ["TL108"]\n', encoding="utf-8")
    assert concise(tmp_path, ".").returncode == 0
    (tmp_path / "pyproject.toml").write_text("[tool.trainlint]\n", encoding="utf-8")
    assert concise(tmp_path, ".").returncode == 1


def test_editing_an_imported_module_invalidates_the_importer(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    (tmp_path / "models.py").write_text(MODELS, encoding="utf-8")
    first = concise(tmp_path, "train.py")
    assert first.stdout.startswith("train.py:8:14: TL108 "), first.stdout + first.stderr
    entry = next(iter(json.loads(cache_files(tmp_path)[0].read_text())["files"].values()))
    read = [Path(p).name for p, digest in entry["dependencies"].items() if digest != "absent" and not p.startswith("?search:")]
    assert read == ["models.py"]  # (the modules looked for and missing, such as a local torch.py, too,
    # and the searches over the whole project its answers relied on: see the value-flow projects' tests)
    # the model no longer has a Conv3d: train.py is unchanged, but its cached answer is stale
    (tmp_path / "models.py").write_text(MODELS.replace("nn.Conv3d(3, 8, kernel_size=3)", "nn.Conv2d(3, 8, 3)"))
    second = concise(tmp_path, "train.py")
    assert (second.returncode, second.stdout) == (0, "All checks passed!\n")


def test_no_cache_writes_nothing_and_a_broken_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    assert concise(tmp_path, "--no-cache", ".").returncode == 1
    assert not (tmp_path / ".trainlint_cache").exists()
    baseline = concise(tmp_path, ".")
    for cache in cache_files(tmp_path):
        cache.write_text("{ not json", encoding="utf-8")
    again = concise(tmp_path, ".")
    assert (again.returncode, again.stdout, again.stderr) == (baseline.returncode, baseline.stdout, "")


def test_an_unwritable_cache_location_only_costs_time(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    (tmp_path / "blocker").write_text("a file where the cache directory would go\n", encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text('[tool.trainlint]\ncache-dir = "blocker/cache"\n', encoding="utf-8")
    result = concise(tmp_path, ".")
    assert result.returncode == 1 and result.stderr == "" and "TL108" in result.stdout


def test_cache_dir_setting(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text('[tool.trainlint]\ncache-dir = "build/tl"\n', encoding="utf-8")
    concise(tmp_path, ".")
    assert list((tmp_path / "build" / "tl").glob("*.json")) and not (tmp_path / ".trainlint_cache").exists()


def test_fix_and_diff_keep_the_cache_truthful(tmp_path: Path) -> None:
    """A cached answer always describes the bytes on disk: --diff changes nothing, so the finding
    is still reported afterwards; --fix writes, and the warm run sees the fixed file."""
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    assert concise(tmp_path, ".").returncode == 1  # cache filled with the finding
    assert run_cli("--diff", "--unsafe-fixes", ".", cwd=tmp_path).returncode == 1
    assert concise(tmp_path, ".").stdout.startswith("train.py:15:14: TL108 ")
    fixed = concise(tmp_path, "--fix", "--unsafe-fixes", ".")  # cached finding is fixable: re-linted
    assert fixed.stdout == "Found 1 warning (1 fixed, 0 remaining).\n"
    assert concise(tmp_path, ".").stdout == "All checks passed!\n"
    # the file is put back as it was: its (old) cached answer is right again
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    assert concise(tmp_path, ".").stdout.startswith("train.py:15:14: TL108 ")


def test_a_pre_commit_style_rerun_over_a_subset_keeps_other_entries(tmp_path: Path) -> None:
    for name in ("a.py", "b.py"):
        shutil.copy(FIXTURES / "cli" / "amp_video.py", tmp_path / name)
    concise(tmp_path, ".")
    concise(tmp_path, "a.py")  # as pre-commit does, with only the staged file
    entries = json.loads(cache_files(tmp_path)[0].read_text())["files"]
    assert {Path(p).name for p in entries} == {"a.py", "b.py"}


def test_a_changed_trainlint_invalidates_the_cache(tmp_path: Path, monkeypatch) -> None:
    """Entries made by other code (a rule edited in a development install, same version number)
    are not used."""
    from trainlint import cache as cache_module
    from trainlint import runner
    from trainlint.config import Settings
    from trainlint.discovery import discover

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    settings = Settings(root=tmp_path)

    def messages() -> list[str]:
        result = runner.run(discover(["."], settings), settings, runner.RunOptions(jobs=1), [tmp_path])
        return [f.message for f in result.findings]

    real = messages()
    [cache] = cache_files(tmp_path)
    data = json.loads(cache.read_text(encoding="utf-8"))
    next(iter(data["files"].values()))["findings"][0]["message"] = "STALE"
    cache.write_text(json.dumps(data), encoding="utf-8")
    assert messages() == ["STALE"]
    monkeypatch.setattr(cache_module, "_code_fingerprint", lambda: "other code")
    assert messages() == real


# -- a cache trainlint did not write ------------------------------------------------------------------
def _crafted(entry_files: object, real: dict) -> object:
    return {"version": real["version"], "code": real["code"], "files": entry_files}


CRAFTED = {
    "a list": lambda real, key, entry: [],
    "null": lambda real, key, entry: None,
    "files as a list": lambda real, key, entry: _crafted([], real),
    "an entry that is a string": lambda real, key, entry: _crafted({key: "x"}, real),
    "findings as a string": lambda real, key, entry: _crafted({key: {**entry, "findings": "x"}}, real),
    "dependencies as a list": lambda real, key, entry: _crafted({key: {**entry, "dependencies": []}}, real),
    "an unknown code": lambda real, key, entry: _crafted(
        {key: {**entry, "findings": [{**entry["findings"][0], "code": "TL999"}]}}, real
    ),
    "a row that is text": lambda real, key, entry: _crafted(
        {key: {**entry, "findings": [{**entry["findings"][0], "start": {"row": "15", "column": 14}}]}}, real
    ),
    "a finding that is a number": lambda real, key, entry: _crafted({key: {**entry, "findings": [7]}}, real),
    "deeply nested": lambda real, key, entry: "[" * 100_000 + "]" * 100_000,
}


def test_a_cache_that_does_not_validate_is_ignored_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    cold = concise(tmp_path, ".")
    [cache] = cache_files(tmp_path)
    real = json.loads(cache.read_text(encoding="utf-8"))
    [(key, entry)] = real["files"].items()
    for kind, craft in CRAFTED.items():
        crafted = craft(real, key, entry)
        cache.write_text(crafted if isinstance(crafted, str) else json.dumps(crafted), encoding="utf-8")
        again = concise(tmp_path, ".")
        assert (again.returncode, again.stdout, again.stderr) == (cold.returncode, cold.stdout, ""), kind
        assert json.loads(cache.read_text(encoding="utf-8")) == real, kind  # rewritten, valid again


def test_creating_a_missing_imported_module_invalidates_the_importer(tmp_path: Path) -> None:
    """`models.py` does not exist yet: the script's clean answer depends on that absence."""
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    assert concise(tmp_path, "train.py").stdout == "All checks passed!\n"
    (tmp_path / "models.py").write_text(MODELS, encoding="utf-8")
    second = concise(tmp_path, "train.py")
    assert second.stdout.startswith("train.py:8:14: TL108 ") and second.returncode == 1
    (tmp_path / "models.py").unlink()  # and gone again
    assert concise(tmp_path, "train.py").stdout == "All checks passed!\n"


def test_an_empty_or_linked_cache_gitignore_is_repaired(tmp_path: Path) -> None:
    """A full disk can leave `.gitignore` empty; a checkout can plant it as a link to a file of
    the user's: it is rewritten in place (the link replaced, never followed)."""
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    concise(tmp_path, ".")
    gitignore = tmp_path / ".trainlint_cache" / ".gitignore"
    written = gitignore.read_text(encoding="utf-8")
    gitignore.write_text("", encoding="utf-8")
    concise(tmp_path, "--fix", ".")  # any run that writes the cache
    assert gitignore.read_text(encoding="utf-8") == written
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file\n", encoding="utf-8")
    gitignore.unlink()
    gitignore.symlink_to(precious)
    (tmp_path / "train.py").write_text(AMP_VIDEO + "\n", encoding="utf-8")  # a change to cache
    concise(tmp_path, ".")
    assert precious.read_text(encoding="utf-8") == "the user's own file\n"
    assert not gitignore.is_symlink() and gitignore.read_text(encoding="utf-8") == written


def test_a_symlinked_cache_directory_or_file_is_never_followed(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (project / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    (project / ".trainlint_cache").symlink_to(outside, target_is_directory=True)
    linked = concise(project, ".")
    assert linked.stdout.startswith("train.py:15:14: TL108 ") and linked.stderr == ""
    assert list(outside.iterdir()) == []  # nothing written through the link
    (project / ".trainlint_cache").unlink()
    concise(project, ".")
    [cache] = cache_files(project)
    target = outside / "victim.json"
    target.write_text("the user's own file\n", encoding="utf-8")
    cache.unlink()
    cache.symlink_to(target)  # the cache file itself as a link out of the project
    (project / "train.py").write_text(AMP_VIDEO + "\n", encoding="utf-8")
    concise(project, ".")
    assert target.read_text(encoding="utf-8") == "the user's own file\n"
    assert not cache.is_symlink() and (cache.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in (project / ".trainlint_cache").iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("value", ["/tmp/elsewhere", "../elsewhere", "build/../..", "."])
def test_the_configuration_cannot_put_the_cache_outside_the_project(tmp_path: Path, value: str) -> None:
    (tmp_path / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(f'[tool.trainlint]\ncache-dir = "{value}"\n', encoding="utf-8")
    result = concise(tmp_path, ".")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"trainlint: error: pyproject.toml [tool.trainlint]: 'cache-dir' must be a directory inside the "
        f"project, not '{value}' (use --cache-dir on the command line for another place)\n"
    )


def test_cache_dir_on_the_command_line_may_be_anywhere(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere" / "cache"
    project.mkdir()
    (project / "train.py").write_text(AMP_VIDEO, encoding="utf-8")
    assert concise(project, "--cache-dir", str(elsewhere), ".").returncode == 1
    assert list(elsewhere.glob("*.json")) and not (project / ".trainlint_cache").exists()
