"""How names resolve to qualified names: ``t.log`` -> ``torch.log`` after ``import torch as t``.

A cheaper stand-in for LibCST's QualifiedNameProvider (which costs several times the parse): it
reads the file's import statements and its top-level definitions, wherever they are, and resolves
the head of a dotted name through them. A name bound by two different imports is ambiguous and
resolves to nothing: precision first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

if TYPE_CHECKING:
    from trainlint.context import FileContext

_AMBIGUOUS = "\0ambiguous"


def dotted_name(expr: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, None for anything else."""
    # Exact types, not isinstance: LibCST's node classes are ABCs, whose instance check is
    # several times slower, and this runs for every name the analyses resolve.
    parts: list[str] = []
    while type(expr) is cst.Attribute:
        parts.append(expr.attr.value)  # type: ignore[attr-defined]
        expr = expr.value  # type: ignore[attr-defined]
    if type(expr) is not cst.Name:
        return None
    parts.append(expr.value)  # type: ignore[attr-defined]
    return ".".join(reversed(parts))


def resolve_relative(module_name: str | None, is_package: bool, level: int, target: str) -> str | None:
    """The absolute module of ``from {'.' * level}{target} import ...`` inside ``module_name``."""
    if not module_name:
        return None
    parts = module_name.split(".")
    if not is_package:
        parts = parts[:-1]
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, target] if target else base) or None


class ImportResolver:
    def __init__(self, ctx: FileContext) -> None:
        self.bindings: dict[str, str] = {}
        self._module_name = ctx.module_name
        self._is_package = ctx.path.endswith("__init__.py")
        for node in (*ctx.nodes.of(cst.Import), *ctx.nodes.of(cst.ImportFrom)):
            for local, qualified in self.names_bound_by(node):
                self._bind(local, qualified)
        prefix = self._module_name or "__main__"
        for statement in ctx.module.body:
            if isinstance(statement, (cst.ClassDef, cst.FunctionDef)):
                self._bind(statement.name.value, f"{prefix}.{statement.name.value}")

    def names_bound_by(self, node: cst.Import | cst.ImportFrom) -> list[tuple[str, str]]:
        """``(local name, qualified name)`` for each name one import statement binds: where a
        name is imported twice (``from steps import dense as run`` in one branch, ``sparse as
        run`` in the other), each statement still says which one it binds."""
        found: list[tuple[str, str]] = []
        if isinstance(node, cst.Import):
            for alias in node.names:
                full = dotted_name(alias.name)
                if full is None:
                    continue
                if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                    found.append((alias.asname.name.value, full))
                else:
                    head = full.split(".")[0]
                    found.append((head, head))
            return found
        if isinstance(node.names, cst.ImportStar):
            return found
        target = dotted_name(node.module) if node.module is not None else ""
        if target is None:
            return found
        level = len(node.relative)
        base = resolve_relative(self._module_name, self._is_package, level, target) if level else target
        if base is None:
            return found
        for alias in node.names:
            name = dotted_name(alias.name)
            if name is None:
                continue
            local = name
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                local = alias.asname.name.value
            found.append((local, f"{base}.{name}"))
        return found

    def _bind(self, local: str, qualified: str) -> None:
        known = self.bindings.get(local)
        self.bindings[local] = qualified if known in (None, qualified) else _AMBIGUOUS

    def qualified_name(self, expr: cst.BaseExpression) -> str | None:
        dotted = dotted_name(expr)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        bound = self.bindings.get(head)
        if bound is None or bound == _AMBIGUOUS:
            return None
        return f"{bound}.{rest}" if rest else bound
