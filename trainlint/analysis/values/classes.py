"""Classes for the engine: what ``self`` is, what ``self.x`` may be (every assignment in every
method of the class and of its bases in the project), and which class inherits from which.

``self.x = param`` in ``__init__`` is followed through the parameter (its default and the
arguments at every construction of the class); ``self.a, self.b = accelerator.prepare(a, b)`` is
unpacked; ``self.x += ...`` makes ``self.x`` unknown. An attribute no method of the class sets
(set by a framework, or from outside) is unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.domain import EXTERNAL, NOTHING, UNKNOWN, ClassRef, FunctionRef, Instance, Value, Values
from trainlint.analysis.values.scopes import PathStep, target_paths

if TYPE_CHECKING:
    from trainlint.analysis.values.engine import ValueFlow
    from trainlint.analysis.values.guard import Dependency

_MAX_BASES = 16


@dataclass(frozen=True)
class _Assignment:
    """``self.<attr> = value`` (``path`` into an unpacked value); value None: not followed
    (``self.x += 1``); ``getter``: a ``@property`` of that name."""

    value: cst.BaseExpression | None
    path: tuple[PathStep, ...] = ()
    getter: cst.FunctionDef | None = None


class ClassesMixin:
    def _init_classes(self: ValueFlow) -> None:
        self._tables: dict[cst.ClassDef, dict[str, list[_Assignment]]] = {}
        self._attributes: dict[tuple[cst.ClassDef, str], tuple[Values, frozenset[Dependency]]] = {}

    # -- where definitions sit -----------------------------------------------------------------
    def enclosing_class(self: ValueFlow, function: cst.FunctionDef) -> cst.ClassDef | None:
        """The class whose body holds the ``def`` directly."""
        body = self.ctx.parent(function)
        owner = self.ctx.parent(body) if body is not None else None
        return owner if isinstance(owner, cst.ClassDef) else None

    def is_method(self: ValueFlow, function: cst.FunctionDef) -> bool:
        """A method that receives the instance (or the class) as its first parameter."""
        if self.enclosing_class(function) is None:
            return False
        return not any(_decorator_name(d) == "staticmethod" for d in function.decorators)

    # -- self ------------------------------------------------------------------------------------
    def receiver_value(self: ValueFlow, name: cst.Name) -> Values | None:
        """For ``self`` (a method's first parameter, also read from a function nested in the
        method): the instance of the class; for a classmethod's ``cls``: the class."""
        scope = self.scopes.scope_of(name)
        functions = [scope] if isinstance(scope, cst.FunctionDef) else []
        functions += [a for a in self.ctx.ancestors(scope) if isinstance(a, cst.FunctionDef)]
        for function in functions:
            bindings = self.scopes.records(function).get(name.value)
            if not bindings:
                continue
            if len(bindings) != 1 or bindings[0].kind != "parameter" or not self.is_method(function):
                return None
            names = self.parameter_names(function)
            if not names or names[0] != name.value:
                return None
            owner = self.enclosing_class(function)
            assert owner is not None
            qualified = self.qualified_of(owner)
            if any(_decorator_name(d) == "classmethod" for d in function.decorators):
                return Values.of(ClassRef(qualified, self.site(owner)))
            return Values.of(Instance(qualified))
        return None

    def receiver_at(self: ValueFlow, node: cst.CSTNode) -> Values:
        """``self`` where ``node`` is: the instance of the class whose method holds it."""
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, cst.ClassDef):
                return Values.of(Instance(self.qualified_of(ancestor)))
        return UNKNOWN

    # -- attributes ----------------------------------------------------------------------------
    def attribute_of(self: ValueFlow, value: Value, attr: str) -> Values:
        """What ``value.attr`` may be."""
        if isinstance(value, (Instance, ClassRef)):
            qualified = value.cls if isinstance(value, Instance) else value.qualified
            found = self.class_definition(qualified)
            if found is not None:
                flow, node = found
                values = flow.class_attribute(node, attr)
                if attr == "module" and values.unknown and not values.items:
                    return Values.of(value)  # `DataParallel(model).module` is the model
                if not values.items and values.unknown and not values.untraced:
                    method = self.bound_method(value, attr)  # `self._clip_hook` passed as a callback
                    if method is not None:
                        return method
                return values
            if attr == "module" and isinstance(value, Instance):
                return Values.of(value)
        return UNKNOWN

    def bound_method(self: ValueFlow, value: Instance | ClassRef, attr: str) -> Values | None:
        """``obj.method`` read as a value, not called: the method with its receiver bound first,
        as ``functools.partial(Class.method, obj)`` would (a staticmethod binds nothing)."""
        qualified = value.cls if isinstance(value, Instance) else value.qualified
        found = self.method_of(qualified, attr)
        if found is None:
            return None
        flow, method = found
        decorators = {_decorator_name(d) for d in method.decorators}
        if "property" in decorators:
            return None
        # `Class.method` read from the class is a plain function: the instance comes at the call
        plain = "staticmethod" in decorators or (isinstance(value, ClassRef) and "classmethod" not in decorators)
        receiver: tuple[Values, ...] = () if plain else (Values.of(value),)
        return Values.of(FunctionRef(flow.qualified_of(method), flow.site(method), bound=receiver))

    def class_attribute(self: ValueFlow, class_def: cst.ClassDef, attr: str) -> Values:
        """``attr`` of instances of this module's class: every assignment to ``self.attr`` in
        the class and its bases (nearest first), each in its method's context."""
        return self.guard.answer(
            ("attribute", id(class_def), attr),
            self._attributes,
            (class_def, attr),
            lambda: self._class_attribute(class_def, attr),
            NOTHING,  # `self.model = self.model.cuda()`: the other assignments decide
        )

    def _class_attribute(self: ValueFlow, class_def: cst.ClassDef, attr: str) -> Values:
        parts = [flow._own_attribute(node, attr) for flow, node in self.lineage(class_def)]
        found = [part for part in parts if part is not None]
        return Values.union(found) if found else EXTERNAL  # set by a framework, or from outside

    def _own_attribute(self: ValueFlow, class_def: cst.ClassDef, attr: str) -> Values | None:
        """What this class's own methods and body assign to ``attr``; None when none does."""
        assignments = self._attribute_table(class_def).get(attr)
        if not assignments:
            return None
        parts = []
        for assignment in assignments:
            if assignment.getter is not None:
                parts.append(self.summary_for_instance(assignment.getter, Values.of(Instance(self.qualified_of(class_def)))))
            elif assignment.value is None:
                parts.append(UNKNOWN)
            else:
                parts.append(self.element(self.evaluate(assignment.value, False), assignment.path))
        return Values.union(parts)

    def attribute_names(self: ValueFlow, qualified: str) -> list[str]:
        """The attributes the class of the project and its bases assign (``self.x = ...``,
        class-level names, properties); empty for a class the project does not define."""
        found = self.class_definition(qualified)
        if found is None:
            return []
        flow, class_def = found
        return list(dict.fromkeys(name for f, node in flow.lineage(class_def) for name in f._attribute_table(node)))

    def summary_for_instance(self: ValueFlow, method: cst.FunctionDef, instance: Values) -> Values:
        """A method's summary with ``self`` as the given instance (its other parameters unknown)."""
        from trainlint.analysis.values.calls import _substitute

        names = self.parameter_names(method)
        arguments: dict[str, Values | None] = {name: None for name in names}
        if names:
            arguments[names[0]] = instance
        return _substitute(self.summary(method), method, arguments)

    def _attribute_table(self: ValueFlow, class_def: cst.ClassDef) -> dict[str, list[_Assignment]]:
        table = self._tables.get(class_def)
        if table is None:
            table = self._tables[class_def] = {}
            for statement in _body(class_def):
                if isinstance(statement, cst.FunctionDef):
                    self._read_method(statement, table)
                elif isinstance(statement, cst.SimpleStatementLine):
                    for small in statement.body:
                        for target, value, path in _assigned(small):
                            if isinstance(target, cst.Name):
                                table.setdefault(target.value, []).append(_Assignment(value, path))
        return table

    def _read_method(self: ValueFlow, method: cst.FunctionDef, table: dict[str, list[_Assignment]]) -> None:
        if any(_decorator_name(d) == "property" for d in method.decorators):
            table.setdefault(method.name.value, []).append(_Assignment(None, (), method))
            return
        names = self.parameter_names(method)
        if not names or not self.is_method(method):
            return
        receiver = names[0]
        from trainlint.analysis.values.calls import _own_nodes

        for node in _own_nodes(method.body):
            if isinstance(node, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
                for target, value, path in _assigned(node):
                    if (
                        isinstance(target, cst.Attribute)
                        and isinstance(target.value, cst.Name)
                        and target.value.value == receiver
                    ):
                        table.setdefault(target.attr.value, []).append(_Assignment(value, path))

    # -- the class hierarchy ---------------------------------------------------------------------
    def class_definition(self: ValueFlow, qualified: str) -> tuple[ValueFlow, cst.ClassDef] | None:
        found = self.definition(qualified)
        if found is not None and isinstance(found[1], cst.ClassDef):
            return found  # type: ignore[return-value]
        return None

    def lineage(self: ValueFlow, class_def: cst.ClassDef) -> list[tuple[ValueFlow, cst.ClassDef]]:
        """The class and its bases defined in the project, nearest first (depth-first, as Python's
        MRO for single inheritance)."""
        found: list[tuple[ValueFlow, cst.ClassDef]] = []
        seen: set[int] = set()
        stack: list[tuple[ValueFlow, cst.ClassDef]] = [(self, class_def)]
        while stack and len(found) < _MAX_BASES:
            flow, node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            found.append((flow, node))
            bases = []
            for base in node.bases:
                if base.keyword is not None:
                    continue
                for value in flow.evaluate(base.value, False):
                    if isinstance(value, ClassRef) and value.site is not None and isinstance(value.site.node, cst.ClassDef):
                        from trainlint.analysis.values.engine import ValueFlow

                        bases.append((value.site.ctx.get(ValueFlow), value.site.node))
            stack.extend(reversed(bases))
        return found

    def base_names(self: ValueFlow, qualified: str) -> list[str]:
        """Qualified names of the class and every base the project defines or names."""
        found = self.class_definition(qualified)
        if found is None:
            return [qualified]
        flow, node = found
        names = []
        for owner, class_def in flow.lineage(node):
            names.append(owner.qualified_of(class_def))
            for base in class_def.bases:
                names.extend(v.qualified for v in owner.evaluate(base.value, False) if isinstance(v, ClassRef))
        return list(dict.fromkeys(names))

    def is_subclass(self: ValueFlow, cls: str, base: str) -> bool:
        return cls == base or base in self.base_names(cls)

    def method_of(self: ValueFlow, qualified: str, name: str) -> tuple[ValueFlow, cst.FunctionDef] | None:
        """The method ``name`` a class of the project has, its own or inherited from the project."""
        found = self.class_definition(qualified)
        if found is None:
            return None
        flow, node = found
        for owner, class_def in flow.lineage(node):
            for statement in _body(class_def):
                if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
                    return owner, statement
        return None

    def constructs(self: ValueFlow, cls: str, target: str) -> bool:
        """``cls(...)`` runs ``target.__init__``: the same class, or a subclass inheriting it."""
        if cls == target:
            return True
        if not self.is_subclass(cls, target):
            return False
        init = self.method_of(cls, "__init__")
        own = self.method_of(target, "__init__")
        return init is not None and own is not None and init[1] is own[1]

    def constructor_names(self: ValueFlow, qualified: str) -> set[str]:
        """How this module may spell a construction of the class: its name, and the names of
        the module's classes that derive from it."""
        names = {qualified.rpartition(".")[2]}
        for class_def in self.ctx.nodes.of(cst.ClassDef):
            if self.qualified_of(class_def) != qualified and self.is_subclass(self.qualified_of(class_def), qualified):
                names.add(class_def.name.value)
        return names

    def is_super_init_of(self: ValueFlow, call: cst.Call, qualified: str) -> bool:
        """``super().__init__(...)`` in a subclass whose next ``__init__`` is the class's."""
        func = call.func
        if not (isinstance(func, cst.Attribute) and isinstance(func.value, cst.Call)):
            return False
        if not (isinstance(func.value.func, cst.Name) and func.value.func.value == "super"):
            return False
        owner = self.ctx.enclosing(call, cst.ClassDef)
        if owner is None:
            return False
        for flow, class_def in self.lineage(owner)[1:]:
            if any(isinstance(s, cst.FunctionDef) and s.name.value == "__init__" for s in _body(class_def)):
                return flow.qualified_of(class_def) == qualified
        return False


def _body(class_def: cst.ClassDef) -> Iterator[cst.CSTNode]:
    body = class_def.body
    return iter(body.body) if isinstance(body, cst.IndentedBlock) else iter(())


def _decorator_name(decorator: cst.Decorator) -> str:
    target = decorator.decorator
    if isinstance(target, cst.Call):
        target = target.func
    if isinstance(target, cst.Attribute):
        return target.attr.value
    return target.value if isinstance(target, cst.Name) else ""


def _assigned(statement: cst.CSTNode) -> Iterator[tuple[cst.BaseExpression, cst.BaseExpression | None, tuple[PathStep, ...]]]:
    """(target, value, path) for each target of an assignment; value None when the new value is
    computed from the old (``x += 1``)."""
    if isinstance(statement, cst.Assign):
        for assign_target in statement.targets:
            for target, path in target_paths(assign_target.target):
                yield target, statement.value, path
    elif isinstance(statement, cst.AnnAssign) and statement.value is not None:
        yield statement.target, statement.value, ()
    elif isinstance(statement, cst.AugAssign):
        yield statement.target, None, ()
