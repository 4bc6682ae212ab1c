"""The result cache: per-file findings in ``.trainlint_cache/``, keyed by each file's content,
trainlint's version and code, the effective configuration, and the local modules an answer read.

A cache lives in a checkout that trainlint did not write, so it trusts nothing it finds there: a
file that does not validate is ignored and rewritten, a symbolic link on the way to the cache
directory disables the cache rather than leading it out of the project, and every file is
written through a new temporary file in the cache directory itself (``mkstemp``:
``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600) and renamed into place. A cache that cannot be read or
written only costs time.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlint import __version__
from trainlint.catalog import rule_infos
from trainlint.config import IO_ERROR, Settings
from trainlint.discovery import Target
from trainlint.findings import Finding, Fix, Position
from trainlint.fixes import new_temporary_file
from trainlint.source import content_digest

if TYPE_CHECKING:
    from trainlint.project import ProjectIndex
    from trainlint.runner import FileResult

GITIGNORE = "# Created by trainlint\n*\n"


def _code_fingerprint() -> str:
    """The installed trainlint's own modules (path, size, mtime): a rule edited in a development
    install invalidates the cache even though the version number did not change."""
    package = str(Path(__file__).resolve().parent)
    stamps = []
    for directory, subdirectories, files in os.walk(package):  # os.walk: 4x faster than rglob
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, name)
            try:
                status = os.stat(path)
            except OSError:
                continue
            relative = os.path.relpath(path, package).replace(os.sep, "/")
            stamps.append(f"{relative}:{status.st_size}:{status.st_mtime_ns}")
    return content_digest("\n".join(stamps).encode())


def confined_directory(directory: Path, root: Path) -> Path | None:
    """``directory`` when no part of it below the project root is a symbolic link or a
    non-directory (parts not created yet are fine), else None. A directory outside the root can
    only come from ``--cache-dir`` (the configuration may not name one): the user's own choice."""
    try:
        relative = Path(os.path.abspath(directory)).relative_to(os.path.abspath(root))
    except ValueError:
        return directory
    current = Path(os.path.abspath(root))
    for part in relative.parts:
        current = current / part
        try:
            status = os.lstat(current)
        except FileNotFoundError:
            return directory
        except OSError:
            return None
        if not stat.S_ISDIR(status.st_mode):  # lstat: a symbolic link is not a directory here
            return None
    return directory


def replace_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` through a new temporary file in ``directory`` and a rename, which
    replaces a symbolic link found there instead of writing through it."""
    with new_temporary_file(directory, f".{name}.", ".tmp") as (handle, temporary):
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, directory / name)


def _read_no_follow(path: Path) -> bytes:
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(handle, "rb") as stream:
        return stream.read()


class Cache:
    """Per-file results for one configuration, in one JSON file replaced atomically."""

    def __init__(self, settings: Settings, project_roots: Sequence[Path] = ()) -> None:
        self.root = settings.root
        # The roots the linter's project index searches: a search recorded as a dependency must be
        # answered over the same files, or every cached answer that relied on one would miss.
        self._project_roots = list(project_roots) or [settings.root]
        self.directory = confined_directory(settings.cache_path, settings.root)
        self.path = self.directory / f"v{__version__}-{settings.digest()}.json" if self.directory else None
        self.entries: dict[str, Any] = {}
        self._dependency_digests: dict[str, str | None] = {}
        self._index: ProjectIndex | None = None
        self._is_test_path = settings.is_test_path
        self.code = _code_fingerprint()
        self._changed = True  # the file on disk must be (re)written
        if self.path is not None:
            self.entries = self._read(self.path)
            self._changed = not self.entries

    def _read(self, path: Path) -> dict[str, Any]:
        """The entries of a cache file made by this trainlint; none for anything else (missing,
        not JSON, `[]`, `null`, another version): the next save rewrites it."""
        try:
            data = json.loads(_read_no_follow(path))
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("version") != __version__ or data.get("code") != self.code:
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def _current_digest(self, path: str) -> str | None:
        """The digest the project index would record for ``path`` now: ABSENT when there is no
        such file (a module still missing), None when it cannot be read."""
        from trainlint.project import ABSENT, SEARCH  # here: a run whose files have no dependency needs no project

        if path not in self._dependency_digests and path.startswith(SEARCH):
            self._dependency_digests[path] = self._project().search_digest(path)
        if path not in self._dependency_digests:
            if not os.path.isfile(path):
                self._dependency_digests[path] = ABSENT
            else:
                try:
                    self._dependency_digests[path] = content_digest(Path(path).read_bytes())
                except OSError:
                    self._dependency_digests[path] = None
        return self._dependency_digests[path]

    def _project(self) -> ProjectIndex:
        """An index of the project for the searches results depend on (built on first need)."""
        from trainlint.project import ProjectIndex

        if self._index is None:
            self._index = ProjectIndex(self._project_roots)
            self._index.is_test_path = self._is_test_path
        return self._index

    def has_entry(self, target: Target) -> bool:
        return str(target.path) in self.entries

    def lookup(self, target: Target, digest: str) -> list[Finding] | None:
        """The cached findings for the file with this content, or None when there is no valid,
        current entry (a crafted or hand-edited entry is a miss, and is replaced)."""
        entry = self.entries.get(str(target.path))
        if not isinstance(entry, dict) or entry.get("digest") != digest:
            return None
        dependencies = entry.get("dependencies", {})
        findings = entry.get("findings")
        if not isinstance(dependencies, dict) or not isinstance(findings, list):
            return None
        for path, recorded in dependencies.items():
            if not isinstance(recorded, str) or self._current_digest(path) != recorded:
                return None
        loaded = [_finding(data) for data in findings]
        if any(finding is None for finding in loaded):
            return None
        return [finding.with_path(target.display) for finding in loaded if finding is not None]

    def fix_counts(self, target: Target) -> tuple[int, int]:
        """The (fixable, unsafe_fixable) counts stored with a file's findings."""
        entry = self.entries.get(str(target.path))
        counts = entry.get("fixable", [0, 0]) if isinstance(entry, dict) else None
        valid = isinstance(counts, list) and len(counts) == 2 and all(type(c) is int for c in counts)
        return (counts[0], counts[1]) if valid else (0, 0)  # type: ignore[index]

    def store(self, target: Target, result: FileResult) -> None:
        if result.digest is None or any(f.code == IO_ERROR for f in result.findings):
            return
        self.entries[str(target.path)] = {
            "digest": result.digest,
            "dependencies": result.dependencies,
            "findings": [f.to_json() for f in result.findings],
            "fixable": [result.fixable, result.unsafe_fixable],
        }
        self._changed = True

    def save(self) -> None:
        if self.directory is None or self.path is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if confined_directory(self.directory, self.root) is None:
                return  # a link put on the way while we ran
            self._ensure_gitignore()
            if self._changed:  # a run whose files all came from the cache rewrites nothing
                document = {"version": __version__, "code": self.code, "files": self.entries}
                replace_file(self.directory, self.path.name, json.dumps(document).encode("utf-8"))
        except OSError:
            pass  # a cache that cannot be written only costs time

    def _ensure_gitignore(self) -> None:
        """Keep the cache out of version control: write the `.gitignore` when it is missing, or
        empty (a full disk can leave it so), or a symbolic link (replaced, never followed)."""
        assert self.directory is not None
        try:
            status = os.lstat(self.directory / ".gitignore")
        except FileNotFoundError:
            status = None
        if status is None or stat.S_ISLNK(status.st_mode) or status.st_size == 0:
            replace_file(self.directory, ".gitignore", GITIGNORE.encode("utf-8"))


# -- reading a finding back, without trusting it -------------------------------------------------
def _finding(data: object) -> Finding | None:
    """A finding read from the cache, or None when any field has the wrong shape or type: the
    output code relies on them (a code unknown to this trainlint, a row that is not a number)."""
    if not isinstance(data, dict):
        return None
    try:
        finding = Finding.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    texts = (finding.name, finding.message, finding.path, finding.level)
    positions = [finding.start, finding.end]
    if finding.code not in rule_infos() or not all(isinstance(text, str) for text in texts):
        return None
    if not isinstance(finding.offset, int) or not (finding.cell is None or isinstance(finding.cell, int)):
        return None
    if finding.fix is not None:
        if not _valid_fix(finding.fix):
            return None
        positions += [p for e in finding.fix.edits for p in (e.location, e.end_location) if p is not None]
    if not all(_is_position(p) for p in positions):
        return None
    return finding


def _valid_fix(fix: Fix) -> bool:
    return (
        fix.applicability in ("safe", "unsafe")
        and isinstance(fix.message, str)
        and all(isinstance(e.start, int) and isinstance(e.end, int) and isinstance(e.content, str) for e in fix.edits)
    )


def _is_position(position: Position) -> bool:
    return all(isinstance(value, int) and not isinstance(value, bool) for value in (position.row, position.column))
