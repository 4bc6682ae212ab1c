"""Calls for the engine: what a call returns (a summary per function, with its parameters
replaced by the arguments of each call), and what a parameter receives (its default and the
arguments at every call site in the project).

Call sites are found the cheap way first: the project index's ``ast`` summaries say which modules
may call a function (they spell its name and call it); only those are read. A function that is
also used as a value (passed as a callback, registered by a decorator) may be called where no
one can see: its parameters may then be anything ("unknown").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.values.domain import (
    EXTERNAL,
    NOTHING,
    UNKNOWN,
    ClassRef,
    Collection,
    Constant,
    Evidence,
    FunctionRef,
    Instance,
    Param,
    Parameters,
    Value,
    Values,
)

if TYPE_CHECKING:
    from trainlint.analysis.values.engine import ValueFlow
    from trainlint.analysis.values.guard import Dependency
    from trainlint.context import FileContext
    from trainlint.module_summary import ModuleSummary
    from trainlint.class_family import ClassFamily
    from trainlint.project import ProjectIndex

# Decorators that leave who calls a function, and with what, unchanged.
HARMLESS_DECORATORS = frozenset({
    "staticmethod", "classmethod", "property", "abstractmethod", "abc.abstractmethod", "functools.wraps",
    "torch.no_grad", "torch.inference_mode", "torch.enable_grad", "torch.jit.script", "torch.jit.export",
    "torch.jit.ignore", "torch.jit.unused", "torch.compile", "torch.compiler.disable", "dataclass",
    "dataclasses.dataclass", "functools.lru_cache", "functools.cache", "typing.overload", "overload",
    "torch.autocast", "torch.cuda.amp.autocast", "torch.amp.autocast", "contextlib.contextmanager",
})
# Methods the framework or Python calls, never the project: their parameters come from outside.
_CALLED_FROM_OUTSIDE = frozenset({"forward", "__call__"})
_MAX_CALL_SITES = 64
_MAX_CALLER_MODULES = 12  # other modules read to find the callers of one function


class TooManyCallers(Exception):
    """More modules may call the function than the engine reads: its parameters are unknown."""


@dataclass(frozen=True)
class CallSite:
    """A call of a function, in the module whose engine is ``flow``. ``skip_first`` for a bound
    method or a constructor (``self`` is not among the arguments); ``self_value`` is what ``self``
    is at this call."""

    flow: ValueFlow
    call: cst.Call
    skip_first: bool
    self_value: Values | None = None
    prepended: tuple[Values, ...] = ()  # a partial's bound positional arguments
    keywords: tuple[tuple[str, Values], ...] = ()  # a partial's bound keyword arguments


class CallsMixin:
    def _init_calls(self: ValueFlow) -> None:
        self._summaries: dict[cst.FunctionDef, tuple[Values, frozenset[Dependency]]] = {}
        self._parameters: dict[tuple[cst.FunctionDef, str], tuple[Values, frozenset[Dependency]]] = {}
        self._call_sites: dict[cst.FunctionDef, tuple[tuple[list[CallSite], bool], frozenset[Dependency]]] = {}

    # -- what a call returns ---------------------------------------------------------------------
    def call_values(self: ValueFlow, call: cst.Call, symbolic: bool) -> Values:
        func = call.func
        qualified = self.ctx.qualified_name(func)
        if qualified == "typing.cast" and len(call.args) == 2:
            return self.evaluate(call.args[1].value, symbolic)  # a type checker's note: the value itself
        if qualified is not None:
            found = self.torch_call(call, qualified, symbolic)
            if found is not None:
                return found
        elif isinstance(func, cst.Name):
            found = self.builtin_call(call, func.value, symbolic)
            if found is not None:
                return found
        if isinstance(func, cst.Attribute) and qualified is None:
            return self.method_call(call, func, symbolic)
        return self.evaluate(func, symbolic).map(lambda callee: self.apply(callee, call, symbolic))

    def apply(self: ValueFlow, callee: Value, call: cst.Call, symbolic: bool) -> Values:
        """What calling ``callee`` at ``call`` gives."""
        if isinstance(callee, ClassRef):
            return Values.of(Instance(callee.qualified, self.site(call)))
        if isinstance(callee, FunctionRef):
            if callee.site is None:
                return self.library_function(callee.qualified, call, symbolic)
            site = CallSite(self, call, False, None, callee.bound, callee.bound_keywords)
            return self.returned_at(callee.site.ctx, callee.site.node, site, symbolic)  # type: ignore[arg-type]
        if isinstance(callee, Instance):
            return self.instance_call(callee, call, symbolic)
        return UNKNOWN

    def returned_at(self: ValueFlow, ctx: FileContext, function: cst.FunctionDef, site: CallSite, symbolic: bool) -> Values:
        """The summary of ``function`` (defined in ``ctx``'s module) with its parameters replaced
        by the arguments of ``site``; from another module, with where it returns as evidence."""
        from trainlint.analysis.values.engine import ValueFlow

        owner = ctx.get(ValueFlow)
        result = owner.summary(function)
        if any(isinstance(v, (Param, Collection, Parameters)) for v in result):
            names = owner.parameter_names(function)
            arguments = {name: site.flow._argument_values(site, function, name, symbolic) for name in names}
            result = _substitute(result, function, arguments)
        if ctx is self.ctx:
            return result
        name = owner.qualified_of(function)[len(owner.prefix) + 1 :]  # `Discriminator.forward`
        return result.with_evidence(Evidence("returned", owner.site(function), name))

    def summary(self: ValueFlow, function: cst.FunctionDef) -> Values:
        """What the function may return, its own parameters left symbolic; computed once.
        A generator, or a function that may end without ``return``, may also give None/unknown."""
        return self.guard.answer(
            ("summary", id(function)), self._summaries, function, lambda: self._compute_summary(function), UNKNOWN
        )

    def _compute_summary(self: ValueFlow, function: cst.FunctionDef) -> Values:
        returns: list[Values] = []
        for node in _own_nodes(function.body):
            if isinstance(node, (cst.Yield, cst.Await)):
                return UNKNOWN
            if isinstance(node, cst.Return):
                returns.append(self.evaluate(node.value, True) if node.value is not None else Values.of(Constant(None)))
        if not _always_returns(function.body):
            returns.append(Values.of(Constant(None)))
        return Values.union(returns) if returns else Values.of(Constant(None))

    # -- what a parameter receives ----------------------------------------------------------------
    def parameter_names(self: ValueFlow, function: cst.FunctionDef) -> list[str]:
        params = function.params
        return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]

    def parameter_values(self: ValueFlow, function: cst.FunctionDef, name: str) -> Values:
        """The default and the arguments passed for ``name`` at every call of ``function`` in the
        project; a parameter of a function called from outside (a framework hook, a callback)
        with no default is unknown."""
        return self.guard.answer(
            ("parameter", id(function), name),
            self._parameters,
            (function, name),
            lambda: self._compute_parameter(function, name),
            NOTHING,  # a parameter passed on to itself (recursion): the other call sites decide
        )

    def _compute_parameter(self: ValueFlow, function: cst.FunctionDef, name: str) -> Values:
        param = _param(function, name)
        if param is None:  # *args, **kwargs
            return UNKNOWN
        default = self._default(function, param)
        if function.name.value in _CALLED_FROM_OUTSIDE and self.enclosing_class(function) is not None:
            return EXTERNAL
        sites, complete = self.call_sites(function)
        parts: list[Values] = []
        if not complete:  # used as a value: maybe registered as a gradient hook, called by autograd
            gradient = self.hook_gradient_values(function, name)
            if gradient is not None:
                parts.append(gradient.with_evidence(Evidence("passed", self.site(param), name)))
                if not sites:
                    return Values.union(parts)
        for site in sites:
            argument = site.flow._argument_values(site, function, name, False)
            if argument is None:
                parts.append(default if default is not None else Values())
            else:
                parts.append(argument.with_evidence(Evidence("passed", site.flow.site(site.call), name)))
        if not sites or not complete:
            parts.append(EXTERNAL)  # called from outside the project, with anything
            if not sites and default is not None:
                parts.append(default)
        return Values.union(parts)

    def _default(self: ValueFlow, function: cst.FunctionDef, param: cst.Param) -> Values | None:
        if param.default is None:
            return None
        text = f"{param.name.value}={self.ctx.code(param.default)}"
        return self.evaluate(param.default, False).with_evidence(Evidence("default", self.site(param), text))

    def _argument_values(self: ValueFlow, site: CallSite, function: cst.FunctionDef, name: str, symbolic: bool) -> Values | None:
        """The value passed for parameter ``name`` of ``function`` at ``site`` (this engine is
        the call's module's); None when the call does not pass it (the default applies)."""
        names = _positional_names(function)
        if site.skip_first and names:
            if name == names[0]:
                return site.self_value if site.self_value is not None else UNKNOWN
            names = names[1:]
        for keyword, value in site.keywords:
            if keyword == name:
                return value
        positional: list[Values | cst.BaseExpression] = list(site.prepended)
        for arg in site.call.args:
            if arg.star == "*":
                if name in names[len(positional) :]:
                    return UNKNOWN
            elif arg.star == "**":
                if name in names or name in _keyword_only(function):
                    return UNKNOWN
            elif arg.keyword is not None:
                if arg.keyword.value == name:
                    return self.evaluate(arg.value, symbolic)
            else:
                positional.append(arg.value)
        if name in names and names.index(name) < len(positional):
            found = positional[names.index(name)]
            return found if isinstance(found, Values) else self.evaluate(found, symbolic)
        return None

    # -- where a function is called -----------------------------------------------------------------
    def call_sites(self: ValueFlow, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        """Every call of ``function`` (defined in this module) in the project, and whether that
        list is complete (False when the function is also used as a value or registered)."""
        nothing: tuple[list[CallSite], bool] = ([], False)
        return self.guard.answer(
            ("call_sites", id(function)), self._call_sites, function, lambda: self._find_call_sites(function), nothing, nothing
        )

    def _find_call_sites(self: ValueFlow, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        try:
            return self._call_sites_of(function)
        except TooManyCallers:
            return [], False

    def _call_sites_of(self: ValueFlow, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        owner = self.enclosing_class(function)
        if owner is not None and self.is_method(function):
            if function.name.value == "__init__":
                return self._constructor_sites(owner)
            return self._method_sites(owner, function)
        outer = self.ctx.enclosing(function, cst.FunctionDef)
        if outer is not None:
            return self._nested_sites(outer, function)
        return self._function_sites(function)

    def _nested_sites(self: ValueFlow, outer: cst.FunctionDef, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        sites = []
        for call in self.ctx.nodes.calls_spelled(function.name.value):
            if isinstance(call.func, cst.Name) and self._calls(call, function):
                sites.append(CallSite(self, call, False))
        return sites, not self._used_as_value(self.ctx, function.name.value, function)

    def _calls(self: ValueFlow, call: cst.Call, function: cst.FunctionDef) -> bool:
        return any(v.site is not None and v.site.node is function for v in self.evaluate(call.func, False).of_type(FunctionRef))

    def _function_sites(self: ValueFlow, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        qualified = self.qualified_of(function)
        complete = not _decorated(function, self)
        sites: list[CallSite] = []
        name = function.name.value
        for flow in self.modules_using(name, qualified):
            spellings = {name, *flow._partial_names(name), *flow._import_aliases(name)}
            for call in flow.ctx.nodes.calls_spelled_any(spellings):
                for value in flow.evaluate(call.func, False).of_type(FunctionRef):
                    if value.site is not None and value.site.node is function:
                        sites.append(CallSite(flow, call, False, None, value.bound, value.bound_keywords))
                        break
            complete = complete and not flow._used_as_value(flow.ctx, name, function)
        return sites[:_MAX_CALL_SITES], complete and len(sites) <= _MAX_CALL_SITES

    def _import_aliases(self: ValueFlow, name: str) -> set[str]:
        """Names this module imports ``name`` as (``from train.steps import train_epoch_dense as
        train_epoch``, at the top or inside a function): other spellings of a call."""
        return {
            alias.asname.name.value
            for statement in self.ctx.nodes.of(cst.ImportFrom) if not isinstance(statement.names, cst.ImportStar)
            for alias in statement.names
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name)
            and isinstance(alias.name, cst.Name) and alias.name.value == name
        }

    def _partial_names(self: ValueFlow, name: str) -> set[str]:
        """Names bound to ``functools.partial(name, ...)`` in this module: other spellings of a call."""
        found = set()
        for call in self.ctx.nodes.calls_spelled("partial"):
            if self.ctx.qualified_name(call.func) != "functools.partial" or not call.args:
                continue
            first = call.args[0].value
            parent = self.ctx.parent(call)
            if isinstance(first, cst.Name) and first.value == name and isinstance(parent, cst.Assign):
                found.update(t.target.value for t in parent.targets if isinstance(t.target, cst.Name))
        return found

    def _constructor_sites(self: ValueFlow, owner: cst.ClassDef) -> tuple[list[CallSite], bool]:
        """``C(...)``, ``Sub(...)`` of subclasses without their own ``__init__``, and
        ``super().__init__(...)`` in subclasses."""
        qualified = self.qualified_of(owner)
        complete = not _decorated(owner, self)
        sites: list[CallSite] = []
        for flow in self.modules_using(owner.name.value, qualified):
            names = flow.constructor_names(qualified)
            for call in flow.ctx.nodes.calls_spelled_any(("__init__", *names)):
                func = call.func
                if _spells(func, "__init__") and isinstance(func, cst.Attribute):
                    if flow.is_super_init_of(call, qualified):
                        sites.append(CallSite(flow, call, True, flow.receiver_at(call)))
                    continue
                if not any(_spells(func, name) for name in names):
                    continue
                for value in flow.evaluate(func, False):
                    if isinstance(value, ClassRef) and flow.constructs(value.qualified, qualified):
                        instance = Values.of(Instance(value.qualified, flow.site(call)))
                        sites.append(CallSite(flow, call, True, instance, value.bound, value.bound_keywords))
                        break
            complete = complete and not flow._used_as_value(flow.ctx, owner.name.value, owner)
        return sites[:_MAX_CALL_SITES], complete and len(sites) <= _MAX_CALL_SITES

    def _method_sites(self: ValueFlow, owner: cst.ClassDef, function: cst.FunctionDef) -> tuple[list[CallSite], bool]:
        """``self.m(...)`` in the class and its subclasses, ``obj.m(...)`` where ``obj`` is an
        instance of the class, ``super().m(...)``, and ``self.m(...)`` in a base class's method,
        which reaches this override when ``self`` is an instance of the class (a template method:
        ``update`` detaches and calls ``self._update``).

        Only modules that may hold an instance of the class are read (:mod:`trainlint.class_family`:
        they define a class of its family, build one, hold one through a class or function that
        does, or receive one): ``self.m(...)`` in an unrelated class, or ``pipe.m(...)`` of
        another class's instance, is not a call of this method (diffusers spells
        ``encode_prompt`` in hundreds of pipelines)."""
        name = function.name.value
        qualified = self.qualified_of(owner)
        family = self.ctx.project.families.of(qualified, self.ctx.real_path)
        sites: list[CallSite] = []
        complete = True
        for flow in self.modules_using(name, None, mentioning=family.words if family else (), family=family):
            for call in flow.ctx.nodes.calls_spelled(name):
                func = call.func
                if not isinstance(func, cst.Attribute):
                    continue
                receiver = flow.evaluate(func.value, False)
                if receiver.may(lambda v: isinstance(v, Instance) and flow.is_subclass(v.cls, qualified)):
                    sites.append(CallSite(flow, call, True, receiver))
                elif flow._self_call_in_a_base(call, qualified):
                    sites.append(CallSite(flow, call, True, receiver))
            complete = complete and not flow._used_as_value(flow.ctx, name, function, method=True)
        return sites[:_MAX_CALL_SITES], complete and len(sites) <= _MAX_CALL_SITES

    def _self_call_in_a_base(self: ValueFlow, call: cst.Call, qualified: str) -> bool:
        """``self.m(...)`` in a method of a base class of ``qualified`` (not the class itself,
        whose own calls the receiver's value already shows): it runs the override."""
        func = call.func
        if not (isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self"):
            return False
        enclosing = next((a for a in self.ctx.ancestors(call) if isinstance(a, cst.ClassDef)), None)
        if enclosing is None:
            return False
        base = self.qualified_of(enclosing)
        return base != qualified and self.is_subclass(qualified, base)

    def modules_using(
        self: ValueFlow, word: str, qualified: str | None, include_self: bool = True, mentioning: tuple[str, ...] = (),
        family: ClassFamily | None = None,
    ) -> Iterator[ValueFlow]:
        """The engines of the modules that may call ``qualified`` (or, for None, any method
        named ``word``; with ``family``, only in modules that may hold an instance of its
        class): this one, and those whose summary calls or mentions it (under any name it is
        re-exported as). At most _MAX_CALLER_MODULES others: past that, the caller stops and
        the parameter is unknown."""
        from trainlint.analysis.values.engine import ValueFlow

        if include_self:
            yield self
        project = self.ctx.project
        own = self.ctx.real_path.resolve() if self.ctx.real_path is not None else None
        target = project.definition(qualified, own) if qualified is not None else None
        # a test's calls say what a test passes, not what training passes (a test may build an RNN
        # to exercise a generic helper): callers in tests count only for code in tests
        skip_tests = own is None or not project.is_test_path(own)
        callers = []
        for summary in project.modules_importing(self.prefix, word, mentioning):
            if summary.path == own or (skip_tests and _is_test_module(project, summary)):
                continue
            used = summary.calls | summary.references
            if qualified is None:
                wanted = "." + word in used
            else:
                wanted = any(
                    name == qualified
                    or (not name.startswith(".") and name.endswith("." + word) and project.definition(name, summary.path) == target)
                    for name in used
                )
            if not wanted or (family is not None and not project.families.may_hold(summary, family)):
                continue
            callers.append(summary)
            if len(callers) > _MAX_CALLER_MODULES:
                raise TooManyCallers  # known from the summaries alone, before any module is read
        for summary in callers:
            ctx = project.context(summary)
            if ctx is not None:
                yield ctx.get(ValueFlow)

    def _used_as_value(self: ValueFlow, ctx: FileContext, word: str, definition: cst.CSTNode, method: bool = False) -> bool:
        """The definition loaded other than as a callee (``spawn(train, ...)``, ``@train``,
        ``hooks.append(self.step)``): someone may call it where no one can see."""
        for node in ctx.nodes.spelled(word, cst.Attribute if method else cst.Name):
            parent = ctx.parent(node)
            if isinstance(parent, cst.Call) and parent.func is node:
                continue
            if _is_store(ctx, node) or (not method and _names_not_loads(parent, node)):
                continue
            if not method and _bound_by_partial(ctx, node):
                continue  # `run = partial(train, ...)`: its calls are found as calls of `run`
            if not method and not self._refers_to(node, definition):
                continue  # another `train`: a parameter, a local name
            return True
        return False

    def _refers_to(self: ValueFlow, name: cst.Name, definition: cst.CSTNode) -> bool:
        """The name (in this engine's module) is the definition, not another binding of it."""
        return any(
            getattr(v, "site", None) is not None and v.site.node is definition  # type: ignore[attr-defined]
            for v in self.evaluate(name, False)
        )


# -- helpers ------------------------------------------------------------------------------------
def _substitute(values: Values, function: cst.FunctionDef, arguments: dict[str, Values | None]) -> Values:
    def replace(value: Value) -> Values:
        if isinstance(value, Param) and value.function is function:
            found = arguments.get(value.name)
            return found if found is not None else UNKNOWN
        if isinstance(value, Collection):
            items = tuple(_substitute(item, function, arguments) for item in value.items)
            return Values.of(Collection(value.kind, items, value.keys, value.homogeneous, evidence=value.evidence))
        if isinstance(value, Parameters):
            return Values.of(Parameters(_substitute(value.owners, function, arguments), evidence=value.evidence))
        return Values.of(value)

    return values.map(replace)


def _param(function: cst.FunctionDef, name: str) -> cst.Param | None:
    params = function.params
    for param in (*params.posonly_params, *params.params, *params.kwonly_params):
        if param.name.value == name:
            return param
    return None


def _positional_names(function: cst.FunctionDef) -> list[str]:
    params = function.params
    return [p.name.value for p in (*params.posonly_params, *params.params)]


def _keyword_only(function: cst.FunctionDef) -> list[str]:
    return [p.name.value for p in function.params.kwonly_params]


def _spells(func: cst.BaseExpression, name: str | None) -> bool:
    """The callee is written ``name`` or ``x.name`` (any name when None)."""
    if isinstance(func, cst.Name):
        return name is None or func.value == name
    if isinstance(func, cst.Attribute):
        return name is None or func.attr.value == name
    return False


def _decorated(definition: cst.FunctionDef | cst.ClassDef, flow: ValueFlow) -> bool:
    for decorator in definition.decorators:
        target = decorator.decorator.func if isinstance(decorator.decorator, cst.Call) else decorator.decorator
        name = flow.ctx.qualified_name(target) or (target.value if isinstance(target, cst.Name) else "")
        if isinstance(target, cst.Attribute) and not name:
            name = target.attr.value
        if name not in HARMLESS_DECORATORS and name.rpartition(".")[2] not in HARMLESS_DECORATORS:
            return True
    return False


def _names_not_loads(parent: cst.CSTNode | None, node: cst.Name) -> bool:
    """A Name that is not a load of a variable: a definition's name, a parameter, an import, an
    attribute's name, a keyword argument's name, a global declaration."""
    if isinstance(parent, (cst.FunctionDef, cst.ClassDef, cst.Param, cst.ImportAlias, cst.AsName, cst.NameItem)):
        return True
    if isinstance(parent, cst.Attribute) and parent.attr is node:
        return True
    return isinstance(parent, cst.Arg) and parent.keyword is node


def _bound_by_partial(ctx, node: cst.Name) -> bool:
    arg = ctx.parent(node)
    call = ctx.parent(arg) if isinstance(arg, cst.Arg) else None
    return (
        isinstance(call, cst.Call)
        and call.args[0] is arg
        and ctx.qualified_name(call.func) == "functools.partial"
        and isinstance(ctx.parent(call), cst.Assign)
    )


def _is_store(ctx, node: cst.CSTNode) -> bool:
    """An assignment target (``self.step = ...``, ``x = ...``, also inside a tuple target)."""
    child, parent = node, ctx.parent(node)
    while isinstance(parent, (cst.Element, cst.Tuple, cst.List, cst.StarredElement)):
        child, parent = parent, ctx.parent(parent)
    if isinstance(parent, cst.AssignTarget):
        return True
    return isinstance(parent, (cst.AugAssign, cst.AnnAssign, cst.For)) and getattr(parent, "target", None) is child


def _own_nodes(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under ``node``, nested functions, classes and lambdas excluded."""
    from trainlint.context import scope_nodes

    return scope_nodes(node)


def _always_returns(block: cst.BaseSuite) -> bool:
    """The block ends in ``return``/``raise`` on every path (an if/else whose branches all do, a
    ``with`` or ``try`` whose body does)."""
    statements = block.body if isinstance(block, cst.IndentedBlock) else [block]
    if not statements:
        return False
    last = statements[-1]
    if isinstance(last, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
        return any(isinstance(s, (cst.Return, cst.Raise)) for s in last.body)
    if isinstance(last, cst.If):
        orelse = last.orelse
        if orelse is None:
            return False
        other = orelse.body if isinstance(orelse, cst.Else) else cst.IndentedBlock(body=[orelse])
        return _always_returns(last.body) and _always_returns(other)
    if isinstance(last, cst.With):
        return _always_returns(last.body)
    if isinstance(last, cst.Try):
        return _always_returns(last.body) and all(_always_returns(h.body) for h in last.handlers)
    if isinstance(last, cst.While):
        return isinstance(last.test, cst.Name) and last.test.value == "True"
    return False


def _is_test_module(project: ProjectIndex, summary: ModuleSummary) -> bool:
    """A module of ``test-paths`` that defines tests (``def test_...``, ``class Test...``): a script
    named ``test_video.py`` that evaluates a model is not one, and its calls are evidence."""
    defines_tests = any(f.startswith("test") for f in summary.functions) or any(
        c.startswith("Test") for c in summary.classes
    )
    return defines_tests and project.is_test_path(summary.path)
