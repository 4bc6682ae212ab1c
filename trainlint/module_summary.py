"""What a module defines, imports and calls, read with Python's ``ast`` (about a tenth of a LibCST
parse): the project index's cheap summary of every module it looks into.

A summary is an index, not an analysis: it says where to look (which module defines a class,
which modules may call a function, which classes a class constructs), and the value-flow engine
then reads the module itself for what values are.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trainlint.source import content_digest, python_ast

@dataclass
class ClassSummary:
    calls: set[str] = field(default_factory=set)  # qualified names of what its body calls (layers, submodules)
    bases: list[str] = field(default_factory=list)  # qualified names of its bases


@dataclass
class ModuleSummary:
    name: str
    path: Path
    digest: str
    is_package: bool
    imports: dict[str, str] = field(default_factory=dict)  # local name -> qualified name
    classes: dict[str, ClassSummary] = field(default_factory=dict)  # "Outer.Inner" for nested ones
    functions: set[str] = field(default_factory=set)  # top-level functions
    variables: set[str] = field(default_factory=set)  # names assigned at the top level
    calls: set[str] = field(default_factory=set)  # qualified callees, and ".name" for method calls
    references: set[str] = field(default_factory=set)  # qualified names and ".attr" used as values, not called
    parsed: bool = False  # Python's parser read it (no syntax error, no nesting past its limits)
    star_imports: list[str] = field(default_factory=list)  # modules of `from module import *`, in order

    def defines(self, name: str) -> bool:
        return name in self.classes or name in self.functions or name in self.variables


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Summarizer:
    def __init__(self, summary: ModuleSummary) -> None:
        self.summary = summary
        # Names imported more than once, from different places: the targets not kept in
        # ``imports`` (`if dense: from train.steps import dense_epoch as run_epoch` / `else: ...
        # import sparse_epoch as run_epoch`). A call of the name may call any of them.
        self.other_imports: dict[str, list[str]] = {}

    def _bind(self, name: str, target: str) -> None:
        imports = self.summary.imports
        known = imports.get(name)
        if known is not None and known != target:
            self.other_imports.setdefault(name, []).append(known)
        imports[name] = target

    def qualify_all(self, node: ast.expr) -> list[str]:
        """The qualified names of a dotted name through each import of its head: one, or
        several where the module imports that name from several places."""
        dotted = _dotted(node)
        if dotted is None:
            return []
        head, _, rest = dotted.partition(".")
        bound = self.summary.imports.get(head)
        if bound is None:
            return []
        return [f"{target}.{rest}" if rest else target for target in (bound, *self.other_imports.get(head, ()))]

    def qualify(self, node: ast.expr) -> str | None:
        names = self.qualify_all(node)
        return names[0] if names else None

    def read_imports(self, tree: ast.Module, nodes: list[ast.AST]) -> None:
        summary = self.summary
        package = summary.name if summary.is_package else summary.name.rpartition(".")[0]
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self._bind(alias.asname, alias.name)
                    else:
                        head = alias.name.split(".")[0]
                        self._bind(head, head)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".") if package else []
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    if alias.name != "*":
                        self._bind(alias.asname or alias.name, f"{base}.{alias.name}")
                    elif base:
                        summary.star_imports.append(base)
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                summary.imports[node.name] = f"{summary.name}.{node.name}"

    def read_definitions(self, body: Iterable[ast.stmt], prefix: str = "") -> None:
        summary = self.summary
        for node in body:
            if isinstance(node, ast.ClassDef):
                name = f"{prefix}{node.name}"
                summary.classes[name] = ClassSummary(
                    calls=self.calls_in(node.body),
                    bases=[b for b in map(self.qualify, node.bases) if b],
                )
                self.read_definitions(node.body, f"{name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not prefix:
                summary.functions.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not prefix:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    summary.variables.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    def calls_in(self, nodes: Iterable[ast.AST]) -> set[str]:
        found: set[str] = set()
        for root in nodes:
            for node in ast.walk(root):
                if isinstance(node, ast.Call):
                    name = self.qualify(node.func) or self.chosen_by_name(node.func)
                    if name:
                        found.add(name)
        return found

    def chosen_by_name(self, func: ast.expr) -> str | None:
        """``module.*`` for a callee picked from a module by a name known at run time:
        ``models.__dict__[arch]``, ``getattr(models, arch)`` (how scripts build the network an
        ``--arch`` option names)."""
        if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Attribute) and func.value.attr == "__dict__":
            module = self.qualify(func.value.value)
        elif isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id == "getattr" and len(func.args) == 2:
            module = self.qualify(func.args[0])
        else:
            return None
        return f"{module}.*" if module else None

    def read_uses(self, nodes: list[ast.AST]) -> None:
        """Every call's callee (qualified, or ``.method``), and every name or ``self.attr`` used
        as a value rather than called: a function passed as a callback has call sites no one
        can see."""
        summary = self.summary
        callees: set[int] = set()
        for node in nodes:
            if isinstance(node, ast.Call):
                callees.add(id(node.func))
                names = self.qualify_all(node.func)
                if names:
                    summary.calls.update(names)
                elif isinstance(node.func, ast.Attribute):
                    summary.calls.add("." + node.func.attr)
        for node in nodes:
            if id(node) in callees or not isinstance(node, (ast.Name, ast.Attribute)):
                continue
            if not isinstance(getattr(node, "ctx", None), ast.Load):
                continue
            names = self.qualify_all(node)
            if names:
                summary.references.update(names)
            elif isinstance(node, ast.Attribute):
                summary.references.add("." + node.attr)


def _walk(tree: ast.AST) -> list[ast.AST]:
    """Every node, in ``ast.walk``'s order (breadth first, fields in order), at half its cost:
    no generator per node."""
    found: list[ast.AST] = []
    queue = deque([tree])
    node_type = ast.AST
    while queue:
        node = queue.popleft()
        found.append(node)
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, node_type):
                queue.append(value)
            elif type(value) is list:
                queue.extend([item for item in value if isinstance(item, node_type)])
    return found


def summarize(name: str, path: Path, data: bytes | str, tree: ast.Module | None = None) -> ModuleSummary:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    summary = ModuleSummary(name=name, path=path, digest=content_digest(raw), is_package=path.name == "__init__.py")
    if tree is None:
        try:
            tree = python_ast(data, str(path))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return summary
    summary.parsed = True
    summarizer = _Summarizer(summary)
    nodes = _walk(tree)  # one walk for every question (ast.walk costs as much as the parse)
    summarizer.read_imports(tree, nodes)
    summarizer.read_definitions(tree.body)
    summarizer.read_uses(nodes)
    return summary
