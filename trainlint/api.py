"""The library API: lint or fix text and scripts in memory (the runtime companion uses it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainlint.config import Settings, apply_cli_overrides, load_settings
from trainlint.engine import FixOutcome, Linter
from trainlint.findings import Finding
from trainlint.project import ProjectIndex, module_name_for

FixResult = FixOutcome


def _linter(select: Sequence[str] | None, roots: Sequence[Path] = (), settings: Settings | None = None) -> Linter:
    settings = settings or Settings()
    apply_cli_overrides(settings, select, None, None)
    return Linter(settings, ProjectIndex(roots or [Path.cwd()]))


def lint_source(text: str, path: str = "<stdin>", *, select: Sequence[str] | None = None) -> list[Finding]:
    real = Path(path) if Path(path).is_file() else None
    return _linter(select).lint(text, path, real)


def fix_source(
    text: str,
    path: str = "<stdin>",
    *,
    unsafe_fixes: bool = False,
    select: Sequence[str] | None = None,
) -> FixResult:
    real = Path(path) if Path(path).is_file() else None
    return _linter(select).fix(text, path, real, unsafe_fixes)


def local_imports(script: Path, project: ProjectIndex) -> list[Path]:
    """The script and the project's own modules it imports, transitively, in a stable order."""
    seen: dict[Path, None] = {}
    pending = [script.resolve()]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen[path] = None
        summary = project.summary(path)
        if summary is None:
            continue
        for qualified in sorted(set(summary.imports.values())):
            for name in (qualified, qualified.rpartition(".")[0]):
                module = project.module(name, path) if name else None
                if module is not None and module.path not in seen:
                    pending.append(module.path)
    return list(seen)


def fix_script_in_memory(
    script: Path,
    *,
    unsafe_fixes: bool = False,
    select: Sequence[str] | None = None,
) -> dict[Path, FixResult]:
    """Fix the script and the local modules it imports without touching the disk; returns the
    files whose text changed."""
    script = script.resolve()
    settings = load_settings(None, script.parent)
    project = ProjectIndex([module_name_for(script)[1]])
    linter = _linter(select, settings=settings)
    linter.project = project
    changed: dict[Path, FixResult] = {}
    for path in local_imports(script, project):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        outcome = linter.fix(text, str(path), path, unsafe_fixes)
        if outcome.text != text:
            changed[path] = outcome
    return changed


__all__ = ["FixResult", "Finding", "fix_script_in_memory", "fix_source", "lint_source", "local_imports"]
