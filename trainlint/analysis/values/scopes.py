"""Names inside one scope (a function, or a module's top-level code): the bindings of each name,
which of them reach a use, and every load of a name. The value-flow engine's first layer.

A small, flow-approximate data flow over simple names, built lazily per scope:

- ``records(scope)``: every binding of each simple name, as :class:`Binding` records:
  ``x = v``, ``a = b = v``, ``x: T = v``, ``(x := v)``; for ``x += v`` the right operand ``v``;
  parameters; and the names bound by unpacking (``a, b = f()``), ``for`` and ``with`` targets,
  whose ``source`` and ``path`` say which element of which expression they take; imports and
  nested ``def``/``class``.
- ``reaching(name)``: the bindings that may give a loaded name its value at that point. Bindings
  are ordered by source position; a binding *dominates* a later use when it is not inside a
  branch, loop body or handler that the use is outside of (``with`` and ``try`` bodies count as
  straight-line code). The search walks back from the use and stops at the first dominating
  binding, or at an if/elif/else chain on every path to the use that binds the name on each of
  its paths (in each branch, directly, in a ``with`` body or in a nested chain that does);
  inside a loop, bindings later in the loop body reach too (the previous iteration).
- ``uses(name, scope)``: every load of a name in the scope, nested scopes included unless
  they rebind it.
- def-use questions built on these (``uses_of``, ``computed_from``, ``carried_into``...):
  :mod:`.def_use`.

What the bound values *are* is the engine's question (:mod:`trainlint.analysis.values.engine`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import libcst as cst

from trainlint.analysis.values.def_use import DefUseMixin
from trainlint.context import child_nodes

if TYPE_CHECKING:
    from trainlint.context import FileContext

Scope = cst.FunctionDef | cst.Module  # whose names a flow follows: a def, or top-level code
BindingKind = Literal["assign", "annotated", "augmented", "walrus", "parameter", "opaque"]
# A step into an unpacked value: a tuple position, ITEM for one item of an iteration, or
# UNPACKED for a starred target (``a, *rest = xs``) whose value is not followed.
PathStep = int | str
ITEM = "item"
UNPACKED = "unpacked"
# Kinds whose value is the whole new value of the name.
FOLLOWED_KINDS = frozenset({"assign", "annotated", "walrus"})
# Statement kinds that replace the whole value of a name.
_FULL_REBINDS = frozenset({"assign", "annotated", "opaque"})

_SCOPES = (cst.FunctionDef, cst.Lambda, cst.ClassDef)
_SCOPE_TYPES = frozenset(_SCOPES)
_COMPREHENSIONS = (cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp)
_BINDING_NODES = frozenset(
    {cst.Assign, cst.AnnAssign, cst.AugAssign, cst.NamedExpr, cst.For, cst.CompFor, cst.WithItem, cst.ExceptHandler,
     cst.ExceptStarHandler, cst.Import, cst.ImportFrom, cst.FunctionDef, cst.ClassDef, cst.MatchAs, cst.MatchStar,
     cst.Global, cst.Nonlocal}
)
# A block whose parent is one of these runs only on some paths.
_CONDITIONAL_PARENTS = (cst.If, cst.Else, cst.For, cst.While, cst.ExceptHandler, cst.ExceptStarHandler, cst.MatchCase)


def _target_names(target: cst.BaseExpression) -> Iterator[cst.Name]:
    """The Names bound by an assignment target (``a``, ``a, (b, *c)``); attributes and
    subscripts bind no name."""
    for name, _ in target_paths(target):
        yield name


def target_paths(target: cst.BaseExpression, path: tuple[PathStep, ...] = ()) -> Iterator[tuple[cst.BaseExpression, tuple[PathStep, ...]]]:
    """Each Name, attribute or subscript an assignment target binds, with the path of the element
    it takes from the assigned value: ``a, (b, c)`` gives ``a`` (0,), ``b`` (1, 0), ``c`` (1, 1).
    Names only come back as Names; other targets (``self.x``) come back as they are."""
    if isinstance(target, (cst.Tuple, cst.List)):
        for index, element in enumerate(target.elements):
            if isinstance(element, cst.StarredElement):
                yield from target_paths(element.value, (*path, UNPACKED))
            else:
                yield from target_paths(element.value, (*path, index))
    elif isinstance(target, cst.StarredElement):
        yield from target_paths(target.value, (*path, UNPACKED))
    else:
        yield target, path


def in_header(scope: cst.CSTNode, child: cst.CSTNode) -> bool:
    """``child`` is part of a definition that Python evaluates in the scope around it: a
    ``def``'s decorators, defaults and annotations, a ``class``'s bases and decorators, a lambda's
    defaults."""
    kind = type(scope)  # exact types: LibCST's classes are ABCs, slow under isinstance
    if kind is cst.FunctionDef or kind is cst.ClassDef:
        return child is not scope.body  # type: ignore[attr-defined]
    if kind is cst.Lambda:
        return child is scope.params  # type: ignore[attr-defined]
    return False


@dataclass(frozen=True, eq=False)
class Binding:
    """One binding of a simple name in a function.

    ``value`` is the assigned expression for ``assign``/``annotated``/``walrus`` (the whole new
    value) and for ``augmented`` (the right operand of ``x op= v``); None for ``parameter`` and
    ``opaque`` bindings. ``statement`` is the node that binds (Assign, AnnAssign, AugAssign,
    NamedExpr, Param, For, With, ExceptHandler, Import, FunctionDef...). For an opaque binding by
    unpacking, ``source`` is the unpacked expression (the assigned value, the ``for`` loop's
    iterable) and ``path`` the element the name takes (``for x in xs`` is ``(ITEM,)``).
    """

    name: str
    target: cst.Name
    value: cst.BaseExpression | None
    statement: cst.CSTNode
    kind: BindingKind
    effect: int  # walk position from which the new value is visible
    anchor: cst.CSTNode  # the node whose enclosing blocks decide on which paths it happens
    source: cst.BaseExpression | None = None
    path: tuple[PathStep, ...] = ()


@dataclass(frozen=True)
class Reaching:
    """The bindings that may give a loaded name its value; ``unresolved`` when the value may also
    come from outside the function (a free or global name, or one that may be unbound)."""

    bindings: tuple[Binding, ...]
    unresolved: bool


class _FunctionFlow:
    """One function's walk: positions, bindings and loads. A ``shallow`` walk leaves out the
    bodies of the functions nested in it (for a module: every method and function): its own
    bindings are the same, but the loads of those bodies and their positions are not there."""

    def __init__(self, function: Scope, shallow: bool = False) -> None:
        self.function = function  # a def, or the module for top-level code
        self.shallow = shallow
        self.enter: dict[cst.CSTNode, int] = {}
        self.exit: dict[cst.CSTNode, int] = {}
        # parent and owner are keyed by id(): a LibCST node's __hash__ is a Python function
        self.parent: dict[int, cst.CSTNode] = {}
        self.bindings: dict[str, list[Binding]] = {}
        self.loads: dict[str, list[cst.Name]] = {}
        self.declared_outside: set[str] = set()  # global / nonlocal
        self._stores: set[cst.Name] = set()
        self._number()
        self._collect_parameters()
        self._collect()

    # -- the walk ----------------------------------------------------------------------------
    def _number(self) -> None:
        """Number every node in source order (enter and exit), recording parents and the scope
        (function, lambda or class) each node belongs to. Imports are not entered: their names
        are bindings, never loads."""
        counter = 0
        self.owner: dict[int, cst.CSTNode] = {id(self.function): self.function}
        stack: list[tuple[cst.CSTNode, bool]] = [(self.function, False)]
        while stack:
            node, done = stack.pop()
            if done:
                self.exit[node] = counter
                counter += 1
                continue
            self.enter[node] = counter
            counter += 1
            stack.append((node, True))
            kind = type(node)  # exact types: LibCST's classes are ABCs, slow under isinstance
            if kind is cst.Import or kind is cst.ImportFrom:
                continue
            children = child_nodes(node)
            if self.shallow and kind is cst.FunctionDef and node is not self.function:
                children = [c for c in children if c is not node.body]  # type: ignore[attr-defined]
            scope = node if kind in _SCOPE_TYPES else self.owner[id(node)]
            for child in children:
                self.parent[id(child)] = node
                self.owner[id(child)] = self.owner[id(node)] if in_header(node, child) else scope
            stack.extend((child, False) for child in reversed(children))

    def contains(self, outer: cst.CSTNode, inner: cst.CSTNode) -> bool:
        return self.enter[outer] <= self.enter[inner] and self.exit[inner] <= self.exit[outer]

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        current = self.parent.get(id(node))
        while current is not None:
            yield current
            current = self.parent.get(id(current))

    def scope_of(self, node: cst.CSTNode) -> cst.CSTNode:
        """The innermost function, lambda, class or comprehension whose scope a node is evaluated
        in (within the function); a def's decorators and defaults, a class's bases, are outside."""
        child = node
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, (*_SCOPES, *_COMPREHENSIONS)) and not in_header(ancestor, child):
                return ancestor
            child = ancestor
        return self.function

    def _owning_scope(self, node: cst.CSTNode) -> cst.CSTNode:
        """The function, lambda or class a binding at ``node`` belongs to (a walrus in a
        comprehension binds in the enclosing function)."""
        return self.owner.get(id(node), self.function)

    # -- bindings ----------------------------------------------------------------------------
    def _add(self, target: cst.Name, value: cst.BaseExpression | None, statement: cst.CSTNode,
             kind: BindingKind, effect: int, anchor: cst.CSTNode,
             source: cst.BaseExpression | None = None, path: tuple[PathStep, ...] = ()) -> None:
        self._stores.add(target)
        binding = Binding(target.value, target, value, statement, kind, effect, anchor, source, path)
        self.bindings.setdefault(target.value, []).append(binding)

    def _collect_parameters(self) -> None:
        if not isinstance(self.function, cst.FunctionDef):
            return
        params = self.function.params
        everything = [*params.posonly_params, *params.params, *params.kwonly_params]
        everything += [p for p in (params.star_arg, params.star_kwarg) if isinstance(p, cst.Param)]
        body = self.function.body
        for param in everything:
            self._add(param.name, None, param, "parameter", -1, body)

    def _collect(self) -> None:
        for node in self.enter:
            kind = type(node)
            if kind in _BINDING_NODES and node is not self.function:
                if kind in (cst.Global, cst.Nonlocal) and self._owning_scope(node) is self.function:
                    self.declared_outside.update(item.name.value for item in node.names)  # type: ignore[attr-defined]
                self._collect_binding(node)
        for node in self.enter:
            if type(node) is cst.Name and node not in self._stores and self._is_reference(node):
                self.loads.setdefault(node.value, []).append(node)
        for names in self.loads.values():
            names.sort(key=self.enter.__getitem__)
        for found in self.bindings.values():
            found.sort(key=lambda b: b.effect)

    def _collect_binding(self, node: cst.CSTNode) -> None:
        own = self._owning_scope(node) is self.function
        if isinstance(node, cst.Assign) and own:
            for assign_target in node.targets:
                target = assign_target.target
                if isinstance(target, cst.Name):
                    self._add(target, node.value, node, "assign", self.exit[node], node)
                else:
                    for name, path in target_paths(target):
                        if isinstance(name, cst.Name):
                            self._add(name, None, node, "opaque", self.exit[node], node, node.value, path)
        elif isinstance(node, cst.AnnAssign) and own and isinstance(node.target, cst.Name):
            if node.value is not None:
                self._add(node.target, node.value, node, "annotated", self.exit[node], node)
            else:
                self._stores.add(node.target)
        elif isinstance(node, cst.AugAssign) and own and isinstance(node.target, cst.Name):
            binding = Binding(node.target.value, node.target, node.value, node, "augmented", self.exit[node], node)
            self.bindings.setdefault(node.target.value, []).append(binding)  # the target is a load too
        elif isinstance(node, cst.NamedExpr) and own and isinstance(node.target, cst.Name):
            self._add(node.target, node.value, node, "walrus", self.exit[node], node)
        elif isinstance(node, cst.For) and own:
            for name, path in target_paths(node.target, (ITEM,)):
                if isinstance(name, cst.Name):
                    self._add(name, None, node, "opaque", self.enter[node.body], node.body, node.iter, path)
        elif isinstance(node, cst.CompFor):
            self._stores.update(_target_names(node.target))  # comprehension scope, not ours
        elif isinstance(node, cst.WithItem) and own and node.asname is not None:
            with_statement = self.parent[id(node)]
            body = with_statement.body  # type: ignore[attr-defined]
            for name in _target_names(node.asname.name):
                self._add(name, None, with_statement, "opaque", self.enter[body], body)
        elif isinstance(node, (cst.ExceptHandler, cst.ExceptStarHandler)) and own and node.name is not None:
            name = node.name.name
            if isinstance(name, cst.Name):
                self._add(name, None, node, "opaque", self.enter[node.body], node.body)
        elif isinstance(node, (cst.Import, cst.ImportFrom)) and own and not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                self._bind_import(alias, node)
        elif isinstance(node, (cst.FunctionDef, cst.ClassDef)) and own:
            self._add(node.name, None, node, "opaque", self.exit[node], node)
        elif isinstance(node, (cst.MatchAs, cst.MatchStar)) and own and node.name is not None:
            self._add(node.name, None, node, "opaque", self.exit[node], node)

    def _bind_import(self, alias: cst.ImportAlias, node: cst.CSTNode) -> None:
        if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            self._add(alias.asname.name, None, node, "opaque", self.exit[node], node)
            return
        head = alias.name
        while isinstance(head, cst.Attribute):
            head = head.value
        if isinstance(head, cst.Name):
            self._add(head, None, node, "opaque", self.exit[node], node)

    @staticmethod
    def _param_names(node: cst.Lambda | cst.FunctionDef) -> Iterator[cst.Name]:
        params = node.params
        every = [*params.posonly_params, *params.params, *params.kwonly_params, params.star_arg, params.star_kwarg]
        for param in every:
            if isinstance(param, cst.Param):
                yield param.name

    def _is_reference(self, name: cst.Name) -> bool:
        """False for Names that are not variables: attribute names, keywords, def/class names,
        import aliases, global/nonlocal declarations."""
        parent = self.parent.get(id(name))
        if isinstance(parent, cst.Attribute) and parent.attr is name:
            return False
        if isinstance(parent, cst.Arg) and parent.keyword is name:
            return False
        if isinstance(parent, (cst.FunctionDef, cst.ClassDef)) and parent.name is name:
            return False
        return not isinstance(parent, (cst.ImportAlias, cst.AsName, cst.NameItem, cst.Param))

    # -- reaching bindings -------------------------------------------------------------------
    def statement_of(self, node: cst.CSTNode) -> cst.CSTNode:
        for ancestor in [node, *self.ancestors(node)]:
            if isinstance(ancestor, (cst.BaseSmallStatement, cst.BaseCompoundStatement)):
                return ancestor
        return self.function

    def dominates(self, binding: Binding, use: cst.CSTNode) -> bool:
        """True when every path to ``use`` passes the binding: no branch, loop body or handler
        holds the binding without holding the use. Walrus bindings never dominate."""
        if binding.kind == "walrus":
            return False
        node: cst.CSTNode | None = binding.anchor
        while node is not None and node is not self.function:
            if isinstance(node, cst.BaseSuite) and isinstance(self.parent.get(id(node)), _CONDITIONAL_PARENTS):
                if not self.contains(node, use):
                    return False
            node = self.parent.get(id(node))
        return True

    def reaching(self, use: cst.Name) -> Reaching:
        name = use.value
        if name in self.declared_outside:
            return Reaching((), True)
        candidates = self.bindings.get(name, [])
        scope = self.scope_of(use)
        if scope is not self.function:
            if self._rebinds(use):
                return Reaching((), True)
            if isinstance(scope, cst.Lambda):  # a closure sees whichever binding ran last
                return Reaching(tuple(candidates), not candidates)
        position = self.enter[use]
        found: list[Binding] = []
        dominator: Binding | None = None
        covered_from: int | None = None  # start of an if/else that binds the name on every branch
        for binding in reversed(candidates):
            if binding.effect > position:
                continue
            if covered_from is not None and binding.effect < covered_from:
                break
            found.append(binding)
            if self.dominates(binding, use):
                dominator = binding
                break
            covering = self._covering_if(binding, use)
            if covering is not None and covered_from is None:
                covered_from = self.enter[covering]
                dominator = binding
        for loop in self._loops_around(use):
            if dominator is not None and self.contains(loop, dominator.anchor):
                break
            found += [b for b in candidates if b.effect > position and self.contains(loop, b.anchor) and b not in found]
        return Reaching(tuple(found), dominator is None)

    def shadowed(self, use: cst.Name) -> bool:
        """True when a lambda or comprehension around the use binds its name (a nested ``def``
        that assigns it is not detected: callers asking "every use" get more, not fewer)."""
        for ancestor in self.ancestors(use):
            if ancestor is self.function:
                return False
            if isinstance(ancestor, cst.Lambda) and use.value in {n.value for n in self._param_names(ancestor)}:
                return True
            if isinstance(ancestor, cst.FunctionDef) and use.value in {n.value for n in self._param_names(ancestor)}:
                return True
            if isinstance(ancestor, _COMPREHENSIONS) and any(
                use.value in {n.value for n in _target_names(c.target)} for c in self._comp_fors(ancestor)
            ):
                return True
        return False

    def _covering_if(self, binding: Binding, use: cst.CSTNode) -> cst.If | None:
        """The innermost ``if``/``elif``/``else`` chain around the binding that binds the name on
        every path through it (each branch binds it in straight-line code, or in a ``with`` body,
        or in a nested chain that does) and is itself on every path to ``use``."""
        if binding.kind not in _FULL_REBINDS or isinstance(binding.anchor, cst.BaseSuite):
            return None
        for chain in self._chains_around(binding.anchor, use):
            if not all(branch is not None and self._binds_on_every_path(branch, binding.name) for branch in self._branches(chain)):
                continue
            probe = Binding(binding.name, binding.target, None, chain, "assign", self.exit[chain], chain)
            if self.dominates(probe, use):
                return chain
        return None

    def _chains_around(self, node: cst.CSTNode, use: cst.CSTNode) -> Iterator[cst.If]:
        """The if/elif/else chains (each by its first ``if``) that hold ``node`` and not ``use``,
        innermost first."""
        for ancestor in self.ancestors(node):
            if ancestor is self.function or self.contains(ancestor, use):
                return
            if isinstance(ancestor, cst.If) and not self._is_elif(ancestor):
                yield ancestor

    def _is_elif(self, node: cst.If) -> bool:
        parent = self.parent.get(id(node))
        return isinstance(parent, cst.If) and parent.orelse is node

    @staticmethod
    def _branches(chain: cst.If) -> Iterator[cst.BaseSuite | None]:
        """Each branch body of an if/elif/else chain; None when it has no ``else``."""
        current: cst.If | cst.Else | None = chain
        while isinstance(current, cst.If):
            yield current.body
            current = current.orelse
        yield current.body if isinstance(current, cst.Else) else None

    def _binds_on_every_path(self, block: cst.BaseSuite, name: str) -> bool:
        """Every way through the block binds the name anew: a statement directly in it does, or
        a ``with`` body or an if/elif/else chain directly in it does on every path."""
        if any(self._binds_directly_in(block, binding) for binding in self.bindings.get(name, [])):
            return True
        for statement in block.body if isinstance(block, cst.IndentedBlock) else ():
            if isinstance(statement, cst.With) and self._binds_on_every_path(statement.body, name):
                return True
            if isinstance(statement, cst.If) and all(
                branch is not None and self._binds_on_every_path(branch, name) for branch in self._branches(statement)
            ):
                return True
        return False

    def _binds_directly_in(self, block: cst.BaseSuite, binding: Binding) -> bool:
        """The binding replaces the name's value in a statement of the block itself (not in a
        branch or loop inside it): ``x = v`` on its own line or on the ``if`` line, a ``def``, a
        ``with ... as x:`` (a ``for`` target is not bound when the loop runs no iteration)."""
        if binding.kind not in _FULL_REBINDS or isinstance(binding.statement, (cst.For, cst.ExceptHandler, cst.ExceptStarHandler)):
            return False
        line = self.parent.get(id(binding.anchor))
        return line is block or (line is not None and self.parent.get(id(line)) is block)

    def _rebinds(self, use: cst.Name) -> bool:
        """True when the use's value is not this function's to follow: a lambda or comprehension
        binds the name, or the use sits in a nested ``def``/``class`` (its own flow)."""
        if self.shadowed(use):
            return True
        child: cst.CSTNode = use
        for ancestor in self.ancestors(use):
            if ancestor is self.function:
                return False
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef)) and not in_header(ancestor, child):
                return True
            child = ancestor
        return False

    @staticmethod
    def _comp_fors(comprehension: cst.CSTNode) -> Iterator[cst.CompFor]:
        current: cst.CompFor | None = comprehension.for_in  # type: ignore[attr-defined]
        while current is not None:
            yield current
            current = current.inner_for_in

    def _loops_around(self, use: cst.CSTNode) -> Iterator[cst.CSTNode]:
        """Enclosing loops (innermost first) in whose repeated part the use lies."""
        for ancestor in self.ancestors(use):
            if ancestor is self.function:
                return
            if isinstance(ancestor, cst.For) and self.contains(ancestor.body, use):
                yield ancestor.body
            elif isinstance(ancestor, cst.While) and not (ancestor.orelse and self.contains(ancestor.orelse, use)):
                yield ancestor


class Scopes(DefUseMixin):
    """Bindings and reaching bindings of simple names, per scope, built once per file
    (``ctx.get``); the def-use questions analyses ask are in :mod:`.def_use`."""

    def __init__(self, ctx: FileContext) -> None:
        self._ctx = ctx
        self._flows: dict[Scope, _FunctionFlow] = {}
        self._shallow: dict[Scope, _FunctionFlow] = {}

    def _flow(self, function: Scope) -> _FunctionFlow:
        flow = self._flows.get(function)
        if flow is None:
            flow = self._flows[function] = _FunctionFlow(function)
        return flow

    def _own(self, function: Scope) -> _FunctionFlow:
        """A flow for questions about the scope's own bindings. A module's is shallow: the
        functions of another module ask for its globals (``records``) far more often than
        anything needs the loads inside every function of it, and numbering those is most of
        the cost of a model file."""
        flow = self._flows.get(function)
        if flow is not None or not isinstance(function, cst.Module):
            return flow or self._flow(function)
        shallow = self._shallow.get(function)
        if shallow is None:
            shallow = self._shallow[function] = _FunctionFlow(function, shallow=True)
        return shallow

    def function_of(self, node: cst.CSTNode) -> cst.FunctionDef | None:
        """The innermost ``def`` whose body holds the node (its decorators and defaults run in
        the scope around it)."""
        child = node
        for ancestor in self._ctx.ancestors(node):
            if type(ancestor) is cst.FunctionDef and not in_header(ancestor, child):
                return ancestor  # type: ignore[return-value]
            child = ancestor
        return None

    def scope_of(self, node: cst.CSTNode) -> Scope:
        """The innermost ``def`` around a node, or the module for top-level code (scripts)."""
        return self.function_of(node) or self._ctx.module

    def records(self, function: Scope) -> dict[str, list[Binding]]:
        """Every binding of every simple name in the function (its own scope), by name, in the
        order they take effect; parameters first."""
        return self._own(function).bindings

    def bindings(self, function: Scope) -> dict[str, list[cst.BaseExpression]]:
        """The expressions assigned to each simple name: ``x = v``, ``x: T = v``, ``(x := v)``
        and, for ``x op= v``, the right operand ``v`` (see ``records`` to tell them apart)."""
        return {
            name: [b.value for b in found if b.value is not None]
            for name, found in self._own(function).bindings.items()
            if any(b.value is not None for b in found)
        }

    def binds_locally(self, function: Scope, name: str) -> bool:
        """The scope binds ``name`` itself (so a read that no binding reaches is unbound there,
        not a global), unless it declares it ``global``/``nonlocal``."""
        flow = self._own(function)
        return name in flow.bindings and name not in flow.declared_outside

    def parameters(self, function: Scope) -> dict[str, cst.Param]:
        return {
            name: b.statement  # type: ignore[misc]
            for name, found in self._own(function).bindings.items()
            for b in found
            if b.kind == "parameter"
        }

    def reaching(self, name: cst.Name, function: Scope | None = None) -> Reaching:
        """The bindings that may give this loaded Name its value where it is loaded."""
        flow = self._own(function or self.scope_of(name))
        if name not in flow.enter and flow.shallow:
            flow = self._flow(flow.function)  # a load inside one of the module's functions
        if name not in flow.enter:
            return Reaching((), True)
        return flow.reaching(name)

    def later_bindings(self, name: str, node: cst.CSTNode, function: Scope) -> list[Binding]:
        """Bindings of ``name`` in the function that take effect after ``node`` starts (in source
        order; a loop may run them before it again): empty means ``name`` keeps the value it has
        at ``node`` for the rest of the function."""
        flow = self._flow(function)
        position = flow.enter.get(node)
        if position is None:
            return list(flow.bindings.get(name, []))
        return [b for b in flow.bindings.get(name, []) if b.effect > position]

    def uses(self, name: str, function: Scope) -> list[cst.Name]:
        """Every load of ``name`` in the function, in source order: nested scopes are included
        unless they rebind it; ``x += 1`` loads ``x``."""
        flow = self._flow(function)
        return [n for n in flow.loads.get(name, []) if not flow.shadowed(n)]

    def statement_of(self, node: cst.CSTNode, function: Scope | None = None) -> cst.CSTNode:
        """The innermost small or compound statement holding a node."""
        return self._flow(function or self.scope_of(node)).statement_of(node)
