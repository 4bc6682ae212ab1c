"""What holds at each event of a step, on every path, this iteration and the next: which
gradients still carry a GradScaler's scale, which optimizers were unscaled since their scaler's
``update()``, whose gradients were added to since they were last cleared, whether this iteration
skipped its step. One fold (``flow.py``) computes it for all rules: ``step.states``.

The facts follow the GradScaler's own bookkeeping: ``unscale_(opt)`` and ``step(opt)`` mark the
optimizer until ``update()`` forgets every mark (a second ``unscale_`` before it raises), and
``zero_grad`` is the only thing that drops accumulated gradients (a step applies them, it does
not clear them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

from trainlint.analysis.training_step.events import (
    BACKWARD_KINDS,
    STEP_KINDS,
    EventKind,
    StepEvent,
)
from trainlint.analysis.training_step.graph import clears_gradients_of

if TYPE_CHECKING:
    from trainlint.analysis.training_step.flow import Fold
    from trainlint.analysis.training_step.graph import TrainingStep


@dataclass(frozen=True)
class StepState:
    """The facts on one path at one point."""

    # Scaled backwards (of known scalers, or of a framework object that scales under float16)
    # whose gradients no `unscale_`/`scaler.step` of their scaler (the framework's clip or its
    # optimizer's step) and no `zero_grad` has touched since; a later scaled backward of the
    # same scaler takes over from an earlier one.
    scaled: frozenset[StepEvent] = frozenset()
    # Known scalers that scaled a backward since their last update().
    pending_update: frozenset[str] = frozenset()
    # `unscale_(opt)` and `scaler.step(opt)` calls of known scalers since their scaler's update().
    unscaled: frozenset[StepEvent] = frozenset()
    # Optimizers whose gradients a backward added to since their last zero_grad.
    uncleared: frozenset[str] = frozenset()
    # A backward ran on this iteration.
    backward_seen: bool = False
    # Optimizers stepped since the last backward (their gradients were applied).
    applied: frozenset[str] = frozenset()
    # Optimizers stepped since their gradients were last cleared: a step of one of these applies
    # gradients a step already applied (they are summed into the new ones).
    stepped_uncleared: frozenset[str] = frozenset()
    # The skip this iteration took (a `continue`, `return`, or a branch on a check that leaves
    # the step out), None when it took none.
    skip: StepEvent | None = None
    # What was uncleared when that skip happened and has not been cleared since (gradients a later
    # backward adds are that backward's, not the skip's).
    uncleared_at_skip: frozenset[str] = frozenset()
    # Gradients an earlier iteration's skip left behind, per optimizer, not cleared since.
    left_by_skip: frozenset[tuple[str, StepEvent]] = frozenset()
    # The iteration before this one took a skip (what it left is the skip's doing).
    after_skip: bool = False

    def unscaled_of(self, scaler: str | None, optimizer: str | None) -> list[StepEvent]:
        return [e for e in self.unscaled if e.kind is EventKind.UNSCALE and e.scaler == scaler and e.optimizer == optimizer]


def scaling_owner(backward: StepEvent) -> str | None:
    """Who scaled a backward's loss: its GradScaler, or the framework object (``accelerator``)."""
    return backward.framework.owner if backward.framework is not None else backward.scaler


class StepStates:
    """The facts before each event of one step (``step.states``)."""

    def __init__(self, step: TrainingStep) -> None:
        self.step = step

    @cached_property
    def _fold(self) -> Fold[StepState]:
        return self.step.flow.fold(StepState(), self._transfer, next_iteration=True, carry=self._carry)

    def before(self, event: StepEvent) -> set[StepState]:
        """The states the event can run in on an iteration that starts fresh (nothing unscaled,
        scaled or left over)."""
        return self._fold.before(event)

    def before_next(self, event: StepEvent) -> set[StepState]:
        """The states the event can run in on the iteration after one that ran: what that one
        left (an `unscale_` without `update()`, gradients it did not clear) is still there."""
        return self._fold.before_next(event)

    def ends(self) -> set[tuple[StepState, str | None]]:
        """The states a first iteration ends in, and how it ended (None: the end of the body)."""
        return self._fold.ends

    def _transfer(self, state: StepState, event: StepEvent) -> StepState:
        kind = event.kind
        known_scaler = self.step.scaler_of(event) is not None
        if kind is EventKind.SCALED_BACKWARD and known_scaler and not event.partly_scaled:
            kept = frozenset(b for b in state.scaled if b.scaler != event.scaler)
            state = replace(state, scaled=kept | {event}, pending_update=state.pending_update | {event.scaler})
        elif kind is EventKind.FRAMEWORK_BACKWARD and event.framework is not None:
            kept = frozenset(b for b in state.scaled if scaling_owner(b) != event.framework.owner)
            state = replace(state, scaled=kept | {event})
        if kind in BACKWARD_KINDS:
            return replace(state, uncleared=frozenset(self.step.optimizers), applied=frozenset(), backward_seen=True)
        if kind in (EventKind.UNSCALE, EventKind.SCALER_STEP):
            scaled = frozenset(b for b in state.scaled if scaling_owner(b) != event.scaler)
            unscaled = state.unscaled | {event} if known_scaler else state.unscaled
            state = replace(state, scaled=scaled, unscaled=unscaled)
        if kind is EventKind.SCALER_UPDATE:
            return replace(
                state,
                unscaled=frozenset(e for e in state.unscaled if e.scaler != event.scaler),
                pending_update=state.pending_update - {event.scaler},
            )
        if kind is EventKind.OPT_STEP:  # a framework's wrapped optimizer unscales before it steps
            state = replace(state, scaled=frozenset(b for b in state.scaled if b.framework is None))
        if kind in STEP_KINDS and event.optimizer is not None:
            return replace(
                state,
                applied=state.applied | {event.optimizer},
                stepped_uncleared=state.stepped_uncleared | {event.optimizer},
            )
        if kind is EventKind.ZERO_GRAD:
            # a zero_grad of a name the step does not know as an optimizer may be an alias of one
            alias = event.optimizer is not None and event.optimizer not in self.step.optimizers
            return replace(
                state,
                scaled=frozenset(),
                uncleared=frozenset(o for o in state.uncleared if not clears_gradients_of(event, o)),
                stepped_uncleared=frozenset(
                    o for o in state.stepped_uncleared if not (alias or clears_gradients_of(event, o))
                ),
                left_by_skip=frozenset(p for p in state.left_by_skip if not clears_gradients_of(event, p[0])),
                uncleared_at_skip=frozenset(o for o in state.uncleared_at_skip if not clears_gradients_of(event, o)),
            )
        if kind is EventKind.SKIP and state.skip is None:
            return replace(state, skip=event, uncleared_at_skip=state.uncleared)
        return state

    def _carry(self, state: StepState) -> StepState:
        """Into the next iteration: what the skip left uncleared of the optimizers it skipped."""
        left = state.left_by_skip
        if state.skip is not None:
            bypassed = {e.optimizer for e in state.skip.bypassed if e.kind in STEP_KINDS}
            left |= {(o, state.skip) for o in state.uncleared_at_skip - state.applied if o in bypassed}
        return replace(
            state, skip=None, uncleared_at_skip=frozenset(), left_by_skip=left, after_skip=state.skip is not None,
            backward_seen=False,
        )


@dataclass(frozen=True)
class Feed:
    """On one path, the backwards whose gradients an optimizer step applies, and the optimizers
    unscaled since the last backward (None: an `unscale_` of an unknown optimizer)."""

    backwards: tuple[StepEvent, ...]
    unscaled: frozenset[str | None]


@dataclass(frozen=True)
class _Feeding:
    pending: tuple[StepEvent, ...] = ()  # backwards since the last group of steps
    group: tuple[StepEvent, ...] = ()  # backwards feeding the current group of steps
    in_group: bool = False  # the last gradient event was a step: the next step shares its backwards
    cleared: frozenset[tuple[StepEvent, StepEvent]] = frozenset()  # (backward, a zero_grad after it)
    unscaled: frozenset[str | None] = frozenset()

    def advance(self, event: StepEvent) -> _Feeding:
        if event.kind in BACKWARD_KINDS:
            return replace(self, pending=(*self.pending, event), in_group=False, unscaled=frozenset())
        if event.kind in STEP_KINDS and not self.in_group:
            return replace(self, group=self.pending, pending=(), in_group=True)
        if event.kind is EventKind.ZERO_GRAD:
            live = (*self.pending, *self.group)
            return replace(self, cleared=self.cleared | {(b, event) for b in live})
        if event.kind is EventKind.UNSCALE:
            return replace(self, unscaled=self.unscaled | {event.optimizer})
        return self

    def feed(self, step_event: StepEvent) -> Feed:
        """What the step event (already advanced over) applies."""
        backwards = tuple(
            b for b in self.group if not any(c is b and clears_gradients_of(z, step_event.optimizer) for c, z in self.cleared)
        )
        return Feed(backwards, self.unscaled)


class Feeding:
    """For each optimizer step (``opt.step()`` or ``scaler.step(opt)``), the backwards whose
    gradients it applies, on every path (``step.feeding``). Steps that follow each other share
    the backwards before them (``scaler.step(opt_d)``, ``scaler.step(opt_g)`` after two
    backwards); a backward that an earlier group of steps applied does not feed a later one; a
    zero_grad of the optimizer drops the backwards before it."""

    def __init__(self, step: TrainingStep) -> None:
        self.step = step
        self._feeds: dict[int, set[Feed]] = {}

        def transfer(state: _Feeding, event: StepEvent) -> _Feeding:
            state = state.advance(event)
            if event.kind in STEP_KINDS:
                self._feeds.setdefault(id(event), set()).add(state.feed(event))
            return state

        step.flow.fold(_Feeding(), transfer)

    def of(self, event: StepEvent) -> set[Feed]:
        return self._feeds.get(id(event), set())


def backwards_feeding(path: list[StepEvent]) -> dict[StepEvent, list[StepEvent]]:
    """``Feeding`` along one given sequence of events."""
    feeding: dict[StepEvent, list[StepEvent]] = {}
    state = _Feeding()
    for event in path:
        state = state.advance(event)
        if event.kind in STEP_KINDS:
            feeding[event] = list(state.feed(event).backwards)
    return feeding
