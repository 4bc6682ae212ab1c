"""Everything a rule may ask about one file, computed once and shared by all rules."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from trainlint.findings import Applicability, Edit, Finding, Fix, Position
from trainlint.source import SourceText, paused_garbage_collector

if TYPE_CHECKING:
    from trainlint.analysis.imports import ImportResolver
    from trainlint.project import ProjectIndex
    from trainlint.rule import Rule

N = TypeVar("N", bound=cst.CSTNode)
_POSITION_RECURSION_LIMIT = 20_000
A = TypeVar("A")

# Fields that hold only whitespace, comments or punctuation: the walk skips them, which makes it
# about five times cheaper than a full LibCST visit (measured: 0.2x the parse against 1.0x).
_SKIPPED_FIELDS = frozenset(
    {
        "lpar", "rpar", "comma", "semicolon", "header", "footer", "leading_lines",
        "lines_after_decorators", "newline", "trailing_whitespace", "empty_lines", "dot",
        "equal", "colon", "lbracket", "rbracket", "lbrace", "rbrace", "operator",
        "asynchronous", "arrow", "star", "star_tok", "whitespace", "indent",
    }
)
_fields_by_type: dict[type, tuple[str, ...]] = {}


def _walked_fields(node_type: type) -> tuple[str, ...]:
    names = _fields_by_type.get(node_type)
    if names is None:
        names = tuple(
            f.name
            for f in dataclasses.fields(node_type)
            if f.name not in _SKIPPED_FIELDS and "whitespace" not in f.name
        )
        _fields_by_type[node_type] = names
    return names


_is_node_type: dict[type, bool] = {}
_CLASSES_AND_FUNCTIONS = frozenset({cst.FunctionDef, cst.ClassDef})
_SCOPE_NODES = frozenset({cst.FunctionDef, cst.ClassDef, cst.Lambda})


def _is_node(value: object) -> bool:
    """``isinstance(value, cst.CSTNode)`` by exact type, cached: CSTNode is an ABC, and its
    instance check was a tenth of every walk."""
    kind = type(value)
    found = _is_node_type.get(kind)
    if found is None:
        found = _is_node_type[kind] = issubclass(kind, cst.CSTNode)
    return found


def child_nodes(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The node's children that hold code, in source order. Every analysis walks with this:
    LibCST's own ``node.children`` runs a visitor pass per call (measured: 30x slower)."""
    children: list[cst.CSTNode] = []
    names = _fields_by_type.get(type(node)) or _walked_fields(type(node))
    for name in names:
        value = getattr(node, name)
        kind = type(value)
        if kind is tuple or kind is list:
            children.extend([v for v in value if _is_node(v)])
        elif _is_node(value):
            children.append(value)
    return children


def descendants(node: cst.CSTNode, *, enter_scopes: bool = True, enter_lambdas: bool = False) -> Iterator[cst.CSTNode]:
    """Every node under ``node`` (not ``node`` itself), in source order; with ``enter_scopes``
    False the bodies of nested functions, classes and lambdas are left out (lambdas are entered
    when ``enter_lambdas``). Iterative, so deep trees cannot exhaust the stack."""
    closed = _CLASSES_AND_FUNCTIONS if enter_lambdas else _SCOPE_NODES  # exact types: ABCs are slow under isinstance
    stack = child_nodes(node)[::-1]
    while stack:
        current = stack.pop()
        yield current
        if enter_scopes or type(current) not in closed:
            stack.extend(child_nodes(current)[::-1])


def scope_nodes(node: cst.CSTNode, *, into_lambdas: bool = False) -> Iterator[cst.CSTNode]:
    """``node`` itself and every node under it that runs in its scope: nested ``def`` and
    ``class`` bodies are other scopes and are not entered; lambdas neither, unless
    ``into_lambdas`` (a hook written as ``map(lambda g: g.clamp(...), grads)`` acts where it is)."""
    yield node
    yield from descendants(node, enter_scopes=False, enter_lambdas=into_lambdas)


def calls_within(node: cst.CSTNode) -> Iterator[cst.Call]:
    """The calls in ``node`` (itself included), in source order, leaving out the bodies of the
    functions, classes and lambdas nested in it (other scopes)."""
    return (n for n in scope_nodes(node) if isinstance(n, cst.Call))


def literal_bool(expr: cst.BaseExpression | None) -> bool | None:
    """True or False for the literal ``True``/``False``; None for anything else."""
    if isinstance(expr, cst.Name) and expr.value in ("True", "False"):
        return expr.value == "True"
    return None


class NodeIndex:
    """One walk over the tree: nodes by type in source order, and each node's parent."""

    def __init__(self, module: cst.Module) -> None:
        self.by_type: dict[type, list[cst.CSTNode]] = {}
        # Keyed by id(): a LibCST node's __hash__ is a Python function, called on every insert and
        # lookup (a million per model zoo); the nodes live as long as the tree, so ids are unique.
        self.parents: dict[int, cst.CSTNode] = {}
        self._calls_by_name: dict[str, list[cst.Call]] | None = None
        self._call_order: dict[int, int] | None = None
        self._words: dict[type, dict[str, list[cst.CSTNode]]] = {}
        self._order: dict[int, tuple[int, int]] | None = None
        self._root = module
        by_type, parents = self.by_type, self.parents
        stack: list[cst.CSTNode] = [module]
        while stack:
            node = stack.pop()
            kind = type(node)
            bucket = by_type.get(kind)
            if bucket is None:
                by_type[kind] = bucket = []
            bucket.append(node)
            children = child_nodes(node)
            for child in children:
                parents[id(child)] = node
            children.reverse()
            stack.extend(children)

    def of(self, node_type: type[N]) -> list[N]:
        return self.by_type.get(node_type, [])  # type: ignore[return-value]

    def holds(self, node: cst.CSTNode) -> bool:
        """The node is in this tree (and is not its root)."""
        return id(node) in self.parents

    def calls_spelled(self, name: str) -> list[cst.Call]:
        """The calls written ``name(...)`` or ``x.name(...)``, in source order: the index is built
        once, so asking for each function's calls costs the calls found, not every call."""
        if self._calls_by_name is None:
            self._calls_by_name = {}
            for call in self.of(cst.Call):
                func = call.func
                spelled = func.value if isinstance(func, cst.Name) else func.attr.value if isinstance(func, cst.Attribute) else None
                if spelled is not None:
                    self._calls_by_name.setdefault(spelled, []).append(call)
        return self._calls_by_name.get(name, [])

    def calls_spelled_any(self, names: Iterable[str]) -> list[cst.Call]:
        """The calls spelled with any of the names, in source order."""
        found = {id(c): c for name in names for c in self.calls_spelled(name)}
        if self._call_order is None:
            self._call_order = {id(c): i for i, c in enumerate(self.of(cst.Call))}
        order = self._call_order
        return sorted(found.values(), key=lambda c: order[id(c)])

    def order(self, node: cst.CSTNode) -> tuple[int, int]:
        """The node's place in source order: its rank in a walk of the tree in source order, and
        the rank of its last descendant. Compares as ``span`` does (``a`` ends before ``b``
        starts when ``order(a)[1] < order(b)[0]``) without computing the file's positions, which
        costs a code generation of the whole module."""
        if self._order is None:
            self._order = _source_order(self._root)
        return self._order[id(node)]

    def spelled(self, word: str, node_type: type[cst.Name] | type[cst.Attribute]) -> list[cst.CSTNode]:
        """The ``Name`` nodes reading ``word``, or the ``Attribute`` nodes ``x.word``."""
        if node_type not in self._words:
            index: dict[str, list[cst.CSTNode]] = {}
            for node in self.of(node_type):
                index.setdefault(node.attr.value if isinstance(node, cst.Attribute) else node.value, []).append(node)  # type: ignore[attr-defined]
            self._words[node_type] = index
        return self._words[node_type].get(word, [])


def _source_order(module: cst.Module) -> dict[int, tuple[int, int]]:
    order: dict[int, tuple[int, int]] = {}
    rank = 0
    stack: list[tuple[cst.CSTNode, bool]] = [(module, False)]
    while stack:
        node, finished = stack.pop()
        if finished:  # every descendant has its rank: the last one is rank - 1
            order[id(node)] = (order[id(node)][0], rank - 1)
            continue
        order[id(node)] = (rank, rank)
        rank += 1
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(child_nodes(node)))
    return order


class FileContext:
    """A parsed file with its shared analyses. Analyses are built on first request, once."""

    def __init__(
        self,
        path: str,
        source: SourceText,
        module: cst.Module,
        project: ProjectIndex,
        module_name: str | None = None,
        real_path: Path | None = None,
    ) -> None:
        self.path = path
        self.real_path = real_path  # None for stdin and in-memory text
        self.source = source
        self.module = module
        self.project = project
        self.module_name = module_name
        self._analyses: dict[type, Any] = {}
        self._rule: Rule | None = None

    # -- shared analyses -------------------------------------------------------------------
    @cached_property
    def nodes(self) -> NodeIndex:
        return NodeIndex(self.module)

    def forget_answers(self, keep: tuple[type, ...]) -> None:
        """Drop every analysis but ``keep`` (those that read this file alone): the project index
        does this for the modules it keeps parsed, so that answers about another file are
        computed afresh, recording the modules they read."""
        self._analyses = {kind: found for kind, found in self._analyses.items() if kind in keep}

    def release(self) -> None:
        """Drop every analysis and index of this file once nothing will ask about it again. The
        analyses refer back to this context, so without this the whole tree (a few hundred
        thousand objects) is freed only by Python's cyclic collector, which scans it first:
        on a model zoo that scanning was a fifth of the run."""
        self._analyses = {}
        for cached in ("nodes", "_positions"):
            self.__dict__.pop(cached, None)

    def get(self, analysis: type[A]) -> A:
        """The analysis of this file of the given class, built once: ``analysis(ctx)``."""
        found = self._analyses.get(analysis)
        if found is None:
            found = self._analyses[analysis] = analysis(self)  # type: ignore[call-arg]
        return found  # type: ignore[no-any-return]

    @property
    def imports(self) -> ImportResolver:
        from trainlint.analysis.imports import ImportResolver

        return self.get(ImportResolver)

    def qualified_name(self, expr: cst.BaseExpression) -> str | None:
        """``torch.nn.functional.log_softmax`` for ``F.log_softmax`` and so on; None if unknown."""
        return self.imports.qualified_name(expr)

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self.nodes.parents.get(id(node))

    def nested_in(self, node: cst.CSTNode, kinds: tuple[type, ...], within: cst.CSTNode) -> bool:
        """Whether a node of one of ``kinds`` encloses ``node`` below ``within`` (an ``if`` or a
        loop between a statement and the loop it belongs to)."""
        for ancestor in self.ancestors(node):
            if ancestor is within:
                return False
            if isinstance(ancestor, kinds):
                return True
        return False

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        parents = self.nodes.parents
        current = parents.get(id(node))
        while current is not None:
            yield current
            current = parents.get(id(current))

    def enclosing(self, node: cst.CSTNode, node_type: type[N]) -> N | None:
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, node_type):
                return ancestor
        return None

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def short_code(self, node: cst.CSTNode, width: int = 40) -> str:
        """The node's code on one line for a message: a call too long for ``width`` as
        ``func(...)``, other code cut at ``width`` with ``...``."""
        code = " ".join(self.code(node).split())
        if len(code) > width and isinstance(node, cst.Call):
            code = " ".join(self.code(node.func).split()) + "(...)"
        return code if len(code) <= width else code[: width - 3] + "..."

    # -- positions (computed only for files that report something) ---------------------------
    @cached_property
    def _positions(self) -> Mapping[cst.CSTNode, CodeRange]:
        # LibCST computes positions by recursive code generation: a few frames per level of
        # nesting, so a long chain such as `a + a + ... + a` (hundreds of terms, which the parser
        # accepts) needs more than Python's default 1000 frames.
        # The collector is paused as for the parse: the positions are a few objects per node, all
        # kept, and collections scanning a large tree made this cost grow faster than the file
        # (measured: 2.6x for 2x the lines with it, 2.0x and half the time without).
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _POSITION_RECURSION_LIMIT))
        try:
            with paused_garbage_collector():
                return MetadataWrapper(self.module, unsafe_skip_copy=True).resolve(PositionProvider)
        finally:
            sys.setrecursionlimit(limit)

    def range(self, node: cst.CSTNode) -> CodeRange:
        return self._positions[node]

    def order(self, node: cst.CSTNode) -> tuple[int, int]:
        """Where the node is in source order (see :meth:`NodeIndex.order`): for comparing places."""
        return self.nodes.order(node)

    def span(self, node: cst.CSTNode) -> tuple[int, int]:
        """Character offsets of the node's code, without surrounding whitespace."""
        code_range = self.range(node)
        return (
            self.source.offset(code_range.start.line, code_range.start.column),
            self.source.offset(code_range.end.line, code_range.end.column),
        )

    # -- reporting ---------------------------------------------------------------------------
    def report(
        self,
        rule: Rule,
        node: cst.CSTNode,
        message: str,
        fix: Fix | None = None,
    ) -> Finding:
        start, end = self.span(node)
        return Finding(
            code=rule.code,
            name=rule.name,
            message=message,
            path=self.path,
            start=Position(*self.source.line_column(start)),
            end=Position(*self.source.line_column(end)),
            level=rule.level,
            fix=fix,
            offset=start,
        )

    # -- building fixes ----------------------------------------------------------------------
    def fix(self, edits: Iterable[Edit | None], applicability: Applicability, message: str) -> Fix | None:
        """A fix from its edits; None when any edit could not be made (the rule then reports
        without a fix rather than a partial one)."""
        collected = list(edits)
        if not collected or any(e is None for e in collected):
            return None
        located = [
            dataclasses.replace(
                edit,
                location=Position(*self.source.line_column(edit.start)),
                end_location=Position(*self.source.line_column(edit.end)),
            )
            for edit in collected
            if edit is not None
        ]
        return Fix(tuple(sorted(located)), applicability, message)

    def replace(self, node: cst.CSTNode, new: cst.CSTNode | str) -> Edit:
        start, end = self.span(node)
        content = new if isinstance(new, str) else self.module.code_for_node(new)
        return Edit(start, end, content)

    def statement_indent(self, statement: cst.CSTNode) -> str | None:
        """The indentation of a statement that starts its own line, or None (``if x: y()``)."""
        start, _ = self.span(statement)
        line, column = self.source.line_column(start)
        prefix = self.source.text[start - column + 1 : start]
        return prefix if prefix.strip() == "" else None

    def _owns_lines(self, statement: cst.CSTNode) -> bool:
        """True when nothing but whitespace and a comment shares the statement's lines."""
        if self.statement_indent(statement) is None:
            return False
        _, end = self.span(statement)
        rest = self.source.text[end : self.source.line_end_offset(self.source.line_column(end)[0])]
        return rest.strip() == "" or rest.strip().startswith("#")

    def insert_before(self, statement: cst.CSTNode, code: str) -> Edit | None:
        """Insert ``code`` (one or more lines, unindented) as statements before ``statement``."""
        indent = self.statement_indent(statement)
        if indent is None:
            return None
        start, _ = self.span(statement)
        line_start = start - len(indent)
        return Edit(line_start, line_start, self._indented(code, indent))

    def insert_after(self, statement: cst.CSTNode, code: str) -> Edit | None:
        """Insert ``code`` as statements after ``statement`` at the same indentation."""
        if not self._owns_lines(statement):
            return None
        indent = self.statement_indent(statement) or ""
        _, end = self.span(statement)
        line_end = self.source.line_end_offset(self.source.line_column(end)[0])
        text = self.source.text
        if line_end == len(text) and not text.endswith(("\n", "\r")):
            return Edit(line_end, line_end, self.source.newline + self._indented(code, indent).rstrip("\r\n"))
        return Edit(line_end, line_end, self._indented(code, indent))

    def remove(self, statement: cst.CSTNode) -> Edit | None:
        """Delete a statement that owns its lines, with its line break."""
        if not self._owns_lines(statement):
            return None
        start, end = self.span(statement)
        indent = self.statement_indent(statement) or ""
        line_end = self.source.line_end_offset(self.source.line_column(end)[0])
        return Edit(start - len(indent), line_end, "")

    def _indented(self, code: str, indent: str) -> str:
        newline = self.source.newline
        return "".join(f"{indent}{line}{newline}" for line in code.splitlines())
