"""A whole run: files -> (cache | parallel linting and fixing) -> results, in a stable order."""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trainlint import lifetime
from trainlint.cache import Cache
from trainlint.config import INTERNAL_ERROR, IO_ERROR, SYNTAX_ERROR, Settings
from trainlint.discovery import Target
from trainlint.findings import Finding, is_fix_allowed
from trainlint.source import SourceError, SourceText, content_digest

# Allocations between young collections, young collections between middle ones, middle ones
# between full ones (Python's defaults: 700, 10, 10).
COLLECTION_THRESHOLDS = (100_000, 10, 100)

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


# -- per-process state for the worker pool ---------------------------------------------------
_linter: Linter | None = None


def _init_worker(settings: Settings, roots: Sequence[Path]) -> None:
    from trainlint.engine import Linter
    from trainlint.project import ProjectIndex

    # A lint run allocates a tree's worth of objects at a time and keeps large trees alive (the
    # modules parsed for the engine). With Python's default thresholds the collector scanned
    # each fresh tree several times over and a full collection ran every few files, for little
    # garbage (a file releases its tree when done). Measured on pytorch-image-models with one
    # job: collections took 4 s of a 23 s run with the defaults, 0.3 s with these, at the same
    # peak memory.
    gc.set_threshold(*COLLECTION_THRESHOLDS)
    global _linter
    _linter = Linter(settings, ProjectIndex(roots))


def _start_worker(parent_pid: int, settings: Settings, roots: Sequence[Path]) -> None:
    lifetime.become_worker(parent_pid)
    try:
        _init_worker(settings, roots)
    except SystemExit as stop:  # stopped while starting: exit quietly, as from _process_many
        os._exit(stop.code if isinstance(stop.code, int) else 1)


def process(target: Target, options: RunOptions) -> FileResult:
    """Read, lint and (with --fix) fix and write one file. Never raises for the file's sake: an
    unexpected error (a RecursionError in a notebook's JSON, a bug) is this file's TL003, and the
    run, its report and its cache go on."""
    try:
        return _process(target, options)
    except Exception as exc:
        from trainlint.engine import meta_finding

        message = f"internal error while checking this file: {type(exc).__name__}: {exc} (please report it)"
        return FileResult(target.display, findings=[meta_finding(INTERNAL_ERROR, message, target.display)])


def _process(target: Target, options: RunOptions) -> FileResult:
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
    result.digest = linted_digest = content_digest(raw)
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
                _write(target, source, outcome.text, result, linted_digest, linter.project.roots)
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


def _write(target: Target, source: SourceText, text: str, result: FileResult, linted_digest: str, roots: Sequence[Path]) -> None:
    """Write the fixed text, only over the content that was linted (``linted_digest``) and never
    through a symbolic link out of the linted tree (``roots``)."""
    from trainlint.engine import meta_finding
    from trainlint.fixes import ChangedDuringRun, write_atomic

    if lifetime.parent_is_gone():  # the run was killed: nobody will report what we write
        os._exit(1)
    try:
        data = source.to_bytes(text)
        _refuse_link_out_of(target.path, roots)
        write_atomic(target.path, data, expected_digest=linted_digest)
        result.digest = content_digest(data)
    except ChangedDuringRun:
        # The findings describe content that is gone; the user's edit is kept as it is.
        message = "fixes not written: the file changed during the run (your edit is kept; run trainlint again)"
        result.findings = [meta_finding(IO_ERROR, message, target.display)]
        result.fixed, result.found, result.fixed_text, result.digest = [], None, None, None
        result.fixable = result.unsafe_fixable = 0
    except (OSError, UnicodeEncodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        # Nothing was written, so what the fixes would have removed is still there.
        result.findings = sorted([*result.fixed, *result.findings], key=lambda f: f.sort_key)
        result.findings.append(meta_finding(IO_ERROR, f"fixes not written: {reason}", target.display))
        result.fixed = []
        result.found = None  # nothing was fixed: what remains is what was found, plus this TL002
        result.fixed_text = None
        result.digest = None


def _refuse_link_out_of(path: Path, roots: Sequence[Path]) -> None:
    """PermissionError for a symbolic link to a file outside every linted root: a fix must not
    change a file the run was not asked to change (directory links are never followed at all)."""
    if not os.path.islink(path):
        return
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(root) for root in roots):
        raise PermissionError(errno.EPERM, f"it is a symbolic link to {real}, outside the linted tree")


def _process_many(targets: Sequence[Target], options: RunOptions) -> list[FileResult]:
    try:
        return [process(t, options) for t in targets]
    except SystemExit as stop:  # SIGTERM: the run was stopped, or the main process died
        os._exit(stop.code if isinstance(stop.code, int) else 1)  # not back into the pool's loop


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
    cache = Cache(settings, roots) if options.use_cache else None
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
    return ProcessPoolExecutor(jobs, context, initializer=_start_worker, initargs=(os.getpid(), settings, roots))


@contextmanager
def _stopping_workers_on_error(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """The pool, shut down at the end; on Ctrl-C, SIGTERM or any error its workers are terminated
    at once instead of finishing (and writing) the files they hold."""
    try:
        yield pool
    except BaseException:
        # Futures are left as they are (not cancelled): the executor marks them failed when it
        # sees its workers gone, and a cancelled one would make it raise in its own thread.
        lifetime.terminate(list(getattr(pool, "_processes", {}).values()))  # the executor's own list
        pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)


def _run_parallel(
    pending: Sequence[Target],
    settings: Settings,
    options: RunOptions,
    roots: Sequence[Path],
    jobs: int,
    results: dict[Target, FileResult],
    progress: Progress | None = None,
) -> None:
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    try:
        with _stopping_workers_on_error(_pool(jobs, settings, roots)) as pool:
            chunks = {pool.submit(_process_many, chunk, options): chunk for chunk in _chunks(pending, jobs)}
            for future in as_completed(chunks):
                results.update(zip(chunks[future], future.result()))
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
        with _stopping_workers_on_error(_pool(1, settings, roots)) as pool:
            return pool.submit(_process_many, [target], options).result()[0]
    except BrokenProcessPool:
        message = "the process linting this file crashed, so it was not checked (please report it)"
        return FileResult(target.display, findings=[meta_finding(INTERNAL_ERROR, message, target.display)])


def _from_cache(cache: Cache | None, target: Target, options: RunOptions) -> FileResult | None:
    if cache is None or target.missing or target.problem:
        return None
    if not cache.has_entry(target):
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
