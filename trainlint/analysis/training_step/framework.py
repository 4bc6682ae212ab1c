"""Steps a framework runs for you, and where your code sits in them.

Under float16 mixed precision a framework scales the loss before its backward and unscales the
gradients only right before it clips or steps. Code that reads gradients in between reads them
multiplied by the loss scale (65536 at the start):

- Lightning (a ``LightningModule``, its base possibly in another module of the project):
  ``on_after_backward`` runs after the scaled backward and before the precision plugin's
  ``unscale_``; ``on_before_optimizer_step`` and ``configure_gradient_clipping`` run after it.
- A Hugging Face ``Trainer`` subclass overriding ``training_step``: after
  ``super().training_step(...)`` returns, the gradients are still scaled; the Trainer unscales
  them when it clips, after ``training_step``.
- Accelerate and Fabric in your own loop: after ``accelerator.backward(loss)`` the gradients
  are scaled until ``accelerator.clip_grad_norm_``/``unscale_gradients`` (``fabric.clip_gradients``)
  or the wrapped optimizer's ``step()``. These are events of the ordinary step (see the builder);
  this module says whether the framework object scales.

Whether the run uses float16 is read where the code shows it (``Trainer(precision="16-mixed")``
anywhere in the project, ``TrainingArguments(fp16=True)``, ``Accelerator(mixed_precision="fp16")``).
When it cannot be seen (a config file, the command line) there is no finding: the frameworks
default to float32, and code that is right as the project runs it by default is not reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import libcst as cst

from trainlint.analysis.training_step.builder import _Builder, _BuildState
from trainlint.analysis.training_step.events import LIGHTNING_FP16, EventKind, Precision, StepEvent
from trainlint.analysis.training_step.graph import TrainingStep, _flatten
from trainlint.analysis.values import ValueFlow
from trainlint.analysis.values.torch_calls import argument

if TYPE_CHECKING:
    from trainlint.analysis.training_step.receivers import _Module
    from trainlint.context import FileContext
    from trainlint.findings import Fix

_LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning")
_HF_PACKAGES = ("transformers", "trl")


@dataclass(frozen=True)
class ScaledHook:
    """A hook of a framework's step that runs while the gradients are still scaled."""

    framework: str  # "Lightning" | "Hugging Face Trainer"
    cls: cst.ClassDef
    hook: cst.FunctionDef
    step: TrainingStep  # the hook's own events, as a step (for folds over them)
    events: tuple[StepEvent, ...]  # its gradient inspections and clips while scaled
    right_place: str  # where such code belongs

    def condition(self) -> str:
        """The setting, as the code shows it, under which the hook reads scaled gradients."""
        setting = "`precision=\"16-mixed\"`" if self.framework == "Lightning" else "`fp16=True`"
        return f"under {setting}"


class FrameworkSteps:
    """``ctx.get(FrameworkSteps)``: the framework hooks of a file that run on scaled gradients."""

    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx
        self.flow = ctx.get(ValueFlow)
        self._precisions: dict[str, Precision] = {}

    @cached_property
    def scaled_hooks(self) -> list[ScaledHook]:
        from trainlint.analysis.training_step.steps import TrainingSteps  # steps build on this module's peers

        module = self.ctx.get(TrainingSteps).module
        found = []
        for cls in self.ctx.nodes.of(cst.ClassDef):
            kind = self.framework_of(cls)
            if kind is None:
                continue
            for hook in self._hooks(cls, kind):
                scaled = self._scaled_events(module, cls, hook, kind)
                if scaled is None or not scaled[1]:
                    continue
                if self.precision(kind) != "fp16":
                    continue
                right = "`on_before_optimizer_step`" if kind == "Lightning" else (
                    "a `TrainerCallback.on_pre_optimizer_step`, which runs after the Trainer unscales to clip"
                )
                found.append(ScaledHook(kind, cls, hook, scaled[0], tuple(scaled[1]), right))
        return found

    # -- which framework, which hooks ---------------------------------------------------------------
    def framework_of(self, cls: cst.ClassDef) -> str | None:
        """"Lightning" for a LightningModule, "Hugging Face Trainer" for a Trainer subclass."""
        names = self.flow.base_names(self.flow.qualified_of(cls))
        for name in names:
            package = name.partition(".")[0]
            if package in _LIGHTNING_PACKAGES and name.endswith("LightningModule"):
                return "Lightning"
            if package in _HF_PACKAGES and name.endswith("Trainer") and "Callback" not in name:
                return "Hugging Face Trainer"
        return None

    @staticmethod
    def _hooks(cls: cst.ClassDef, kind: str) -> Iterator[cst.FunctionDef]:
        wanted = "on_after_backward" if kind == "Lightning" else "training_step"
        body = cls.body.body if isinstance(cls.body, cst.IndentedBlock) else ()
        for statement in body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == wanted:
                yield statement

    def _scaled_events(
        self, module: _Module, cls: cst.ClassDef, hook: cst.FunctionDef, kind: str
    ) -> tuple[TrainingStep, list[StepEvent]] | None:
        """The hook's events as a step, and those that read or clip gradients while scaled: all
        of ``on_after_backward``; in a ``training_step`` override, those after the call of
        ``super().training_step``. A NaN/Inf test counts only when the hook acts on it (zeroes
        the gradients)."""
        state = _BuildState(root=hook)
        items = _Builder(module, state, hook).block(hook.body)
        step = TrainingStep(hook, list(_flatten(items)), dict(state.scalers), dict(state.optimizers), None, _items=items)
        start = 0
        if kind != "Lightning":
            super_call = self._super_training_step(hook)
            if super_call is None:
                return None
            start = self.ctx.range(super_call).end.line
        events = []
        for event in step.events:
            if self.ctx.range(event.node).start.line <= start:
                continue
            if event.kind is EventKind.CLIP:
                events.append(event)
            elif event.kind is EventKind.GRAD_INSPECT and (not event.scale_invariant or self._acted_on(step, event)):
                events.append(event)
        return step, events

    @staticmethod
    def _acted_on(step: TrainingStep, test: StepEvent) -> bool:
        return any(e.kind is EventKind.ZERO_GRAD for e in step.flow.after(test).events)

    def _super_training_step(self, hook: cst.FunctionDef) -> cst.Call | None:
        for call in self.ctx.nodes.of(cst.Call):
            func = call.func
            if (
                isinstance(func, cst.Attribute)
                and func.attr.value == "training_step"
                and isinstance(func.value, cst.Call)
                and isinstance(func.value.func, cst.Name)
                and func.value.func.value == "super"
                and self.ctx.enclosing(call, cst.FunctionDef) is hook
            ):
                return call
        return None

    # -- precision ------------------------------------------------------------------------------------
    def precision(self, kind: str) -> Precision:
        """What the project says about float16 for this framework (one answer per file)."""
        if kind not in self._precisions:
            if kind == "Lightning":
                found = self._project_setting(_LIGHTNING_PACKAGES, "Trainer", "precision", _lightning_fp16)
            else:
                found = self._project_setting(_HF_PACKAGES, "TrainingArguments", "fp16", _hf_fp16)
            self._precisions[kind] = found
        return self._precisions[kind]

    def _project_setting(self, packages: tuple[str, ...], constructor: str, keyword: str, reads_fp16) -> Precision:
        """What the project's ``constructor(keyword=...)`` calls say: fp16 when one of them sets
        it, other when they all set something else, unknown when none is seen."""
        seen: set[bool] = set()
        project = self.ctx.project
        contexts = [self.ctx]
        for package in packages:
            for summary in project.modules_importing(package, keyword, (constructor,)):
                other = project.context(summary)
                if other is not None and other not in contexts:
                    contexts.append(other)
        for ctx in contexts:
            flow = ctx.get(ValueFlow)
            for call in ctx.nodes.of(cst.Call):
                name = ctx.qualified_name(call.func) or ""
                if name.partition(".")[0] not in packages or not name.endswith(constructor):
                    continue
                arg = argument(call, -1, keyword)
                if arg is None:
                    continue
                constants = list(flow.values(arg.value).constants())
                if constants:
                    seen.update(reads_fp16(c) for c in constants)
        if True in seen:
            return "fp16"
        return "other" if seen else "unknown"


def _lightning_fp16(value: object) -> bool:
    return str(value) in LIGHTNING_FP16


def _hf_fp16(value: object) -> bool:
    return value is True


def move_to_optimizer_step_hook(ctx: FileContext, hook: ScaledHook) -> Fix | None:
    """Rename ``on_after_backward(self)`` to ``on_before_optimizer_step(self, optimizer)``: the
    same code, run once the precision plugin has unscaled the gradients (unsafe: it runs later,
    once per optimizer step). None when the class (or a base in the project) already has that
    hook, or the hook is called by name."""
    if hook.framework != "Lightning" or hook.hook.name.value != "on_after_backward":
        return None
    params = hook.hook.params
    if len(params.params) != 1 or isinstance(params.star_arg, (cst.Param, cst.ParamStar)) or params.kwonly_params or params.star_kwarg is not None or params.posonly_params:
        return None
    flow = ctx.get(ValueFlow)
    if flow.method_of(flow.qualified_of(hook.cls), "on_before_optimizer_step") is not None:
        return None
    if any(isinstance(a.attr, cst.Name) and a.attr.value == "on_after_backward" for a in ctx.nodes.of(cst.Attribute)):
        return None
    receiver = params.params[0].name.value
    edits = [ctx.replace(hook.hook.name, "on_before_optimizer_step"), ctx.replace(params, f"{receiver}, optimizer")]
    return ctx.fix(edits, "unsafe", "Rename the hook to `on_before_optimizer_step(self, optimizer)`")
