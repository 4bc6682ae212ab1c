"""Which models are in ``train()`` or ``eval()`` mode where training and evaluation code runs.

``model.eval()`` switches dropout off and makes batch norm use its running statistics, for every
submodule, until ``model.train()``; the switch is a side effect that outlives the function that
makes it (``validate(model)`` returns with the model in eval mode). This analysis follows it:

- mode calls: ``m.train()``, ``m.train(True)``, ``m.train(mode=True)`` set training mode;
  ``m.eval()``, ``m.train(False)`` set eval mode (``m`` as the value-flow engine sees it:
  parameters through their callers, ``self.encoder`` through the class); a ``train()`` whose
  receiver is unknown may have set any model back to training (the rules then stay quiet);
- through calls of the project's functions and methods (``validate(model)`` ->
  ``encode_data`` -> ``model.val_start()`` -> ``self.img_enc.eval()``), each summarized once:
  the modes it leaves, relative to the modes it was called with, and the modes at its training
  points;
- across loop iterations (:class:`~trainlint.analysis.statement_flow.StatementFlow`): what the
  end of one iteration (or of an epoch) leaves is what the next one starts with.

A training point is a backward of a training step (:class:`TrainingSteps`), reached directly or
in a called function; its models are those the step runs (:class:`ModelStructure`).

API (``modes = ctx.get(ModelModes)``): ``left_in_eval()`` (training points reached with a model
still in eval mode from code that runs after them, for TL404), ``eval_mode_at(call)`` (the
``eval()`` every path to a call has made on a model, for TL406), ``mode_dependent(instance)``
(whether a model has dropout or batch norm).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.loop_facts import TRAINING_WORDS, callees
from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.statement_flow import StatementFlow
from trainlint.analysis.training_step import BACKWARD_KINDS, TrainingSteps
from trainlint.analysis.values import Constant, FunctionRef, Instance, Site, ValueFlow
from trainlint.analysis.values.torch_calls import argument
from trainlint.context import calls_within, literal_bool
from trainlint.analysis.values.torch_semantics import MODE_DEPENDENT_LAYERS, MODE_DEPENDENT_ZOO

if TYPE_CHECKING:
    from trainlint.context import FileContext

ENTRY = "entry"  # the mode the model had when the function was called
TRAIN = "train"
UNKNOWN = "unknown"  # a train() of unknown receiver ran: the model may be in training mode
_CALL_DEPTH = 3  # functions of functions of functions are followed
_HELPER_DEPTH = 2  # helpers a training step runs its models in (`self.forward_emb(x)`)
# Words without which a function switches no mode and runs no training step.
_MODE_WORDS = (b".eval(", b".train(", *TRAINING_WORDS)
_SWITCH_WORDS = (b".eval(", b".train(")
# Functions that evaluate, by the names projects give them (`validate`, `evaluate_model`,
# `test_epoch`, `run_validation`, `val_step`, `eval_loop`).
EVALUATION_NAME = re.compile(
    r"^(.*_)?(validate|validation|valid|val|evaluate|evaluation|eval|test|testing|inference|infer|predict)(_.*)?$"
)


@dataclass(frozen=True)
class Eval:
    """The model is in eval mode: ``origin`` is the ``.eval()`` call, ``anchor`` the call in the
    function being analyzed that led to it (the ``.eval()`` itself, or ``validate(model)``)."""

    anchor: cst.CSTNode = field(compare=True)
    origin: Site


Tag = str | Eval


@dataclass(frozen=True)
class ModelKey:
    """A model as the modes table knows it: its class and where it was built (file, place in source order).
    Engine values compare by the node of their construction; a key stays the same when a file
    is parsed again (a second lint, a fix pass), whichever parse the engine's answer came from."""

    cls: str
    path: str | None = None
    offset: int | None = None

    @staticmethod
    def of(instance: Instance) -> ModelKey:
        site = instance.site
        if site is None or not site.ctx.nodes.holds(site.node):
            return ModelKey(instance.cls, site.ctx.path if site is not None else None)
        return ModelKey(instance.cls, site.ctx.path, site.ctx.order(site.node)[0])

    def same(self, other: ModelKey) -> bool:
        """One construction, or ``self`` of the class (whose construction is unknown)."""
        return self.cls == other.cls and (self.offset is None or other.offset is None or self == other)


@dataclass(frozen=True)
class Modes:
    """Per model (an engine ``Instance``), the modes it may be in; ``default`` for the others."""

    default: frozenset[Tag] = frozenset({ENTRY})
    table: frozenset[tuple[ModelKey, frozenset[Tag]]] = frozenset()

    def of(self, key: ModelKey) -> frozenset[Tag]:
        for known, tags in self.table:
            if known == key:
                return tags
        return self.default

    def keys(self) -> list[ModelKey]:
        return [key for key, _ in self.table]

    def tags(self) -> Iterator[Tag]:
        """Every tag of every model, the default's included."""
        for tags in (self.default, *(tags for _, tags in self.table)):
            yield from tags

    def with_tags(self, key: ModelKey, tags: frozenset[Tag]) -> Modes:
        kept = frozenset((k, t) for k, t in self.table if k != key)
        return Modes(self.default, kept | {(key, tags)})

    def join(self, other: Modes) -> Modes:
        keys = set(self.keys()) | set(other.keys())
        table = frozenset((key, self.of(key) | other.of(key)) for key in keys)
        return Modes(self.default | other.default, table)

    def after(self, callee: Modes, anchor: cst.CSTNode) -> Modes:
        """These modes, then what a callee did (its modes relative to its entry): ENTRY in the
        callee's answer stands for the caller's modes; its Evals are anchored at the call."""

        def compose(tags: frozenset[Tag], before: frozenset[Tag]) -> frozenset[Tag]:
            own = frozenset(Eval(anchor, t.origin) if isinstance(t, Eval) else t for t in tags if t != ENTRY)
            return own | (before if ENTRY in tags else frozenset())

        keys = set(self.keys()) | set(callee.keys())
        table = frozenset((key, compose(callee.of(key), self.of(key))) for key in keys)
        return Modes(compose(callee.default, self.default), table)


@dataclass(frozen=True)
class TrainingPoint:
    """A backward of a training step, reached at ``anchor`` (a call in the analyzed function),
    with the modes its models may be in there."""

    anchor: cst.CSTNode
    modes: Modes
    models: frozenset[Instance]
    # the `.eval()` calls a helper made on its way to this backward (an adversarial attack on a
    # model in eval mode): the helper's own choice, not a mode left over from an evaluation
    set_on_the_way: frozenset[Site] = frozenset()


@dataclass(frozen=True)
class _Summary:
    exit: Modes
    points: tuple[TrainingPoint, ...]


@dataclass(frozen=True)
class LeftInEval:
    """A training point reached with ``model`` in eval mode, set by ``eval.anchor``, a call that
    runs after the training point in the same loop (so on a later iteration)."""

    point: TrainingPoint
    model: Instance
    eval: Eval


_EMPTY = _Summary(Modes(), ())


class ModelModes:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self.structure = ctx.get(ModelStructure)
        # by function and the flags its call decides (see _decisions)
        self._summaries: dict[tuple[cst.FunctionDef, frozenset[tuple[str, bool]]], tuple[int, _Summary]] = {}
        self._seen: dict[cst.CSTNode, dict[cst.Call, Modes]] = {}
        self._points: dict[cst.CSTNode, list[TrainingPoint]] = {}
        self._held: dict[str, frozenset[str]] = {}
        self._nodes_by_scope: tuple[dict[cst.CSTNode, list[cst.Call]], dict[cst.CSTNode, list[cst.For | cst.While]]] | None = None

    # -- questions -----------------------------------------------------------------------------
    def left_in_eval(self) -> Iterator[LeftInEval]:
        """Training points of this file's functions (and top-level code) that a model reaches in
        eval mode, set by a call that comes after them in the code, through a loop; only models
        with dropout or batch norm, and never when a ``train()`` of unknown receiver may run."""
        for scope in self._scopes_with_loops():
            if not (self.may_switch(scope) and self._may_train(scope)):
                continue  # no eval() can reach a backward here
            self._analyze(scope)
            for point in self._points.get(scope, []):
                yield from self._evals_left(point)

    def eval_mode_at(self, call: cst.Call, model: Instance) -> Eval | None:
        """The ``eval()`` that every path to ``call`` (in its function) has left ``model`` in."""
        scope = self.flow.scopes.scope_of(call)
        self._analyze(scope)
        modes = self._seen.get(scope, {}).get(call)
        if modes is None:
            return None
        tags = [tag for key, tags in _related(modes, ModelKey.of(model), self) for tag in tags]
        evals = [tag for tag in tags if isinstance(tag, Eval)]
        return evals[0] if evals and len(evals) == len(tags) else None

    def may_switch(self, scope: cst.CSTNode) -> bool:
        """Whether running the scope may switch a model's mode: it calls ``m.eval()`` or
        ``m.train(...)``, or a function of the project by a name whose body (or a callee's, by
        name) spells one (``ProjectIndex.functions_reaching``, a text index). The mode analysis,
        which resolves every call it follows, is only worth running where this holds."""
        return bool(self._switching_calls(scope))

    def puts_in_eval_within(self, scope: cst.CSTNode) -> bool:
        """Whether some call of the scope runs with a model left in eval mode on some path (by
        the scope's own ``m.eval()`` or by a helper's). Only a call after a switch can: a
        model zoo's factory that ends in a builder which may call ``eval()`` runs nothing after."""
        switching = self._switching_calls(scope)
        if not switching or not self._runs_a_call_after(scope, switching):
            return False
        self._analyze(scope)
        return any(
            isinstance(tag, Eval) for modes in self._seen.get(scope, {}).values() for tag in modes.tags()
        )

    def _runs_a_call_after(self, scope: cst.CSTNode, switching: list[cst.Call]) -> bool:
        """A call of the scope runs after the first switching call returns (one that comes
        later and is not part of its arguments, or one it is an argument of), or that call is
        in a loop. (Source order from the tree: positions would cost a pass over the file.)"""
        first = switching[0]
        calls = self._calls_in(scope)
        later = calls[calls.index(first) + 1 :]
        if any(not any(a is first for a in self.ctx.ancestors(c)) for c in later):
            return True
        return any(isinstance(a, (cst.Call, cst.For, cst.While)) for a in self.ctx.ancestors(first))

    def _switching_calls(self, scope: cst.CSTNode) -> list[cst.Call]:
        return self._calls_one_of(scope, _SWITCH_WORDS, ("eval", "train"))

    def _may_train(self, scope: cst.CSTNode) -> bool:
        """Whether running the scope may run a backward (its own, or a function's by name)."""
        return bool(self._calls_one_of(scope, TRAINING_WORDS, ("backward", "manual_backward")))

    def _calls_one_of(self, scope: cst.CSTNode, words: tuple[bytes, ...], methods: tuple[str, ...]) -> list[cst.Call]:
        """The scope's calls of ``methods`` or of a function that reaches ``words`` by name."""
        reaching = self.ctx.project.functions_reaching(words)
        found = []
        for call in self._calls_in(scope):
            func = call.func
            name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else None
            if name is not None and (name in methods or name in reaching):
                found.append(call)
        return found

    def held_classes(self, cls: str) -> frozenset[str]:
        """The classes of the modules a model class of the project keeps in its attributes,
        whoever built them (``self.model = nn.DataParallel(model)`` with ``model`` passed in)."""
        found = self._held.get(cls)
        if found is None:
            self._held[cls] = frozenset()  # a class holding itself: not through itself
            instance = Instance(cls)
            found = frozenset(
                value.cls
                for attr in self.flow.attribute_names(cls)
                for value in self.flow.attribute_of(instance, attr).of_type(Instance)
                if value.cls != cls and self.structure.is_model(value)
            )
            self._held[cls] = found
        return found

    def mode_dependent(self, instance: Instance) -> bool:
        """The model has dropout or batch norm (its own layers, transitively, or a model zoo's
        classification network known to have them)."""
        if _zoo_network(instance.cls) or self.structure.layers_of_value(instance) & MODE_DEPENDENT_LAYERS:
            return True
        site_ctx = instance.site.ctx if instance.site is not None else self.ctx
        built = self.ctx.project.built_by_class(instance.cls, site_ctx.real_path or self.ctx.real_path)
        return any(_zoo_network(name) for name in built)  # a project model around a torchvision backbone

    # -- the analysis of one scope ---------------------------------------------------------------
    def _scopes_with_loops(self) -> list[cst.CSTNode]:
        return list(self._by_scope()[1])

    def loops_in(self, scope: cst.CSTNode) -> list[cst.For | cst.While]:
        """The scope's own loops (a nested function's are its own)."""
        return self._by_scope()[1].get(scope, [])

    def _calls_in(self, scope: cst.CSTNode) -> list[cst.Call]:
        """The scope's calls in source order, lambdas and class bodies included."""
        return self._by_scope()[0].get(scope, [])

    def _by_scope(self) -> tuple[dict[cst.CSTNode, list[cst.Call]], dict[cst.CSTNode, list[cst.For | cst.While]]]:
        """The file's calls and loops by scope: one pass over its indexed nodes, not a walk of
        every function (the gates below are asked of every function of a model zoo)."""
        if self._nodes_by_scope is None:
            calls: dict[cst.CSTNode, list[cst.Call]] = {}
            loops: dict[cst.CSTNode, list[cst.For | cst.While]] = {}
            scope_of = self.flow.scopes.scope_of
            for call in self.ctx.nodes.of(cst.Call):
                calls.setdefault(scope_of(call), []).append(call)
            for loop in (*self.ctx.nodes.of(cst.For), *self.ctx.nodes.of(cst.While)):
                loops.setdefault(scope_of(loop), []).append(loop)
            self._nodes_by_scope = (calls, loops)
        return self._nodes_by_scope

    def _analyze(self, scope: cst.CSTNode) -> None:
        if isinstance(scope, cst.FunctionDef):
            self.summary(scope, _CALL_DEPTH)
        elif scope not in self._seen:
            self._walk(scope, _CALL_DEPTH)  # type: ignore[arg-type]

    def summary(
        self, function: cst.FunctionDef, budget: int, decided: frozenset[tuple[str, bool]] = frozenset()
    ) -> _Summary:
        """What the function does to modes, relative to the modes it is called with; its callees
        followed ``budget`` levels deep. ``decided``: flags the call passes as ``True``/``False``
        (``train_val_loop(is_train=True, ...)`` takes the training side of ``if is_train:``)."""
        key = (function, decided)
        found = self._summaries.get(key)
        if found is not None and found[0] >= budget:
            return found[1]
        if budget < 0:
            return _EMPTY
        self._summaries[key] = (_CALL_DEPTH + 1, _EMPTY)  # recursion: not through itself
        summary = self._walk(function, budget, dict(decided))
        self._summaries[key] = (budget, summary)
        return summary

    def _walk(self, scope: cst.FunctionDef | cst.Module, budget: int, decided: dict[str, bool] | None = None) -> _Summary:
        backwards = self._backwards(scope)
        points: list[TrainingPoint] = []

        def at_call(call: cst.Call, modes: Modes) -> Modes:
            if call in backwards:
                points.append(TrainingPoint(call, modes, backwards[call]))
            changed = self._mode_call(call, modes)
            if changed is not None:
                return changed
            for summary in self._callees(call, budget - 1):
                points.extend(
                    TrainingPoint(call, modes.after(p.modes, call), p.models, p.set_on_the_way | _evals_in(p.modes))
                    for p in summary.points
                )
                modes = modes.after(summary.exit, call)
            return modes

        walker: StatementFlow[Modes] = StatementFlow(lambda a, b: a.join(b), at_call, decided)
        exit_modes = walker.run(scope, Modes())
        if not decided:  # what the scope's own analysis sees, whatever its callers pass
            self._seen[scope] = walker.seen
        merged: dict[tuple[cst.CSTNode, frozenset[Instance], frozenset[Site]], Modes] = {}
        for point in points:
            key = (point.anchor, point.models, point.set_on_the_way)
            merged[key] = merged[key].join(point.modes) if key in merged else point.modes
        points = [TrainingPoint(anchor, modes, models, inner) for (anchor, models, inner), modes in merged.items()]
        self._points[scope] = points
        return _Summary(exit_modes, tuple(points))

    def _backwards(self, scope: cst.CSTNode) -> dict[cst.CSTNode, frozenset[Instance]]:
        """The backward calls of the scope's own training steps, with the models each trains."""
        found: dict[cst.CSTNode, frozenset[Instance]] = {}
        for step in self.ctx.get(TrainingSteps).all_steps():
            if step.function is not scope:
                continue
            models = self._models_run_in(step.loop if step.loop is not None else step.function)
            for event in step.of_kind(*BACKWARD_KINDS):
                if event.via_helper is None and models:
                    found[event.node] = models
        return found

    def _models_run_in(self, node: cst.CSTNode, follow: int = _HELPER_DEPTH) -> frozenset[Instance]:
        """The models a training step runs: calls of a name or of ``self``'s attributes (``model(x)``,
        ``self.net(x)``, ``self.model.forward(x)``) that hold model instances, including a model
        zoo's network whose layers are unknown, and those of the project's functions and methods
        the step calls that way (``self.forward_emb(images)`` runs ``self.img_enc`` and
        ``self.txt_enc``), ``follow`` levels deep. (Calls of other expressions, ``x.view(...)``,
        are not asked about: they would make the engine look for every caller of the function.)"""
        found: set[Instance] = set()
        for call in calls_within(node):
            func = call.func.value if isinstance(call.func, cst.Attribute) and call.func.attr.value == "forward" else call.func
            if not _names_a_model_call(func) or self.ctx.qualified_name(func) is not None:
                continue
            values = self.flow.values(func)
            found.update(v for v in values.of_type(Instance) if self.structure.is_model(v))
            for helper in values.of_type(FunctionRef) if follow > 0 else ():
                if helper.site is not None and isinstance(helper.site.node, cst.FunctionDef):
                    found |= helper.site.ctx.get(ModelModes)._models_run_in(helper.site.node, follow - 1)
        return frozenset(found)

    # -- calls -----------------------------------------------------------------------------------
    def _mode_call(self, call: cst.Call, modes: Modes) -> Modes | None:
        """The modes after ``m.train(...)``/``m.eval()``; None for any other call."""
        func = call.func
        if not isinstance(func, cst.Attribute) or func.attr.value not in ("train", "eval"):
            return None
        if func.attr.value == "eval":
            if call.args:
                return None
            mode: bool | None = False
        else:
            mode = self._train_argument(call)
            if mode == "not a mode":
                return None
        receiver = self.flow.values(func.value)
        instances = [v for v in receiver.of_type(Instance) if self.structure.is_model(v)]
        keys = list(dict.fromkeys(ModelKey.of(i) for i in instances))
        if mode is False:
            if not keys or receiver.unknown:
                return modes  # an eval() of something unknown: no claim
            tag = Eval(call, self.flow.site(call))
            for key in keys:
                tags = frozenset({tag}) if len(keys) == 1 else modes.of(key) | {tag}
                modes = modes.with_tags(key, tags)
            return modes
        tag = TRAIN if mode is True else UNKNOWN
        if not keys or receiver.unknown or mode is None:
            return _everything_may_be(modes, UNKNOWN)
        for trained in keys:
            for key in [*modes.keys(), trained]:
                if key.same(trained) or _contains(self, trained, key):
                    modes = modes.with_tags(key, frozenset({tag}))
        return modes

    def _train_argument(self, call: cst.Call) -> bool | None | str:
        """``train()``/``train(True)``: True; ``train(False)``: False; ``train(flag)``: None;
        ``train(data, epochs)`` (a project's own ``train`` function): "not a mode"."""
        if not call.args:
            return True
        if len(call.args) > 1:
            return "not a mode"
        found = argument(call, 0, "mode")
        if found is None:
            return "not a mode"
        values = self.flow.values(found.value)
        flags = {v.value for v in values.of_type(Constant)}
        if not values.unknown and len(values) == 1 and flags <= {True, False}:
            return flags.pop() if flags else None
        return None if values.unknown or flags & {True, False} else "not a mode"

    def _callees(self, call: cst.Call, budget: int) -> Iterator[_Summary]:
        """Summaries of the project functions and methods the call may run."""
        if budget < 0:
            return
        for ctx, function in callees(self.ctx, call, _MODE_WORDS):
            yield ctx.get(ModelModes).summary(function, budget, _decisions(ctx, call, function))

    # -- what a training point sees ----------------------------------------------------------------
    def _evals_left(self, point: TrainingPoint) -> Iterator[LeftInEval]:
        start = self.ctx.order(point.anchor)[0]
        for model in sorted(point.models, key=lambda i: i.cls):
            tags = [tag for _, tags in _related(point.modes, ModelKey.of(model), self) for tag in tags]
            if UNKNOWN in tags:
                continue
            for tag in tags:
                if not isinstance(tag, Eval) or tag.origin in point.set_on_the_way:
                    continue
                if self.ctx.order(tag.anchor)[0] > start or _evaluation_before(tag):
                    if self._matters(model, tag):
                        yield LeftInEval(point, model, tag)
                        break

    def _matters(self, model: Instance, tag: Eval) -> bool:
        """The model (or the part of it that was put in eval mode) has dropout or batch norm."""
        evaluated = [v for v in ValueFlowAt(tag.origin).receiver_instances() if self.structure.is_model(v)]
        key = ModelKey.of(model)
        parts = [v for v in evaluated if not ModelKey.of(v).same(key) and _contains(self, key, ModelKey.of(v))]
        return any(self.mode_dependent(part) for part in parts) if parts else self.mode_dependent(model)


@dataclass(frozen=True)
class ValueFlowAt:
    """The receiver of a ``.eval()`` call, asked in the module that holds it."""

    site: Site

    def receiver_instances(self) -> list[Instance]:
        call = self.site.node
        if not isinstance(call, cst.Call) or not isinstance(call.func, cst.Attribute):
            return []
        return self.site.ctx.get(ValueFlow).values(call.func.value).of_type(Instance)


def _decisions(ctx: FileContext, call: cst.Call, function: cst.FunctionDef) -> frozenset[tuple[str, bool]]:
    """The parameters of ``function`` that ``call`` passes a literal ``True`` or ``False`` (by
    keyword, or by position for a plain function) and that the function never rebinds."""
    params = function.params
    positional = [p.name.value for p in (*params.posonly_params, *params.params)]
    if positional[:1] in (["self"], ["cls"]):
        positional = []  # a method: its positional arguments are shifted by the receiver
    found: set[tuple[str, bool]] = set()
    for index, arg in enumerate(call.args):
        flag = literal_bool(arg.value)
        if arg.star or flag is None:
            continue
        name = arg.keyword.value if arg.keyword is not None else positional[index] if index < len(positional) else None
        if name is None:
            continue
        bindings = ctx.get(ValueFlow).scopes.records(function).get(name, [])
        if bindings and all(b.kind == "parameter" for b in bindings):
            found.add((name, flag))
    return frozenset(found)


def _zoo_network(qualified: str) -> bool:
    """A torchvision classification network (``torchvision.models.resnet50``), or one picked by
    name at run time (``models.__dict__[arch]``: nearly all of them have batch norm or dropout)."""
    module, _, tail = qualified.rpartition(".")
    return module.startswith("torchvision.models") and (tail == "*" or re.match(MODE_DEPENDENT_ZOO, tail) is not None)


def _names_a_model_call(func: cst.BaseExpression) -> bool:
    """``model``, ``self.model``, ``self.model.module``, ``self``: how code calls a model."""
    if isinstance(func, cst.Name):
        return True
    while isinstance(func, cst.Attribute):
        func = func.value
    return isinstance(func, cst.Name) and func.value == "self"




def _evals_in(modes: Modes) -> frozenset[Site]:
    return frozenset(tag.origin for tag in modes.tags() if isinstance(tag, Eval))


def _evaluation_before(tag: Eval) -> bool:
    """The eval mode comes from an evaluation run before training (``validate(model)`` for a
    baseline), not from a ``.eval()`` written there (which may freeze the model on purpose)."""
    anchor = tag.anchor
    if anchor is tag.origin.node or not isinstance(anchor, cst.Call):
        return False
    func = anchor.func
    name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
    return bool(EVALUATION_NAME.match(name.lower()))


def _everything_may_be(modes: Modes, tag: Tag) -> Modes:
    table = frozenset((key, tags | {tag}) for key, tags in modes.table)
    return Modes(modes.default | {tag}, table)


def _contains(modes: ModelModes, outer: ModelKey, inner: ModelKey) -> bool:
    """``outer`` builds a module of ``inner``'s class, or keeps one in an attribute (a trainer
    module given the model: ``self.model = model``); ``train()`` of ``outer`` reaches it."""
    if outer.same(inner):
        return True
    importer = Path(outer.path) if outer.path is not None else modes.ctx.real_path
    return inner.cls in modes.ctx.project.built_by_class(outer.cls, importer) or inner.cls in modes.held_classes(outer.cls)


def _related(modes: Modes, model: ModelKey, analysis: ModelModes) -> list[tuple[ModelKey, frozenset[Tag]]]:
    """The modes of every key that is the model, one of its parts, or a model holding it; the
    default when no key is."""
    found = [
        (key, tags)
        for key, tags in modes.table
        if key.same(model) or _contains(analysis, key, model) or _contains(analysis, model, key)
    ]
    return found or [(model, modes.default)]


__all__ = ["ENTRY", "EVALUATION_NAME", "ModelKey", "TRAIN", "UNKNOWN", "Eval", "LeftInEval", "ModelModes", "Modes", "TrainingPoint"]
