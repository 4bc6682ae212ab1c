"""Did this run show what a rule's fix changes, and by how much?

``trainlint confirm`` on a user's script runs the code as written and as fixed. For each fixed
finding, the rule's effects (declared by its example in ``examples/``, ``CONFIRM["effects"]``)
are measured between the two runs, optimizer by optimizer:

* ``confirmed``: the original shows the effect and the fixed run does not, by this much;
* ``not reproduced``: the original does not show it in this many steps on this device (the
  example's ``shows_with`` says what would: more steps, a GPU, float16);
* ``not confirmed``: the original shows it and the fixed run still does.

The two runs have the same seed, so their first losses are the same and every difference after
that comes from the code. Several fixes in one run share the measurement: each is judged on the
same pair of runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trainlint.runtime.report import HealthReport, OptimizerReport, format_number

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
NOT_REPRODUCED = "not reproduced"
# A gradient norm this many times larger or smaller is on another scale, not noise.
SCALE_FACTOR = 10.0
# A loss ratio (last / first) this much lower is the fix making training progress.
LOSS_RATIO_MARGIN = 0.05
# Memory growing by this many MiB per step, step after step, is something kept, not noise.
MEMORY_GROWTH_MB = 0.1


@dataclass
class Numbers:
    """What the effects compare: one optimizer's numbers, with its run's."""

    label: str
    iterations: int
    steps_run: int
    steps_applied: int
    steps_skipped: int
    grad_median: float | None
    first_layer: float | None
    loss_first: float | None
    loss_last: float | None
    loss_trend: str | None
    nonfinite_losses: int
    nonfinite_weights_step: int | None
    nonfinite_grads_applied: int
    exception: str | None
    scale_first: float | None
    scale_last: float | None
    memory_growth_mb: float | None = None  # the run's, per step (report.memory_growth)

    @property
    def applied_fraction(self) -> float:
        return self.steps_applied / self.iterations if self.iterations else 0.0

    @property
    def loss_ratio(self) -> float | None:
        if not self.loss_first or self.loss_last is None or not math.isfinite(self.loss_last):
            return None
        return self.loss_last / self.loss_first


def numbers(report: HealthReport) -> list[Numbers]:
    """One view per optimizer that stepped; one of the whole run when none did."""
    if not report.optimizers:
        return [_view(report, None)]
    return [_view(report, o) for o in report.optimizers]


def _view(report: HealthReport, o: OptimizerReport | None) -> Numbers:
    return Numbers(
        label=o.label if o else "",
        iterations=report.iterations,
        steps_run=o.steps_run if o else 0,
        steps_applied=o.steps_applied if o else 0,
        steps_skipped=o.steps_skipped if o else 0,
        grad_median=o.grad_norm["p50"] if o else None,
        first_layer=o.first_layer_grad if o else None,
        loss_first=o.loss_first if o else report.loss_first,
        loss_last=o.loss_last if o else report.loss_last,
        loss_trend=o.loss_trend if o else None,
        nonfinite_losses=report.nonfinite_losses,
        nonfinite_weights_step=o.first_nonfinite_weights_step if o else None,
        nonfinite_grads_applied=o.nonfinite_grad_steps_applied if o else 0,
        exception=report.exception,
        scale_first=report.scale_first,
        scale_last=report.scale_last,
        memory_growth_mb=report.memory_growth_mb,
    )


@dataclass
class Judgement:
    status: str  # CONFIRMED, NOT_CONFIRMED or NOT_REPRODUCED
    detail: str  # by how much, or what the original showed


Judge = Callable[[Numbers, Numbers], Judgement]


def _exception(o: Numbers, f: Numbers) -> Judgement:
    if not o.exception:
        return Judgement(NOT_REPRODUCED, f"the original ran {o.steps_run} steps without raising")
    if f.exception:
        return Judgement(NOT_CONFIRMED, f"the original raised {o.exception}; the fixed code raised {f.exception}")
    return Judgement(CONFIRMED, f"the original raised {o.exception}; the fixed code ran {f.steps_run} steps without")


def _steps_applied(o: Numbers, f: Numbers) -> Judgement:
    text = f"steps applied {o.steps_applied}/{o.iterations} backward passes -> {f.steps_applied}/{f.iterations}"
    gained = f.applied_fraction - o.applied_fraction
    if gained >= 0.05 and f.applied_fraction >= 1.1 * o.applied_fraction:
        return Judgement(CONFIRMED, text)
    lost = o.steps_applied < o.steps_run or (o.steps_run == 0 and o.iterations > 0)
    if lost:
        return Judgement(NOT_CONFIRMED, text)
    return Judgement(NOT_REPRODUCED, f"the original applied every step ({o.steps_applied}/{o.steps_run})")


def _skips(o: Numbers, f: Numbers) -> Judgement:
    text = f"steps skipped by the GradScaler {o.steps_skipped}/{o.steps_run} -> {f.steps_skipped}/{f.steps_run}"
    skipped_o = o.steps_skipped / o.steps_run if o.steps_run else 0.0
    skipped_f = f.steps_skipped / f.steps_run if f.steps_run else 0.0
    if skipped_o < 0.25:
        return Judgement(NOT_REPRODUCED, f"the GradScaler skipped {o.steps_skipped}/{o.steps_run} steps in the original")
    return Judgement(CONFIRMED if skipped_f <= skipped_o / 2 else NOT_CONFIRMED, text)


def _scale_backoff(o: Numbers, f: Numbers) -> Judgement:
    if o.scale_first is None or not o.steps_skipped:
        return Judgement(NOT_REPRODUCED, "the GradScaler skipped no step in the original")
    text = (
        f"GradScaler scale {format_number(o.scale_first)} -> {format_number(o.scale_last)} with "
        f"{o.steps_skipped} steps skipped, fixed {format_number(f.scale_first)} -> {format_number(f.scale_last)} "
        f"with {f.steps_skipped}"
    )
    backed_off = f.scale_first is not None and f.scale_last is not None and f.scale_last < f.scale_first
    stuck = o.scale_last is not None and o.scale_last >= o.scale_first
    if stuck and (backed_off or f.steps_skipped < o.steps_skipped):
        return Judgement(CONFIRMED, text)
    return Judgement(NOT_CONFIRMED if stuck else NOT_REPRODUCED, text)


def _grad_scale(metric: str, larger: bool, suspicious: float) -> Judge:
    """The fix puts a gradient norm on another scale: ``larger`` (vanishing before) or smaller."""
    name = "gradient norm median" if metric == "grad_median" else "first-layer gradient"

    def judge(o: Numbers, f: Numbers) -> Judgement:
        before, after = getattr(o, metric), getattr(f, metric)
        if not before or not after:
            return Judgement(NOT_REPRODUCED, f"no {name} to compare ({format_number(before)} -> {format_number(after)})")
        ratio = after / before if larger else before / after
        text = f"{name} {format_number(before)} -> {format_number(after)} ({format_number(ratio)}x {'larger' if larger else 'smaller'})"
        if ratio >= SCALE_FACTOR:
            return Judgement(CONFIRMED, text)
        off_scale = before <= suspicious if larger else before >= suspicious
        if off_scale:
            return Judgement(NOT_CONFIRMED, text)
        return Judgement(NOT_REPRODUCED, f"{name} on the same scale in both runs ({format_number(before)} -> {format_number(after)})")

    return judge


def _finite(o: Numbers, f: Numbers) -> Judgement:
    text = f"non-finite losses {o.nonfinite_losses}/{o.iterations} -> {f.nonfinite_losses}/{f.iterations}"
    if o.nonfinite_weights_step is not None:
        weights = "finite" if f.nonfinite_weights_step is None else f"NaN/Inf from step {f.nonfinite_weights_step}"
        text += f", weights NaN/Inf from step {o.nonfinite_weights_step} -> {weights}"
    shown = o.nonfinite_losses or o.nonfinite_weights_step is not None or o.nonfinite_grads_applied
    if not shown:
        return Judgement(NOT_REPRODUCED, "no non-finite loss, gradient or weight in the original")
    fewer = f.nonfinite_losses < o.nonfinite_losses or (o.nonfinite_losses == 0 and f.nonfinite_grads_applied < o.nonfinite_grads_applied)
    healed = f.nonfinite_weights_step is None and (fewer or o.nonfinite_weights_step is not None)
    return Judgement(CONFIRMED if healed else NOT_CONFIRMED, text)


def _loss_falls(o: Numbers, f: Numbers) -> Judgement:
    ro, rf = o.loss_ratio, f.loss_ratio
    text = (
        f"loss {format_number(o.loss_first)} -> {format_number(o.loss_last)} ({o.loss_trend or 'no step'}), "
        f"fixed {format_number(f.loss_first)} -> {format_number(f.loss_last)} ({f.loss_trend or 'no step'})"
    )
    if rf is None:
        return Judgement(NOT_CONFIRMED if ro is None and o.loss_first is not None else NOT_REPRODUCED, text)
    if f.loss_trend == "fell" and (ro is None or rf < ro - LOSS_RATIO_MARGIN):
        return Judgement(CONFIRMED, text)
    if o.loss_trend != "fell" or (ro is not None and ro > rf + LOSS_RATIO_MARGIN):
        return Judgement(NOT_CONFIRMED, text)
    return Judgement(NOT_REPRODUCED, f"the loss fell at least as much in the original ({text})")


def _memory_flat(o: Numbers, f: Numbers) -> Judgement:
    """The fix stops the memory from growing step after step (a graph kept across iterations)."""
    before, after = o.memory_growth_mb, f.memory_growth_mb
    if before is None or after is None:
        return Judgement(NOT_REPRODUCED, "memory was not measured at the steps")
    text = f"memory +{format_number(before * 1024)} KiB per step -> +{format_number(after * 1024)} KiB per step"
    if before < MEMORY_GROWTH_MB:
        return Judgement(NOT_REPRODUCED, f"the original's memory grew by {format_number(before * 1024)} KiB per step")
    return Judgement(CONFIRMED if after <= before / 4 else NOT_CONFIRMED, text)


def _data_per_rank(o: Numbers, f: Numbers) -> Judgement:
    """What each rank's sampler draws is not recorded: said plainly, never guessed from the loss."""
    return Judgement(
        NOT_REPRODUCED,
        "the samples each rank draws are not recorded; benchmarks/loop_rules_evidence.py measures "
        "their overlap across two gloo ranks and the order repeated without set_epoch",
    )


EFFECTS: dict[str, Judge] = {
    "exception": _exception,
    "steps_applied": _steps_applied,
    "skips": _skips,
    "scale_backoff": _scale_backoff,
    "grad_norm_larger": _grad_scale("grad_median", larger=True, suspicious=1e-4),
    "grad_norm_smaller": _grad_scale("grad_median", larger=False, suspicious=1e3),
    "first_layer_grad_larger": _grad_scale("first_layer", larger=True, suspicious=1e-6),
    "finite": _finite,
    "loss_falls": _loss_falls,
    "memory_flat": _memory_flat,
    "data_per_rank": _data_per_rank,
}


def judge_effects(effects: Sequence[str], original: HealthReport, fixed: HealthReport) -> Judgement:
    """The verdict over every effect and every optimizer: confirmed if any shows the fix working,
    not confirmed if the original shows an effect the fixed run keeps, else not reproduced."""
    pairs = _pairs(numbers(original), numbers(fixed))
    several = len(pairs) > 1
    found: dict[str, list[str]] = {CONFIRMED: [], NOT_CONFIRMED: [], NOT_REPRODUCED: []}
    for effect in effects:
        for o, f in pairs:
            judgement = EFFECTS[effect](o, f)
            prefix = f"{o.label}: " if several and effect != "exception" else ""
            if prefix + judgement.detail not in found[judgement.status]:
                found[judgement.status].append(prefix + judgement.detail)
    for status in (CONFIRMED, NOT_CONFIRMED, NOT_REPRODUCED):
        if found[status]:
            return Judgement(status, "; ".join(found[status]))
    return Judgement(NOT_REPRODUCED, "nothing to compare")


def _pairs(original: list[Numbers], fixed: list[Numbers]) -> list[tuple[Numbers, Numbers]]:
    """Optimizers matched by label, else by position."""
    by_label = {n.label: n for n in fixed}
    if all(o.label in by_label for o in original):
        return [(o, by_label[o.label]) for o in original]
    return list(zip(original, fixed)) or [(original[0], fixed[0])]


def worse_than(original: HealthReport, fixed: HealthReport) -> list[str]:
    """How the fixed run is worse than the original, if it is."""
    worse = []
    if fixed.exception and not original.exception:
        worse.append(f"the fixed run raised {fixed.exception}")
    if fixed.nonfinite_losses > original.nonfinite_losses:
        worse.append(f"more non-finite losses ({original.nonfinite_losses} -> {fixed.nonfinite_losses})")
    if fixed.first_nonfinite_weights_step is not None and original.first_nonfinite_weights_step is None:
        worse.append(f"non-finite weights from step {fixed.first_nonfinite_weights_step}")
    if original.healthy and not fixed.healthy:
        worse.append("the fixed run is unhealthy: " + "; ".join(fixed.reasons))
    return worse
