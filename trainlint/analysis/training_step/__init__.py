"""What a training step does, in what order, on which optimizer and which GradScaler.

One ``TrainingStep`` per function or method that runs a backward or an optimizer step itself.
Its events (backward, ``scaler.unscale_``, gradient inspections, clipping, ``scaler.step``,
``opt.step``, ``scaler.update``, ``zero_grad``, early ``continue``/``return``) are listed in source
order, with calls to helpers defined in the same module inlined where they are called, and
``paths()`` walks them through ``if``/``else``, ``try``, ``match`` and loops so that two calls in
exclusive branches are never seen together. Rules ask this analysis; they never walk the tree
for these facts themselves.

When a loop repeats the step (``for batch in loader:`` around the backward and the optimizer
step), the step is that loop's body: a ``continue`` or ``break`` of that loop, or a ``return``,
that bypasses part of the step is a SKIP event and ends its path.

Scalers are told apart by how they were made: a ``GradScaler`` constructor (any import path or
alias; ``enabled=False`` written literally makes it no scaler at all), a parameter or an
attribute named like a scaler that is used like one. A receiver used like a scaler but made by an
unknown call is *uncertain*: its events are listed, it is not in ``TrainingStep.scalers``, and
rules stay quiet about it.

API (stable; extended, never renamed): ``EventKind``, ``StepEvent``, ``SkipGuard``,
``ScalerInfo``, ``OptimizerInfo``, ``TrainingStep``, ``TrainingSteps`` (``ctx.get(TrainingSteps)``;
``all_steps()`` includes the script's top-level loop), the kind sets ``BACKWARD_KINDS`` and
``STEP_KINDS``, path facts ``backwards_feeding``, ``events_after``, ``clears_gradients_of``,
``TrainingStep.paths_through``, ``in_helper`` for messages, and for fixes
``unscale_insertion``, ``statement_in_step`` and ``removal_edit``.
"""

from __future__ import annotations

from trainlint.analysis.training_step.events import (
    BACKWARD_KINDS,
    CLIP_FUNCTIONS,
    CORE_KINDS,
    GRAD_SCALER_CONSTRUCTORS,
    MAX_PATHS,
    STEP_KINDS,
    EventKind,
    OptimizerInfo,
    ScalerInfo,
    SkipGuard,
    StepEvent,
)
from trainlint.analysis.training_step.fixes import removal_edit, statement_in_step, unscale_insertion
from trainlint.analysis.training_step.graph import (
    TrainingStep,
    backwards_feeding,
    clears_gradients_of,
    events_after,
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
    "MAX_PATHS",
    "STEP_KINDS",
    "EventKind",
    "OptimizerInfo",
    "ScalerInfo",
    "SkipGuard",
    "StepEvent",
    "TrainingStep",
    "TrainingSteps",
    "backwards_feeding",
    "clears_gradients_of",
    "events_after",
    "in_helper",
    "removal_edit",
    "runs_a_closure",
    "scale_text",
    "statement_in_step",
    "unscale_insertion",
]
