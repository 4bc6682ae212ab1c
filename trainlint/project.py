"""The project: its modules, where each name is defined, who may call what, and the parsed
modules the value-flow engine reads across files.

Rules ask questions that span files ("does the model built by ``build_model`` in another module
contain an ``nn.Conv3d``?", "what is passed to ``Trainer(model)`` in train.py?"). The index
answers *where to look* from a cheap ``ast`` summary of each module (:mod:`trainlint.module_summary`),
loaded on first need, so linting one file still resolves the local modules it imports; the
engine then parses the few modules it must read with LibCST, once, and keeps them (a bounded
cache). Imports resolve as Python would: a script's own directory first (``sys.path[0]``), then
the linted roots.

The file being linted is registered with :meth:`ProjectIndex.register`: questions about it read
the text being linted (which differs from the disk during ``--fix``), never the disk.

Every file an answer was read from is recorded in ``consulted`` with its digest, so a cached
result can be checked against them.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trainlint.module_summary import ModuleSummary, summarize
from trainlint.source import content_digest

if TYPE_CHECKING:
    from trainlint.analysis.values.guard import EvaluationGuard
    from trainlint.class_family import ClassFamilies
    from trainlint.context import FileContext

# The digest recorded in ``ProjectIndex.consulted`` for a path that was looked for and not found:
# an answer that depends on a module's absence is stale once the module is created.
ABSENT = "absent"
# Dependencies on a search over every file of the project, not on one file (see search_digest)
SEARCH = "?search:"

MAX_PARSED_MODULES = 64  # parsed modules kept for the engine (LRU)
MAX_PROJECT_FILES = 20_000  # files scanned when looking for call sites
_SKIPPED_DIRECTORIES = frozenset({
    ".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", "node_modules", "build", "dist",
    "site-packages", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".trainlint_cache", ".eggs",
    ".ipynb_checkpoints",
})


def module_name_for(path: Path) -> tuple[str, Path]:
    """Dotted module name of a file and the directory it is importable from (first non-package)."""
    path = path.resolve()
    parts = [] if path.name == "__init__.py" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").exists() and directory.parent != directory:
        parts.append(directory.name)
        directory = directory.parent
    return ".".join(reversed(parts)), directory


class ProjectIndex:
    """Local modules, found from the linted roots and from each importing script's directory."""

    def __init__(self, roots: Iterable[Path] = ()) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]  # realpath: a symlink loop cannot raise
        self._by_path: dict[Path, ModuleSummary | None] = {}
        # (module name, importer's sys.path[0]) -> summary: two scripts in different directories
        # may each import their own ``models``
        self._by_name: dict[tuple[str, Path | None], ModuleSummary | None] = {}
        self._importer_roots: dict[Path, Path] = {}
        self._contexts: OrderedDict[Path, FileContext | None] = OrderedDict()
        self._files: list[Path] | None = None
        self._texts: dict[Path, bytes | None] = {}
        self._importing: dict[tuple[str, str], list[Path]] = {}  # (module, word) -> files that may use it
        # The text index of calls (see functions_reaching), for code and for tests
        self._called: dict[bool, dict[bytes, set[bytes]]] = {}  # function name -> names it calls
        self._searches: dict[tuple[str, tuple[bytes, ...], bool], frozenset[str]] = {}  # its answers
        self._digests: dict[tuple[str, str, str], str] = {}  # what each recorded search found, digested
        self._current: FileContext | None = None
        self._current_summary: ModuleSummary | None = None
        # module lookup -> the candidate paths it found missing (recorded as ABSENT per answer)
        self._absent: dict[tuple[str, Path | None], list[str]] = {}
        # Files of ``test-paths`` (set by the Linter from its settings): not callers of other code.
        self.is_test_path: Callable[[Path], bool] = lambda path: False
        self._evaluation: EvaluationGuard | None = None
        self._families: ClassFamilies | None = None

    @property
    def evaluation(self) -> EvaluationGuard:
        """One recursion guard and memory for the engines of every module (made on first use:
        the cache's checks of what a search finds need no engine, and importing one costs more
        than a warm run)."""
        if self._evaluation is None:
            from trainlint.analysis.values.guard import EvaluationGuard

            self._evaluation = EvaluationGuard()
        return self._evaluation

    @property
    def families(self) -> ClassFamilies:
        """Where instances of a class may be, for the callers of its methods (made on first use)."""
        if self._families is None:
            from trainlint.class_family import ClassFamilies

            self._families = ClassFamilies(self)
        return self._families

    # -- the file being linted ----------------------------------------------------------------
    def register(self, ctx: FileContext) -> None:
        """The file being linted: its text, not the disk's, answers questions about it. The
        modules kept parsed forget the answers computed for the previous file: each file's
        answers are its own (the same whatever was linted before), and record what they read."""
        from trainlint.analysis.imports import ImportResolver
        from trainlint.analysis.values import Scopes, ValueFlow

        previous = self._current
        if previous is not None and previous is not ctx and not any(kept is previous for kept in self._contexts.values()):
            previous.release()  # the last file linted, which no other file's question parsed
        self._current = ctx
        self._current_summary = None
        for parsed in self._contexts.values():
            if parsed is not None:  # the engine's answers carry the files they read; the rest may not
                parsed.forget_answers(keep=(ImportResolver, Scopes, ValueFlow))

    def _current_path(self) -> Path | None:
        current = self._current
        return current.real_path.resolve() if current is not None and current.real_path is not None else None

    # -- finding modules ----------------------------------------------------------------------
    def _importer_root(self, importer: Path | None) -> Path | None:
        if importer is None:
            return None
        root = self._importer_roots.get(importer)
        if root is None:
            root = self._importer_roots[importer] = module_name_for(importer)[1]
        return root

    def _search_roots(self, importer: Path | None) -> list[Path]:
        roots = []
        importer_root = self._importer_root(importer)
        if importer_root is not None:
            roots.append(importer_root)
            # A script run directly (`python noesis/sample.py`) imports from its own directory,
            # even inside a package.
            roots.append(Path(os.path.realpath(importer)).parent)  # type: ignore[arg-type]
        roots.extend(r if r.is_dir() else r.parent for r in self.roots)
        return list(dict.fromkeys(roots))

    def module(self, name: str, importer: Path | None = None) -> ModuleSummary | None:
        current = self._current
        if current is not None and name == (current.module_name or "__main__"):
            return self._summary_of_current()  # the text being linted (stdin, a notebook, --fix)
        key = (name, self._importer_root(importer))
        if key not in self._by_name:
            self._by_name[key] = self._find_module(name, importer, self._absent.setdefault(key, []))
        if self._absent.get(key):
            self.evaluation.note([(missing, ABSENT) for missing in self._absent[key]])
        summary = self._by_name[key]
        if summary is not None:
            self.consult(summary)  # every answer records its sources
        return summary

    def _find_module(self, name: str, importer: Path | None, missing: list[str]) -> ModuleSummary | None:
        relative = Path(*name.split("."))
        for root in self._search_roots(importer):
            for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
                if candidate.is_file():
                    return self.summary(candidate, name)
                missing.append(str(candidate))
        return None

    def summary(self, path: Path, name: str | None = None) -> ModuleSummary | None:
        path = path.resolve()
        if path == self._current_path():
            return self._summary_of_current()
        if path not in self._by_path:
            data = self._read(path)
            # The name Python gives the file from its top-level package, whatever name the first
            # lookup used: the summary (and its relative imports) must not depend on query order.
            self._by_path[path] = None if data is None else summarize(module_name_for(path)[0], path, data)
        summary = self._by_path[path]
        if summary is not None:
            self.consult(summary)
        return summary

    def known_to_parse(self, path: Path, text: str) -> bool:
        """Python's parser has read this very text of the file already (for its summary, asked
        by another file): the linter need not parse it again to learn that it can."""
        summary = self._by_path.get(path.resolve())
        return summary is not None and summary.parsed and summary.digest == content_digest(text.encode("utf-8", "surrogatepass"))

    @property
    def consulted(self) -> dict[str, str]:
        """Path -> digest of every module read for the answers about the file being linted."""
        return self.evaluation.consulted

    @consulted.setter
    def consulted(self, value: dict[str, str]) -> None:
        self.evaluation.consulted = value
        self.evaluation.computed = 0  # a new linted file: a new budget of questions

    def consult(self, summary: ModuleSummary) -> None:
        """Record that the answer being computed read this module."""
        self.evaluation.note([(str(summary.path), summary.digest)])

    def _summary_of_current(self) -> ModuleSummary | None:
        current = self._current
        if current is None:
            return None
        if self._current_summary is None:
            if current.real_path is not None:
                path = current.real_path.resolve()
                name = current.module_name or module_name_for(path)[0]
            else:
                path, name = Path(current.path), current.module_name or "__main__"
            self._current_summary = summarize(name, path, current.source.text)
        return self._current_summary

    def _read(self, path: Path) -> bytes | None:
        if path not in self._texts:
            try:
                self._texts[path] = path.read_bytes() if path.is_file() else None
            except OSError:
                self._texts[path] = None
        return self._texts[path]

    def definition(self, qualified: str, importer: Path | None, depth: int = 0) -> tuple[ModuleSummary, str] | None:
        """The module and name (``Outer.Inner`` for a nested class) that define ``qualified``,
        following re-exports through packages."""
        module_name, _, attr = qualified.rpartition(".")
        if not module_name or depth > 8:
            return None
        summary = self.module(module_name, importer)
        if summary is None:
            outer = self.definition(module_name, importer, depth + 1)  # a nested class
            if outer is not None and f"{outer[1]}.{attr}" in outer[0].classes:
                return outer[0], f"{outer[1]}.{attr}"
            return None
        if summary.defines(attr):
            return summary, attr
        reexport = summary.imports.get(attr)
        if reexport and reexport != qualified:
            return self.definition(reexport, summary.path, depth + 1)
        return self._star_definition(summary, attr, depth, set())

    def _star_definition(
        self, summary: ModuleSummary, attr: str, depth: int, seen: set[str]
    ) -> tuple[ModuleSummary, str] | None:
        """``attr`` brought in by ``from module import *`` (a package's ``__init__`` that
        re-exports its submodules that way), searched depth first; each module once."""
        if attr.startswith("_") or depth > 8:
            return None  # a star import leaves out private names
        for module in summary.star_imports:
            if module in seen:
                continue
            seen.add(module)
            star = self.module(module, summary.path)
            if star is None:
                continue
            if star.defines(attr):
                return star, attr
            reexport = star.imports.get(attr)
            if reexport:
                return self.definition(reexport, star.path, depth + 1)
            found = self._star_definition(star, attr, depth + 1, seen)
            if found is not None:
                return found
        return None

    # -- parsed modules for the engine -------------------------------------------------------------
    def context(self, summary: ModuleSummary) -> FileContext | None:
        """The parsed module of a summary (the registered file's own context for it), kept in a
        bounded cache; None when it cannot be read or parsed."""
        path = summary.path
        if summary is self._current_summary or path == self._current_path():
            return self._current
        if path in self._contexts:
            self._contexts.move_to_end(path)
            return self._contexts[path]
        self._contexts[path] = self._parse(summary)
        while len(self._contexts) > MAX_PARSED_MODULES:
            evicted = self._contexts.popitem(last=False)[1]
            if evicted is not None and evicted is not self._current:
                evicted.release()
        return self._contexts[path]

    def _parse(self, summary: ModuleSummary) -> FileContext | None:
        from trainlint.context import FileContext
        from trainlint.engine import parse_for_analysis
        from trainlint.source import SourceError, SourceText

        data = self._read(summary.path)
        if data is None:
            return None
        try:
            source = SourceText.from_bytes(data)
        except SourceError:
            return None
        module = parse_for_analysis(source.text, str(summary.path))
        if module is None:
            return None
        return FileContext(_display(summary.path), source, module, self, summary.name, summary.path)

    def parsed(self, path: Path, text: str) -> FileContext | None:
        """A context this index already parsed for the engine, when its text is ``text``: the
        linter reuses it rather than parsing the file a second time."""
        found = self._contexts.get(path.resolve())
        return found if found is not None and found.source.text == text else None

    # -- who may call what ----------------------------------------------------------------------
    def project_files(self) -> list[Path]:
        """Every Python file under the roots (virtual environments and build output skipped)."""
        if self._files is None:
            found: list[Path] = []
            for root in self.roots:
                found.extend(_python_files(root, MAX_PROJECT_FILES - len(found)))
            self._files = sorted(set(found))
        return self._files

    def modules_importing(self, module: str, word: str, mentioning: tuple[str, ...] = ()) -> Iterator[ModuleSummary]:
        """Summaries of the project's modules that may use ``word`` defined in ``module``: their
        text spells ``word`` and an import statement names a part of ``module`` (``from
        models.gan import D``, ``import models``, ``from .gan import D``). Found with a text
        search (once per run for each question); only those are parsed. With ``mentioning``, only
        files that also spell one of those words. The file being linted comes first, from the
        text being linted."""
        importing = _import_pattern(module)
        if importing is None:
            return
        current = self._current_path()
        if current is not None and self._current is not None:
            text = self._current.source.text.encode("utf-8", "surrogatepass")
            if (
                word.encode() in text and importing.search(text) and _mentions(text, mentioning)
                and (summary := self._summary_of_current()) is not None
            ):
                yield summary
        self._note_search("importing", module, word)
        for path in self._importers_by_text(module, word):
            if path != current and _mentions(self._read(path) or b"", mentioning) and (summary := self.summary(path)):
                yield summary

    def _importers_by_text(self, module: str, word: str) -> list[Path]:
        """The project files that spell ``word`` and an import of ``module`` (once per run)."""
        key = (module, word)
        if key not in self._importing:
            importing = _import_pattern(module)
            needle = word.encode()
            self._importing[key] = [
                path for path in self.project_files()
                if importing is not None and (data := self._read(path)) is not None
                and needle in data and importing.search(data)
            ]
        return self._importing[key]

    def search_digest(self, key: str) -> str | None:
        """What a search recorded as a dependency (``modules_importing``, the text index of
        calls) finds now, as the digest it was recorded with: a module that starts importing
        another, or a training function that starts calling a helper, changes it, and the cached
        results of the files whose answers relied on the search are stale."""
        kind, first, second = (key[len(SEARCH):].split(":", 2) + ["", ""])[:3]
        return self._search_digest(kind, first, second) if kind in ("importing", "reaching", "called_by") else None

    def _note_search(self, kind: str, first: str, second: str) -> None:
        """Record, for the answer being computed, that it relied on this search."""
        self.evaluation.note([(f"{SEARCH}{kind}:{first}:{second}", self._search_digest(kind, first, second))])

    def _search_digest(self, kind: str, first: str, second: str) -> str:
        """The digest of what a search finds (computed once per run: the calls index is asked
        on every call the analyses resolve). ``importing``: module, word; ``reaching`` and
        ``called_by``: "tests" or "code", the words joined by spaces."""
        key = (kind, first, second)
        found = self._digests.get(key)
        if found is None:
            if kind == "importing":
                answer: Iterable[str] = (str(path) for path in self._importers_by_text(first, second))
            else:
                answer = self._search_calls(kind, tuple(w.encode() for w in second.split(" ")), first == "tests")
            found = self._digests[key] = _digest_of(answer)
        return found

    def functions_reaching(self, words: tuple[bytes, ...]) -> frozenset[str]:
        """Names of the project's functions and methods whose body calls one of ``words``
        (``b".eval("``: a method ``eval``; ``b"backward("``: ``backward`` or ``x.backward``), or
        calls such a function by name, a few calls deep: a text index of the project (each ``def``
        runs to the next one; comments and docstrings left out), built once per run. The
        analyses that follow calls skip resolving a call no such function can answer
        (``x.view(...)``, ``self.log(...)``), which would make the engine look for every caller."""
        return self._noted_search("reaching", words)

    def functions_called_by(self, words: tuple[bytes, ...]) -> frozenset[str]:
        """Names the functions whose body calls one of ``words`` call in turn (by name or as a
        method): what a training function (``backward(``) may pass its tensors to."""
        return self._noted_search("called_by", words)

    def _noted_search(self, kind: str, words: tuple[bytes, ...]) -> frozenset[str]:
        in_tests = self._in_tests()
        self._note_search(kind, "tests" if in_tests else "code", " ".join(w.decode() for w in words))
        return self._search_calls(kind, words, in_tests)

    def _search_calls(self, kind: str, words: tuple[bytes, ...], in_tests: bool) -> frozenset[str]:
        key = (kind, words, in_tests)
        found = self._searches.get(key)
        if found is None:
            calls = self._calls_by_function(in_tests)
            wanted = {spelled for word in words for spelled in _call_spellings(word)}
            if kind == "called_by":
                names = {called.lstrip(b".") for body in calls.values() if body & wanted for called in body}
            else:
                names = {name for name, called in calls.items() if called & wanted}
                for _ in range(3):
                    wanted = {spelled for name in names for spelled in (name, b"." + name)}
                    more = {name for name, called in calls.items() if called & wanted}
                    if more <= names:
                        break
                    names |= more
            found = self._searches[key] = frozenset(name.decode() for name in names)
        return found

    def _in_tests(self) -> bool:
        current = self._current
        return current is not None and current.real_path is not None and self.is_test_path(current.real_path)

    def _calls_by_function(self, in_tests: bool) -> dict[bytes, set[bytes]]:
        """What each function name of the project calls, by name (``.name`` for a method call);
        every definition of a name together. Dunder methods are left out: Python runs them, code
        does not call them by name (`super().__init__(` in every subclass would make each
        constructor of a model zoo reach the one that calls `.eval()`). Test modules count only
        for a test (as the engine's callers do): they call everything, and train nothing."""
        found = self._called.get(in_tests)
        if found is None:
            bodies: dict[bytes, list[bytes]] = {}
            for path in self.project_files():
                if in_tests or not self.is_test_path(path):
                    _add_bodies(bodies, self._read(path) or b"")
            current = self._current
            if current is not None and current.real_path is None:  # text from stdin: not on disk
                _add_bodies(bodies, current.source.text.encode("utf-8", "surrogatepass"))
            found = self._called[in_tests] = {
                name: {m.group(1) + m.group(2) for text in texts for m in _CALL.finditer(_code_only(text))}
                for name, texts in bodies.items()
                if not name.startswith(b"__")
            }
        return found

    def importers(self, module: str, name: str) -> list[ModuleSummary]:
        """The project's other modules that import ``name`` from ``module`` (or use it as
        ``module.name``): a fix that changes what a module-level name is must not surprise them."""
        qualified = f"{module}.{name}"
        current = self._current_summary if self._current is not None else None
        return [
            summary
            for summary in self.modules_importing(module, name)
            if summary is not current and summary.name != module
            and (qualified in summary.imports.values() or qualified in summary.references or qualified in summary.calls)
        ]

    # -- questions rules ask ------------------------------------------------------------------
    def layers_of(self, qualified: str, importer: Path | None = None) -> frozenset[str]:
        """Qualified names of every torch callable a class of the project builds, transitively
        through its submodules and bases (``torch.nn.Conv3d``, ``torch.nn.functional.conv3d``).
        Empty when the name is not a class of the project."""
        return frozenset(name for name in self.built_by_class(qualified, importer) if name.startswith("torch."))

    def built_by_class(self, qualified: str, importer: Path | None = None) -> frozenset[str]:
        """Everything a class of the project calls in its body, and its bases, transitively
        through the project's classes (qualified names: its layers, its submodules' classes)."""
        return frozenset(self._calls_of_class(qualified, importer, set()))

    def _calls_of_class(self, qualified: str, importer: Path | None, seen: set[str]) -> Iterator[str]:
        if qualified in seen:
            return
        seen.add(qualified)
        found = self.definition(qualified, importer)
        if found is None:
            return
        summary, attr = found
        cls = summary.classes.get(attr)
        if cls is None:
            return
        for name in cls.calls | set(cls.bases):
            yield name
            if not name.startswith("torch."):
                yield from self._calls_of_class(name, summary.path, seen)


_DEF = re.compile(rb"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(", re.MULTILINE)


def _add_bodies(bodies: dict[bytes, list[bytes]], text: bytes) -> None:
    """Each ``def name(`` of the text with what follows it up to the next ``def``."""
    matches = list(_DEF.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        bodies.setdefault(match.group(1), []).append(text[match.end() : end])


_CALL = re.compile(rb"(\.?)\b([A-Za-z_]\w*)[ \t]*\(")
_NOT_CODE = re.compile(rb'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|#[^\n]*')


def _code_only(text: bytes) -> bytes:
    """The text without docstrings and comments (a ``#`` inside a string cuts its line short:
    an index may miss a call there, never invent one)."""
    return _NOT_CODE.sub(b"", text)


def _digest_of(items: Iterable[str]) -> str:
    return content_digest("\n".join(sorted(items)).encode("utf-8", "surrogatepass"))


def _call_spellings(word: bytes) -> tuple[bytes, ...]:
    """``b".eval("`` is a method call ``.eval``; ``b"backward("`` is ``backward`` or ``.backward``."""
    name = word.rstrip(b"(")
    return (name,) if name.startswith(b".") else (name, b"." + name)


def _mentions(data: bytes, words: tuple[str, ...]) -> bool:
    return not words or any(word.encode() in data for word in words)


def _import_pattern(module: str) -> re.Pattern[bytes] | None:
    """An import statement naming a part of ``module`` (its package, a subpackage, itself)."""
    # A module named after a file name that is not UTF-8 keeps its bytes (it matches no import).
    parts = "|".join(re.escape(part) for part in module.split(".") if part).encode("utf-8", "surrogateescape")
    if not parts:
        return None
    return re.compile(rb"^[ \t]*(?:from[ \t]+[.\w]*\b(?:%s)\b|import[ \t]+[^\n]*\b(?:%s)\b)" % (parts, parts), re.MULTILINE)


def _display(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path.as_posix()
    return Path(path if relative.startswith("..") else relative).as_posix()


def _python_files(root: Path, limit: int) -> Iterator[Path]:
    if root.is_file():
        if root.suffix == ".py":
            yield root
        return
    count = 0
    for directory, subdirectories, files in os.walk(root):  # symlinked directories are not followed
        subdirectories[:] = sorted(d for d in subdirectories if d not in _SKIPPED_DIRECTORIES and not d.startswith("."))
        for name in files:
            if name.endswith(".py"):
                count += 1
                if count > limit:
                    return
                path = Path(directory, name)
                if not path.is_symlink() and path.is_file():  # a link may point anywhere; a FIFO blocks
                    yield path
