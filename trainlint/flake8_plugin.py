"""The flake8 plugin: trainlint's findings reported by flake8 under the ``TL`` prefix.

flake8 owns the reporting: its ``--select``/``--ignore``/``--extend-select``, its ``# noqa``
comments and its per-file-ignores decide what is shown, so the plugin hands over every finding
before trainlint's own ``noqa`` handling (flake8's ``--disable-noqa`` then shows them all). The
trainlint configuration (``[tool.trainlint]``) still chooses the rules and their options, as it
does for the ``trainlint`` command. The plugin never fixes: run ``trainlint --fix`` for that.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

from trainlint import __version__
from trainlint.config import find_config, load_settings
from trainlint.discovery import display_path
from trainlint.engine import Linter
from trainlint.findings import Finding
from trainlint.project import ProjectIndex

_STDIN_NAMES = frozenset({"stdin", "-"})

# One Linter per configuration file (None: no [tool.trainlint] found) in each flake8 process.
_linters: dict[Path | None, Linter] = {}


def _linter(directory: Path) -> Linter:
    config = find_config(directory)
    if config not in _linters:
        settings = load_settings(config, directory)
        _linters[config] = Linter(settings, ProjectIndex([settings.root]))
    return _linters[config]


def findings_for_flake8(linter: Linter, text: str, display: str, real_path: Path | None) -> list[Finding]:
    """What ``Linter.lint`` finds, minus its ``noqa`` handling (flake8 applies its own), plus
    trainlint's per-file ignores and ``# trainlint: skip-file``."""
    ignored = linter.settings.ignored_for(display)
    found = linter.unsuppressed(text, display, real_path)
    return sorted((f for f in found if f.code not in ignored), key=lambda f: f.sort_key)


class TrainlintChecker:
    """A flake8 AST plugin (``flake8.extension`` entry point ``TL``)."""

    name = "trainlint"
    version = __version__

    def __init__(self, tree: ast.AST, filename: str, lines: Sequence[str]) -> None:
        # flake8 passes the parsed tree too, but trainlint parses with LibCST, from the lines.
        self.filename = filename
        self.lines = lines

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        path = Path(self.filename)
        real = path if self.filename not in _STDIN_NAMES and path.is_file() else None
        linter = _linter(real.parent if real else Path.cwd())
        display = display_path(real) if real else self.filename
        for finding in findings_for_flake8(linter, "".join(self.lines), display, real):
            # flake8 wants a 0-based column from plugins and prints it 1-based, as trainlint does.
            yield finding.start.row, finding.start.column - 1, f"{finding.code} {finding.message}", type(self)
