"""A whole run: files -> (cache | parallel linting and fixing) -> results, in a stable order."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlint import __version__
from trainlint.config import INTERNAL_ERROR, IO_ERROR, SYNTAX_ERROR, Settings
from trainlint.discovery import Target
from trainlint.findings import Finding, is_fix_allowed
from trainlint.source import SourceError, SourceText, content_digest

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from trainlint.engine import Linter

# The engine, the rules (LibCST) and the process pool are imported only when a file must be
# linted: a run whose files are all cached (a pre-commit hook on unchanged files) needs none.
Progress = Callable[[int], None]  # called with the number of files done so far


@dataclass
class RunOptions:
    fix: bool = False
    unsafe_fixes: bool = False
    write: bool = True  # False with --diff: compute fixes, change nothing
    use_cache: bool = True
    jobs: int = 0  # 0: all cores


@dataclass
class FileResult:
    display: str
    findings: list[Finding] = field(default_factory=list)  # what remains
    fixed: list[Finding] = field(default_factory=list)
    original_text: str | None = None  # set when fixes changed the text
    fixed_text: str | None = None
    digest: str | None = None
    dependencies: dict[str, str] = field(default_factory=dict)
    found: list[Finding] | None = None  # with --fix: the findings before fixing (engine.FixOutcome)
    fixable: int = 0  # of `findings`, how many `--fix` would remove (fixable.py)
    unsafe_fixable: int = 0  # and how many more `--fix --unsafe-fixes` would


@dataclass
class RunResult:
    files: list[FileResult]

    @property
    def findings(self) -> list[Finding]:
        return sorted((f for r in self.files for f in r.findings), key=lambda f: f.sort_key)

    @property
    def fixed(self) -> list[Finding]:
        return sorted((f for r in self.files for f in r.fixed), key=lambda f: f.sort_key)

    @property
    def found(self) -> list[Finding]:
        """The findings before any fix (with --fix), else the findings."""
        found = (f for r in self.files for f in (r.found if r.found is not None else r.findings))
        return sorted(found, key=lambda f: f.sort_key)

    @property
    def fixable(self) -> int:
        return sum(r.fixable for r in self.files)

    @property
    def unsafe_fixable(self) -> int:
        return sum(r.unsafe_fixable for r in self.files)


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


class Cache:
    """Per-file results keyed by content, trainlint's version and the effective configuration,
    plus the digests of the local modules each answer read (the project index's dependencies).
    One JSON file per configuration, replaced atomically."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.cache_path / f"v{__version__}-{settings.digest()}.json"
        self.entries: dict[str, Any] = {}
        self._dependency_digests: dict[str, str | None] = {}
        self.code = _code_fingerprint()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == __version__ and data.get("code") == self.code:
                self.entries = data["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def _current_digest(self, path: str) -> str | None:
        if path not in self._dependency_digests:
            try:
                self._dependency_digests[path] = content_digest(Path(path).read_bytes())
            except OSError:
                self._dependency_digests[path] = None
        return self._dependency_digests[path]

    def lookup(self, target: Target, digest: str) -> list[Finding] | None:
        entry = self.entries.get(str(target.path))
        if not entry or entry.get("digest") != digest:
            return None
        if any(self._current_digest(p) != d for p, d in entry.get("dependencies", {}).items()):
            return None
        try:
            return [Finding.from_json(f).with_path(target.display) for f in entry["findings"]]
        except (KeyError, TypeError):
            return None

    def fix_counts(self, target: Target) -> tuple[int, int]:
        """The (fixable, unsafe_fixable) counts stored with a file's findings."""
        counts = self.entries.get(str(target.path), {}).get("fixable", [0, 0])
        return (counts[0], counts[1]) if isinstance(counts, list) and len(counts) == 2 else (0, 0)

    def store(self, target: Target, result: FileResult) -> None:
        if result.digest is None or any(f.code in (IO_ERROR,) for f in result.findings):
            return
        self.entries[str(target.path)] = {
            "digest": result.digest,
            "dependencies": result.dependencies,
            "findings": [f.to_json() for f in result.findings],
            "fixable": [result.fixable, result.unsafe_fixable],
        }

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            gitignore = self.path.parent / ".gitignore"
            if not gitignore.exists():
                gitignore.write_text("# Created by trainlint\n*\n", encoding="utf-8")
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            document = {"version": __version__, "code": self.code, "files": self.entries}
            temporary.write_text(json.dumps(document), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


# -- per-process state for the worker pool ---------------------------------------------------
_linter: Linter | None = None


def _init_worker(settings: Settings, roots: Sequence[Path]) -> None:
    from trainlint.engine import Linter
    from trainlint.project import ProjectIndex

    global _linter
    _linter = Linter(settings, ProjectIndex(roots))


def process(target: Target, options: RunOptions) -> FileResult:
    """Read, lint and (with --fix) fix and write one file. Never raises for the file's sake."""
    from trainlint.engine import meta_finding
    from trainlint.notebook import linter_for

    assert _linter is not None
    linter = _linter
    result = FileResult(target.display)
    if target.missing or target.problem:
        message = target.problem or "no such file or directory"
        result.findings = [meta_finding(IO_ERROR, message, target.display)]
        return result
    try:
        raw = target.path.read_bytes()
    except OSError as exc:
        result.findings = [meta_finding(IO_ERROR, f"cannot read: {exc.strerror or exc}", target.display)]
        return result
    result.digest = content_digest(raw)
    try:
        source = SourceText.from_bytes(raw)
    except SourceError as exc:
        result.findings = [meta_finding(SYNTAX_ERROR, exc.message, target.display, exc.line, exc.column)]
        return result
    linter.project.consulted = {}
    engine = linter_for(target.path, linter)  # a notebook is linted through its code cells
    if options.fix:
        outcome = engine.fix(source.text, target.display, target.path, options.unsafe_fixes)
        result.fixed, result.findings, result.found = outcome.fixed, outcome.remaining, outcome.found
        if outcome.text != source.text:
            result.original_text, result.fixed_text = source.text, outcome.text
            # What remains describes the fixed text, so the cache entry must be keyed by the bytes
            # written, and not be kept at all when nothing is written (--diff).
            result.digest = None
            if options.write:
                _write(target, source, outcome.text, result)
    else:
        result.findings = engine.lint(source.text, target.display, target.path)
    _count_fixable(engine, result, options, result.fixed_text or source.text, target)
    result.dependencies = {p: d for p, d in linter.project.consulted.items() if p != str(target.path.resolve())}
    return result


def _count_fixable(engine, result: FileResult, options: RunOptions, text: str, target: Target) -> None:
    """The summary's counts: what `--fix` would remove, or after `--fix`, what only
    `--unsafe-fixes` would."""
    from trainlint.fixable import count_fixable

    if options.fix and options.unsafe_fixes:
        return
    counts = count_fixable(engine, text, target.display, target.path, result.findings, safe_fixes_applied=options.fix)
    result.fixable, result.unsafe_fixable = counts.safe, counts.unsafe


def _write(target: Target, source: SourceText, text: str, result: FileResult) -> None:
    from trainlint.engine import meta_finding
    from trainlint.fixes import write_atomic

    try:
        data = source.to_bytes(text)
        write_atomic(target.path, data)
        result.digest = content_digest(data)
    except (OSError, UnicodeEncodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        # Nothing was written, so what the fixes would have removed is still there.
        result.findings = sorted([*result.fixed, *result.findings], key=lambda f: f.sort_key)
        result.findings.append(meta_finding(IO_ERROR, f"fixes not written: {reason}", target.display))
        result.fixed = []
        result.found = None  # nothing was fixed: what remains is what was found, plus this TL002
        result.fixed_text = None
        result.digest = None


def _process_many(targets: Sequence[Target], options: RunOptions) -> list[FileResult]:
    return [process(t, options) for t in targets]


def _chunks(items: Sequence[Target], count: int) -> Iterable[Sequence[Target]]:
    size = max(1, min(32, len(items) // (count * 4) or 1))
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(
    targets: Sequence[Target],
    settings: Settings,
    options: RunOptions,
    roots: Sequence[Path],
    progress: Progress | None = None,
) -> RunResult:
    cache = Cache(settings) if options.use_cache else None
    results: dict[Target, FileResult] = {}
    pending: list[Target] = []
    for target in targets:
        cached = _from_cache(cache, target, options)
        if cached is not None:
            results[target] = cached
        else:
            pending.append(target)
    jobs = options.jobs or os.cpu_count() or 1
    if progress is not None:
        progress(len(results))
    if jobs == 1 or len(pending) < 8:
        if pending:
            _init_worker(settings, roots)
        for target in pending:
            results[target] = process(target, options)
            if progress is not None:
                progress(len(results))
    else:
        _run_parallel(pending, settings, options, roots, jobs, results, progress)
    if cache is not None:
        for target in pending:
            cache.store(target, results[target])
        cache.save()
    return RunResult([results[t] for t in targets])


def _pool(jobs: int, settings: Settings, roots: Sequence[Path]) -> ProcessPoolExecutor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    return ProcessPoolExecutor(jobs, context, initializer=_init_worker, initargs=(settings, roots))


def _run_parallel(
    pending: Sequence[Target],
    settings: Settings,
    options: RunOptions,
    roots: Sequence[Path],
    jobs: int,
    results: dict[Target, FileResult],
    progress: Progress | None = None,
) -> None:
    from concurrent.futures.process import BrokenProcessPool

    try:
        with _pool(jobs, settings, roots) as pool:
            chunks = list(_chunks(pending, jobs))
            for chunk, chunk_results in zip(chunks, pool.map(_process_many, chunks, [options] * len(chunks))):
                results.update(zip(chunk, chunk_results))
                if progress is not None:
                    progress(len(results))
    except BrokenProcessPool:
        # A worker died (a native crash, the OOM killer): lint what is left one file per process,
        # so that the crash is pinned to its file and every other file is still checked.
        for target in [t for t in pending if t not in results]:
            results[target] = _process_isolated(target, settings, options, roots)


def _process_isolated(target: Target, settings: Settings, options: RunOptions, roots: Sequence[Path]) -> FileResult:
    from concurrent.futures.process import BrokenProcessPool

    from trainlint.engine import meta_finding

    try:
        with _pool(1, settings, roots) as pool:
            return pool.submit(process, target, options).result()
    except BrokenProcessPool:
        message = "the process linting this file crashed, so it was not checked (please report it)"
        return FileResult(target.display, findings=[meta_finding(INTERNAL_ERROR, message, target.display)])


def _from_cache(cache: Cache | None, target: Target, options: RunOptions) -> FileResult | None:
    if cache is None or target.missing or target.problem:
        return None
    if str(target.path) not in cache.entries:
        return None  # nothing cached: the worker reads and hashes the file once
    try:
        digest = content_digest(target.path.read_bytes())
    except OSError:
        return None
    findings = cache.lookup(target, digest)
    if findings is None:
        return None
    if options.fix and any(is_fix_allowed(f.fix, options.unsafe_fixes) for f in findings):
        return None  # there is something to fix: lint and fix it for real
    fixable, unsafe_fixable = cache.fix_counts(target)
    if options.fix:
        fixable = 0  # nothing safe was left to fix, or the file would not come from the cache
        unsafe_fixable = 0 if options.unsafe_fixes else unsafe_fixable
    return FileResult(target.display, findings=findings, digest=digest, fixable=fixable, unsafe_fixable=unsafe_fixable)
