"""Which files a run lints: Python files under the given paths, minus the excluded ones."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from trainlint.config import Settings
from trainlint.gitignore import GitIgnore

SOURCE_SUFFIXES = (".py", ".pyi", ".ipynb")  # notebooks are read by trainlint.notebook


@dataclass(frozen=True)
class Target:
    path: Path
    display: str  # as the user named it: relative to the current directory when below it
    missing: bool = False  # named on the command line but absent: reported as TL002
    problem: str | None = None  # named on the command line but not a readable file (TL002)


def display_path(path: Path) -> str:
    """The path relative to the current directory when below it, else absolute. Symlinks are not
    resolved: the user sees the name they gave (and a symlink loop cannot raise here)."""
    absolute = os.path.abspath(path)
    cwd = os.path.abspath(os.getcwd())
    if absolute == cwd or absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(absolute, cwd)).as_posix()
    return Path(absolute).as_posix()


def is_python_file(path: Path) -> bool:
    """A file named explicitly is linted when it is Python source: a ``.py``/``.pyi`` suffix, or
    no suffix and a ``python`` shebang (as pre-commit's ``types: [python]`` also passes)."""
    if path.suffix in SOURCE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as stream:
            first = stream.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


class _Excluder:
    def __init__(self, settings: Settings) -> None:
        self.root = settings.root.resolve()
        self.patterns = [p.rstrip("/") for p in (*settings.exclude, *settings.extend_exclude)]
        self._names = {p for p in self.patterns if not any(c in p for c in "*?[/")}
        self._globs = [p for p in self.patterns if p not in self._names]
        self.respect_gitignore = settings.respect_gitignore
        self._gitignores: dict[Path, GitIgnore | None] = {}
        self._chains: dict[Path, list[tuple[Path, GitIgnore]]] = {}

    def _relative(self, path: Path) -> str | None:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return None

    def by_pattern(self, path: Path) -> bool:
        if path.name in self._names:  # most patterns are plain names: a set lookup
            return True
        relative = self._relative(path)
        for pattern in self._globs:
            if fnmatch(path.name, pattern):
                return True
            if relative is not None and (fnmatch(relative, pattern) or relative == pattern):
                return True
        return False

    def _gitignore(self, directory: Path) -> GitIgnore | None:
        if directory not in self._gitignores:
            spec = None
            ignore_file = directory / ".gitignore"
            if ignore_file.is_file():
                try:
                    spec = GitIgnore.from_lines(ignore_file.read_text(encoding="utf-8", errors="replace").splitlines())
                except OSError:
                    spec = None
            self._gitignores[directory] = spec
        return self._gitignores[directory]

    def _specs_above(self, directory: Path) -> list[tuple[Path, GitIgnore]]:
        """Each .gitignore from ``directory`` up to the top of its repository (the directory with
        ``.git``), nearest first; computed once per directory."""
        chain = self._chains.get(directory)
        if chain is None:
            spec = self._gitignore(directory)
            chain = [(directory, spec)] if spec is not None else []
            if not (directory / ".git").exists() and directory.parent != directory:
                chain = chain + self._specs_above(directory.parent)
            self._chains[directory] = chain
        return chain

    def by_gitignore(self, path: Path, is_dir: bool) -> bool:
        """Whether the .gitignore files of the path's repository ignore it: the nearest one with a
        pattern about the path decides (a negated pattern there re-includes it), as in git."""
        if not self.respect_gitignore:
            return False
        for directory, spec in self._specs_above(path.parent):
            verdict = spec.verdict(path.relative_to(directory).as_posix(), is_dir)
            if verdict is not None:
                return verdict
        return False

    def excluded(self, path: Path, is_dir: bool) -> bool:
        return self.by_pattern(path) or self.by_gitignore(path, is_dir)

    def excluded_with_parents(self, path: Path) -> bool:
        """``force-exclude`` for a file named on the command line: the exclude patterns, on it and
        on its directories. Not .gitignore, as in ruff: pre-commit names tracked files only, and a
        tracked file that .gitignore names was added on purpose (and the check would read the
        .gitignore files above it on every hook run)."""
        if self.by_pattern(path):
            return True
        relative = self._relative(path)
        if relative is None:
            return False
        return any(self.by_pattern(parent) for parent in path.parents if self.root in parent.parents)


def discover(paths: Iterable[str], settings: Settings) -> list[Target]:
    """Targets in a stable order. Directory walks never follow symlinked directories, which
    also makes symlink loops harmless. A file named explicitly is linted even when excluded
    (as ruff does) unless ``force-exclude`` is set; one that is not Python source is skipped, so
    that ``trainlint README.md`` (pre-commit with nothing relevant staged) lints nothing."""
    excluder = _Excluder(settings)
    found: dict[Path, Target] = {}
    for raw in paths:
        path = Path(raw)
        absolute = Path(os.path.abspath(path))
        if path.is_dir():
            for file in _walk(absolute, excluder):
                found.setdefault(file, Target(file, display_path(file)))
            continue
        if settings.force_exclude and excluder.excluded_with_parents(absolute):
            continue
        target = _explicit_target(path, absolute)
        if target is not None:
            found.setdefault(absolute, target)
    return sorted(_without_duplicate_links(found), key=lambda t: t.display)


def _without_duplicate_links(found: dict[Path, Target]) -> list[Target]:
    """The targets less the symbolic links to a file that is already a target (by its own name or
    by another link): fixing one file twice at once, under two names, would race."""
    links = {path for path in found if os.path.islink(path)}
    if not links:
        return list(found.values())
    real_files = {Path(os.path.realpath(path)) for path in found if path not in links}
    kept = []
    for path, target in found.items():
        if path in links:
            real = Path(os.path.realpath(path))
            if real in real_files:
                continue
            real_files.add(real)
        kept.append(target)
    return kept


def _explicit_target(path: Path, absolute: Path) -> Target | None:
    display = display_path(path)
    if path.is_symlink() and not path.exists():
        # a dangling link or a loop: say so, rather than skipping a file the user named
        return Target(absolute, display, problem=_link_problem(path))
    if not path.exists():
        return Target(absolute, display, missing=True)
    if not path.is_file():
        return Target(absolute, display, problem="not a regular file") if path.suffix in SOURCE_SUFFIXES else None
    return Target(absolute, display) if is_python_file(path) else None


def _link_problem(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return "cannot read"


def _walk(directory: Path, excluder: _Excluder) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file()
        except OSError:
            continue
        if is_dir:
            if not excluder.excluded(path, True):
                yield from _walk(path, excluder)
        elif is_file and path.suffix in SOURCE_SUFFIXES and not excluder.excluded(path, False):
            yield path
