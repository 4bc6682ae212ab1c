"""Run a training script in this process under the monitor, for a few steps, and report.

The script runs as ``python SCRIPT ARGS`` would run it (``__name__ == "__main__"``, ``sys.argv``,
its directory first on ``sys.path``), optionally with some of its files' text replaced in memory
(``sources``: the fixed code of ``trainlint confirm``), never touching the files on disk.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import random
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainlint.runtime.cpu_mapping import CudaOnCpu, uses_cuda_devices
from trainlint.runtime.monitor import Monitor
from trainlint.runtime.records import Record
from trainlint.runtime.report import HealthReport, summarize
from trainlint.runtime.stopping import StopRun
from trainlint.runtime.user_code import environment_paths, warnings_at_user_lines

DEFAULT_STEPS = 10


class UsageError(Exception):
    """A problem with how the command was called, not with the training code."""


@dataclass
class SmokeRun:
    script: Path
    args: list[str]
    device: str
    record: Record
    report: HealthReport
    label: str = "original"
    files_replaced: list[Path] = field(default_factory=list)
    other_ranks: list[tuple[int, Record | None]] = field(default_factory=list)  # torchrun, on rank 0

    def ranks_for_json(self) -> list[tuple[int, Record]]:
        """Every rank's record, this one's first; empty when there was one process."""
        if not self.other_ranks:
            return []
        return [(self.record.rank, self.record), *[(r, rec) for r, rec in self.other_ranks if rec is not None]]


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when there is one; asking for CUDA without one is a usage error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device


def device_description(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return "cpu"


def run_script(
    script: Path,
    args: Sequence[str] = (),
    *,
    steps: int | None = DEFAULT_STEPS,
    max_seconds: float | None = None,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = 1,
    sources: Mapping[Path, str] | None = None,
    label: str = "original",
    max_backward: int | None = None,
) -> SmokeRun:
    """Run ``script`` under the monitor until ``steps`` optimizer steps are done, ``max_seconds``
    have passed, or it ends.

    ``threads=1`` by default: on a busy machine more threads made the same short run 10-100x
    slower and changed LayerNorm results in the last digits. ``sources`` maps files (the script
    or modules it imports) to the text to run instead of theirs.
    """
    script = script.resolve()
    if not script.is_file():
        raise UsageError(f"no such script: {script}")
    device = resolve_device(device)
    if max_backward is None and steps is not None:
        max_backward = max(100, 20 * steps)  # ends loops that stop reaching the optimizer
    replaced = {Path(p).resolve(): text for p, text in (sources or {}).items()}
    monitor = Monitor(max_steps=steps, max_backward=max_backward, max_seconds=max_seconds)
    with _isolated_process_state(script, args, seed, threads), _source_overrides(replaced):
        mapping = CudaOnCpu(map_devices=places_on_cuda(script, replaced)) if device == "cpu" else None
        with warnings_at_user_lines():
            if mapping is None:
                _execute(script, replaced.get(script), monitor)
            else:
                with mapping:
                    _execute(script, replaced.get(script), monitor)
        for note in mapping.notes() if mapping else []:
            monitor.note(note)
    record = monitor.record
    return SmokeRun(
        script=script,
        args=list(args),
        device=device,
        record=record,
        report=summarize(record),
        label=label,
        files_replaced=sorted(replaced),
    )


def places_on_cuda(script: Path, replaced: Mapping[Path, str]) -> bool:
    """Whether the script, or a module of its project it imports, may put tensors on CUDA."""
    try:
        from trainlint.api import local_imports
        from trainlint.project import ProjectIndex, module_name_for

        files = local_imports(script, ProjectIndex([module_name_for(script)[1]]))
    except ImportError:  # the linter is not importable: the script alone
        files = [script]
    for path in files:
        try:
            text = replaced.get(path) or path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if uses_cuda_devices(text):
            return True
    return False


def _execute(script: Path, text: str | None, monitor: Monitor) -> None:
    """Run the script as ``__main__`` under the monitor; record what it raised."""
    source = script.read_text() if text is None else text
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    group_before = _process_group_initialized()
    monitor.start()
    try:
        code = compile(source, str(script), "exec")
        exec(code, module.__dict__)
    except StopRun as stop:
        monitor.stop(stop)
    except SystemExit as exit_:
        monitor.stop(None if exit_.code in (0, None) else exit_)
    except KeyboardInterrupt as interrupt:
        monitor.stop(interrupt)
        raise
    except Exception as exc:
        monitor.stop(exc)
    finally:
        monitor.stop()
        if not group_before and _process_group_initialized():
            # A run stopped after N steps never reaches the script's destroy_process_group().
            torch.distributed.destroy_process_group()
            # And its objects must outlive the run: freeing DDP's reducer while the process goes
            # on can deadlock inside torch (the gloo group's destructor joins its worker threads
            # holding the GIL, and a worker needs the GIL to free its last work; seen 1 run in
            # 7 under torchrun). A script run by itself frees them at exit, where that cannot
            # happen, so they are kept until then.
            _KEPT_UNTIL_EXIT.append(module)
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


_KEPT_UNTIL_EXIT: list[types.ModuleType] = []


def _process_group_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def _isolated_process_state(script: Path, args: Sequence[str], seed: int, threads: int | None) -> Iterator[None]:
    """Give the script a fresh argv, path, seed and thread count; take back what it changed.

    Two runs in one process (original and fixed) must start from the same state: same seed,
    and none of the first run's local modules left in sys.modules for the second to reuse.
    """
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_modules = set(sys.modules)
    saved_threads = torch.get_num_threads()
    saved_dtype = torch.get_default_dtype()
    saved_grad, saved_anomaly = torch.is_grad_enabled(), torch.is_anomaly_enabled()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    saved_bytecode = sys.dont_write_bytecode
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    sys.dont_write_bytecode = True  # a smoke run leaves nothing behind in the user's tree
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    _seed_numpy(seed)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        sys.dont_write_bytecode = saved_bytecode
        torch.set_num_threads(saved_threads)
        torch.set_default_dtype(saved_dtype)
        torch.set_grad_enabled(saved_grad)
        torch.set_anomaly_enabled(saved_anomaly)
        torch.use_deterministic_algorithms(saved_deterministic)
        _forget_local_modules(saved_modules, script.parent)


def _seed_numpy(seed: int) -> None:
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed)


def _forget_local_modules(before: set[str], root: Path) -> None:
    """Drop the modules of the user's project that the run imported, so the next run re-imports
    them (possibly fixed); never those of the environment (a venv may live inside the project)."""
    environment = environment_paths()
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if path.is_relative_to(root) and not any(path.is_relative_to(e) for e in environment):
            del sys.modules[name]


class _TextLoader(importlib.abc.SourceLoader):
    """Loads a module from text held in memory instead of its file (no bytecode is written)."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return self.text.encode()
        return Path(path).read_bytes()


class _ReplacedSourceFinder(importlib.abc.MetaPathFinder):
    """Finds modules the usual way, then serves the replacement text for the replaced files."""

    def __init__(self, sources: Mapping[Path, str]) -> None:
        self.sources = sources

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not spec.origin or not spec.has_location:
            return None
        text = self.sources.get(Path(spec.origin).resolve())
        if text is None:
            return None
        return importlib.util.spec_from_file_location(
            name,
            spec.origin,
            loader=_TextLoader(spec.origin, text),
            submodule_search_locations=spec.submodule_search_locations,
        )


@contextmanager
def _source_overrides(sources: Mapping[Path, str]) -> Iterator[None]:
    """Replace files' text for imports and tracebacks while the run lasts."""
    if not sources:
        yield
        return
    finder = _ReplacedSourceFinder(sources)
    sys.meta_path.insert(0, finder)
    saved_lines = {str(p): linecache.cache.get(str(p)) for p in sources}
    for path, text in sources.items():
        # mtime None: linecache.checkcache leaves the entry alone instead of rereading the file.
        linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name, entry in saved_lines.items():
            if entry is None:
                linecache.cache.pop(name, None)
            else:
                linecache.cache[name] = entry
