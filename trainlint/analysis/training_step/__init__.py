"""What a training step does, in what order, on which optimizer and which GradScaler, on every
path through it and across its loop's back edge.

One ``TrainingStep`` per function or method that runs a backward or an optimizer step itself
(and one for a script's top-level training loop). Its events (backward, ``scaler.unscale_``,
gradient inspections, clipping, ``scaler.step``, ``opt.step``, ``scaler.update``, ``zero_grad``,
skips) are listed in source order, with calls to helpers of the same module inlined where they
are called. When a loop repeats the step (``for batch in loader:``), the step is that loop's body.

A skip is a ``continue``/``return``/``break`` that bypasses part of the step, or the side of an
``if`` on a NaN/Inf or gradient test (directly, or through a flag such as ``skip_step`` set by
one) that leaves out a step or update the other side runs.

The parts: ``events`` (what is recorded), ``syntax`` (small questions about code),
``receivers`` (what a receiver is: a GradScaler, an optimizer, asked of the value-flow engine),
``builder`` (a function's body to items), ``graph`` (the items' control flow and
``TrainingStep``), ``steps`` (which functions are steps; skips), ``flow`` (folding a state along
every path, this iteration and the next, without listing paths), ``dataflow`` (the facts rules
ask: ``step.states``, ``step.feeding``), ``fixes`` (edits the step rules share).

Scalers are told apart by how they were made: a ``GradScaler`` constructor (any import path or
alias; ``enabled=False`` written literally makes it no scaler at all), a parameter or an
attribute named like a scaler that is used like one. A receiver used like a scaler but made by an
unknown call is *uncertain*: its events are listed, it is not in ``TrainingStep.scalers``, and
rules stay quiet about it.

API (stable; extended, never renamed): ``EventKind``, ``StepEvent``, ``SkipGuard``,
``ScalerInfo``, ``OptimizerInfo``, ``TrainingStep``, ``TrainingSteps`` (``ctx.get(TrainingSteps)``;
``all_steps()`` includes the script's top-level loop), ``TrainingStep.states`` (``StepState``
before each event, this iteration and the next), ``TrainingStep.feeding`` (the backwards each
optimizer step applies), ``TrainingStep.flow`` (``fold`` your own state; ``after`` an event), the
kind sets ``BACKWARD_KINDS`` and ``STEP_KINDS``, ``clears_gradients_of``, ``backwards_feeding``,
``in_helper`` for messages, and for fixes ``unscale_insertion``, ``skip_insertion``,
``statement_in_step`` and ``removal_edit``. ``TrainingStep.paths()`` lists paths for tests only.
"""

from __future__ import annotations

from trainlint.analysis.training_step.dataflow import (
    Feed,
    Feeding,
    StepState,
    StepStates,
    backwards_feeding,
    scaling_owner,
)
from trainlint.analysis.training_step.framework import FrameworkSteps, ScaledHook, move_to_optimizer_step_hook
from trainlint.analysis.training_step.events import (
    BACKWARD_KINDS,
    CLIP_FUNCTIONS,
    CORE_KINDS,
    GRAD_SCALER_CONSTRUCTORS,
    STEP_KINDS,
    EventKind,
    OptimizerInfo,
    ScalerInfo,
    FrameworkScaling,
    SkipGuard,
    StepEvent,
)
from trainlint.analysis.training_step.fixes import (
    removal_edit,
    skip_insertion,
    statement_in_step,
    unscale_insertion,
)
from trainlint.analysis.training_step.graph import (
    TrainingStep,
    clears_gradients_of,
    in_helper,
    runs_a_closure,
    scale_text,
)
from trainlint.analysis.training_step.steps import TrainingSteps

__all__ = [
    "BACKWARD_KINDS",
    "CLIP_FUNCTIONS",
    "CORE_KINDS",
    "GRAD_SCALER_CONSTRUCTORS",
    "STEP_KINDS",
    "EventKind",
    "Feed",
    "Feeding",
    "FrameworkScaling",
    "FrameworkSteps",
    "OptimizerInfo",
    "ScaledHook",
    "ScalerInfo",
    "SkipGuard",
    "StepEvent",
    "StepState",
    "StepStates",
    "TrainingStep",
    "TrainingSteps",
    "backwards_feeding",
    "clears_gradients_of",
    "in_helper",
    "move_to_optimizer_step_hook",
    "removal_edit",
    "runs_a_closure",
    "scale_text",
    "scaling_owner",
    "skip_insertion",
    "statement_in_step",
    "unscale_insertion",
]
