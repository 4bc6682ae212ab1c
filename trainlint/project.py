"""The project-level index: which local modules exist, and which layers each model class holds.

Rules ask questions that span files ("does the model built by ``build_model`` in another module
contain an ``nn.Conv3d``?"). The index answers from a summary of each module made with Python's
``ast`` (about a tenth of a LibCST parse), loaded on first need, so linting one file still
resolves the local modules it imports. Imports resolve as Python would: a script's own directory
first (``sys.path[0]``), then the linted roots.

Every file an answer was read from is recorded, so a cached result can be checked against them.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trainlint.source import content_digest, python_ast

# The digest recorded in ``ProjectIndex.consulted`` for a path that was looked for and not found:
# an answer that depends on a module's absence is stale once the module is created.
ABSENT = "absent"


@dataclass
class ModuleSummary:
    name: str
    path: Path
    digest: str
    is_package: bool
    imports: dict[str, str] = field(default_factory=dict)  # local name -> qualified name
    # class name -> qualified names of what it calls (layers, submodules) and its bases
    class_calls: dict[str, set[str]] = field(default_factory=dict)
    class_bases: dict[str, list[str]] = field(default_factory=dict)
    # function name -> qualified names of the callables whose result it returns
    function_returns: dict[str, set[str]] = field(default_factory=dict)


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def module_name_for(path: Path) -> tuple[str, Path]:
    """Dotted module name of a file and the directory it is importable from (first non-package)."""
    path = path.resolve()
    parts = [] if path.name == "__init__.py" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").exists() and directory.parent != directory:
        parts.append(directory.name)
        directory = directory.parent
    return ".".join(reversed(parts)), directory


class _Summarizer:
    def __init__(self, summary: ModuleSummary) -> None:
        self.summary = summary

    def qualify(self, node: ast.expr) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        bound = self.summary.imports.get(head)
        if bound is None:
            return None
        return f"{bound}.{rest}" if rest else bound

    def read_imports(self, tree: ast.Module) -> None:
        summary = self.summary
        package = summary.name if summary.is_package else summary.name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        summary.imports[alias.asname] = alias.name
                    else:
                        head = alias.name.split(".")[0]
                        summary.imports[head] = head
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".") if package else []
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    if alias.name != "*":
                        summary.imports[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                summary.imports[node.name] = f"{summary.name}.{node.name}"

    def calls_in(self, nodes: Iterable[ast.AST]) -> set[str]:
        found: set[str] = set()
        for root in nodes:
            for node in ast.walk(root):
                if isinstance(node, ast.Call):
                    name = self.qualify(node.func)
                    if name:
                        found.add(name)
        return found

    def built_by(self, value: ast.expr, assigned: dict[str, set[str]]) -> set[str]:
        """Callables that build the object an expression yields: ``Net(cfg)``, also through
        method chains (``Net(cfg).cuda()``), wrappers (``DDP(Net())``, ``nn.Sequential(A(), B())``)
        and local names assigned earlier in the function."""
        if isinstance(value, ast.Name):
            return assigned.get(value.id, set())
        if not isinstance(value, ast.Call):
            return set()
        found = set()
        name = self.qualify(value.func)
        if name:
            found.add(name)
        if isinstance(value.func, ast.Attribute):
            found |= self.built_by(value.func.value, assigned)
        for argument in value.args:
            found |= self.built_by(argument, assigned)
        return found

    def returned_calls(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
        """Callables whose result the function returns, directly or through a local name."""
        assigned: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign):
                built = self.built_by(node.value, assigned)
                for target in node.targets:
                    if built and isinstance(target, ast.Name):
                        assigned.setdefault(target.id, set()).update(built)
        returned: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Return) and node.value is not None:
                returned |= self.built_by(node.value, assigned)
        return returned

    def read_definitions(self, tree: ast.Module) -> None:
        summary = self.summary
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                summary.class_calls[node.name] = self.calls_in(node.body)
                summary.class_bases[node.name] = [b for b in map(self.qualify, node.bases) if b]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                summary.function_returns[node.name] = self.returned_calls(node)


def summarize(name: str, path: Path, data: bytes) -> ModuleSummary:
    summary = ModuleSummary(
        name=name,
        path=path,
        digest=content_digest(data),
        is_package=path.name == "__init__.py",
    )
    try:
        tree = python_ast(data, str(path))
    except (SyntaxError, ValueError):
        return summary
    summarizer = _Summarizer(summary)
    summarizer.read_imports(tree)
    summarizer.read_definitions(tree)
    return summary


class ProjectIndex:
    """Local modules, found from the linted roots and from each importing script's directory."""

    def __init__(self, roots: Iterable[Path] = ()) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]  # realpath: a symlink loop cannot raise
        self._by_path: dict[Path, ModuleSummary | None] = {}
        # (module name, importer's sys.path[0]) -> summary: two scripts in different directories
        # may each import their own ``models``
        self._by_name: dict[tuple[str, Path | None], ModuleSummary | None] = {}
        self._importer_roots: dict[Path, Path] = {}
        self.consulted: dict[str, str] = {}  # path -> digest of every module read for an answer
        # module lookup -> the candidate paths it found missing (recorded as ABSENT per answer)
        self._absent: dict[tuple[str, Path | None], list[str]] = {}

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
        roots.extend(r if r.is_dir() else r.parent for r in self.roots)
        return list(dict.fromkeys(roots))

    def module(self, name: str, importer: Path | None = None) -> ModuleSummary | None:
        key = (name, self._importer_root(importer))
        if key not in self._by_name:
            self._by_name[key] = self._find_module(name, importer, self._absent.setdefault(key, []))
        for missing in self._absent.get(key, ()):
            self.consulted[missing] = ABSENT
        summary = self._by_name[key]
        if summary is not None:
            self.consulted[str(summary.path)] = summary.digest  # every answer records its sources
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
        if path not in self._by_path:
            try:
                data = path.read_bytes()
            except OSError:
                self._by_path[path] = None
                return None
            # The name Python gives the file from its top-level package, whatever name the first
            # lookup used: the summary (and its relative imports) must not depend on query order.
            self._by_path[path] = summarize(module_name_for(path)[0], path, data)
        summary = self._by_path[path]
        if summary is not None:
            self.consulted[str(path)] = summary.digest
        return summary

    def _definition(self, qualified: str, importer: Path | None, depth: int = 0) -> tuple[ModuleSummary, str] | None:
        """The module and top-level name that define ``qualified``, following re-exports."""
        module_name, _, attr = qualified.rpartition(".")
        if not module_name or depth > 8:
            return None
        summary = self.module(module_name, importer)
        if summary is None:
            return None
        if attr in summary.class_calls or attr in summary.function_returns:
            return summary, attr
        reexport = summary.imports.get(attr)
        if reexport and reexport != qualified:
            return self._definition(reexport, summary.path, depth + 1)
        return None

    # -- questions rules ask ------------------------------------------------------------------
    def layers_of(self, qualified: str, importer: Path | None = None) -> frozenset[str]:
        """Qualified names of every torch callable used, transitively, by the model that a class
        or factory function of the project builds (``torch.nn.Conv3d``, ``torch.nn.functional.conv3d``).
        Empty when the name is not a local class or factory."""
        return frozenset(self._torch_calls(qualified, importer, set()))

    def _torch_calls(self, qualified: str, importer: Path | None, seen: set[str]) -> Iterator[str]:
        if qualified in seen:
            return
        seen.add(qualified)
        found = self._definition(qualified, importer)
        if found is None:
            return
        summary, attr = found
        called = summary.class_calls.get(attr)
        if called is None:
            called = summary.function_returns.get(attr, set())
        else:
            called = called | set(summary.class_bases.get(attr, []))
        for name in called:
            if name.startswith("torch."):
                yield name
            else:
                yield from self._torch_calls(name, summary.path, seen)
