"""The health report: what a record says about the training it watched, and a verdict.

Each optimizer is judged on its own steps (a GAN's discriminator and generator, an actor and a
critic): its own loss, gradient norms, steps and skips. Printed as a table, written as JSON,
drawn as a PNG (``plot``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainlint.runtime.records import Record, StepRecord, json_safe

# More than this fraction of steps skipped by the GradScaler is not the warm-up it does when its
# initial scale is too high (a handful of steps), it is a scale that never settles.
SKIPPED_FRACTION_LIMIT = 0.25
# A gradient norm this many times the median of the steps before it is a spike.
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
# Fewer losses than this say too little about whether training makes progress.
MIN_LOSSES_FOR_TREND = 10
# The loss fell or rose when the end of the run is more than this fraction away from the first loss;
# closer than that it is flat: no progress worth the name, whatever the last digits say.
LOSS_FLAT_TOLERANCE = 0.01
# A loss that ends this far above the first is a run going wrong, not minibatch noise.
LOSS_RISE_LIMIT = 0.10


@dataclass
class OptimizerReport:
    """One optimizer's steps: its loss (the losses that fed its steps), gradients and skips."""

    label: str
    steps_run: int
    steps_skipped: int
    losses: int  # steps with a loss
    loss_first: float | None
    loss_last: float | None
    loss_trend: str | None  # "fell", "flat", "rose", "non-finite"; None without an applied step
    grad_norm: dict[str, float | None]  # p50, p90, p99, max over steps with a finite norm
    first_layer_grad: float | None  # median over applied steps
    spikes: list[int]
    nonfinite_grad_steps: int
    nonfinite_grad_steps_applied: int
    first_nonfinite_weights_step: int | None
    first_layer_zero_grad: float | None = None  # median fraction of the first gradient's entries that are 0

    @property
    def steps_applied(self) -> int:
        return self.steps_run - self.steps_skipped

    @property
    def loss_fell(self) -> bool | None:
        return None if self.loss_trend is None else self.loss_trend == "fell"


@dataclass
class HealthReport:
    verdict: str  # "healthy" or "unhealthy"
    reasons: list[str]
    warnings: list[str]
    notes: list[str]
    exception: str | None
    ending: str  # how the run ended, in words
    iterations: int  # backward calls
    steps_run: int  # optimizer steps, every optimizer, including those the GradScaler skipped
    steps_skipped: int
    scaler_used: bool
    scale_first: float | None
    scale_last: float | None
    nonfinite_losses: int
    nonfinite_grad_steps: int
    nonfinite_grad_steps_applied: int
    first_nonfinite_weights_step: int | None
    grad_norm: dict[str, float | None]  # over every step of every optimizer
    first_layer_grad: float | None
    spikes: list[int]
    loss_first: float | None  # the optimizer's, when there is one; None with several
    loss_last: float | None
    loss_trend: str | None
    loss_fell: bool | None
    stopped_at_limit: bool
    wall_time_s: float
    optimizers: list[OptimizerReport] = field(default_factory=list)
    other_ranks: list[str] = field(default_factory=list)
    memory_growth_mb: float | None = None  # MiB per step over the run's second half (memory_growth)
    first_layer_zero_grad: float | None = None  # median over applied steps: see OptimizerReport

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    @property
    def steps_applied(self) -> int:
        return self.steps_run - self.steps_skipped

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps_applied"] = self.steps_applied
        for optimizer, report in zip(data["optimizers"], self.optimizers):
            optimizer["steps_applied"], optimizer["loss_fell"] = report.steps_applied, report.loss_fell
        return json_safe(data)


# --------------------------------------------------------------------------------------------
# From record to report


def summarize(record: Record) -> HealthReport:
    steps = record.steps
    per_optimizer = [
        summarize_optimizer(o.label, record.steps_of(i)) for i, o in enumerate(record.optimizers) if record.steps_of(i)
    ]
    applied = [s for s in steps if not s.skipped]
    scales = [s.scale for s in steps if s.scale is not None]
    only = per_optimizer[0] if len(per_optimizer) == 1 else None
    loss_first, loss_last, trend = _run_loss(record, only)
    report = HealthReport(
        verdict="healthy",
        reasons=[],
        warnings=[],
        notes=list(record.notes),
        exception=None if record.exception is None else str(record.exception),
        ending=describe_ending(record),
        iterations=record.backward_calls,
        steps_run=len(steps),
        steps_skipped=sum(s.skipped for s in steps),
        scaler_used=bool(scales) or any(s.enabled for s in record.scalers),
        scale_first=scales[0] if scales else None,
        scale_last=scales[-1] if scales else None,
        nonfinite_losses=sum(not math.isfinite(v) for v in record.backward_losses),
        nonfinite_grad_steps=sum(s.nonfinite_grads > 0 for s in steps),
        nonfinite_grad_steps_applied=sum(s.nonfinite_grads > 0 for s in applied),
        first_nonfinite_weights_step=next((s.index for s in steps if s.nonfinite_params), None),
        grad_norm=_percentiles([s.grad_norm for s in steps if math.isfinite(s.grad_norm)]),
        first_layer_grad=_median([s.first_grad_norm for s in applied if math.isfinite(s.first_grad_norm)]),
        first_layer_zero_grad=_zero_fraction(applied),
        spikes=sorted(i for o in per_optimizer for i in o.spikes),
        loss_first=loss_first,
        loss_last=loss_last,
        loss_trend=trend,
        loss_fell=None if trend is None else trend == "fell",
        stopped_at_limit=record.stopped_at_limit,
        wall_time_s=record.wall_time_s,
        optimizers=per_optimizer,
        memory_growth_mb=memory_growth(steps),
    )
    report.reasons = _reasons(report, record)
    report.warnings = _warnings(report, record)
    report.verdict = "unhealthy" if report.reasons else "healthy"
    return report


def memory_growth(steps: Sequence[StepRecord]) -> float | None:
    """How much the memory held grew per step over the second half of the run, in MiB: the
    first steps allocate the optimizer's state and the allocator's caches; a graph kept alive
    from one iteration to the next goes on growing after them. None with under 4 steps measured."""
    measured = [(s.index, s.memory_mb) for s in steps if s.memory_mb is not None]
    if len(measured) < 4:
        return None
    (start, before), (end, after) = measured[len(measured) // 2], measured[-1]
    return (after - before) / (end - start) if end > start else None


def summarize_optimizer(label: str, steps: Sequence[StepRecord]) -> OptimizerReport:
    applied = [s for s in steps if not s.skipped]
    losses = [s.loss for s in steps if s.loss is not None]
    first, last = _loss_ends(losses)
    return OptimizerReport(
        label=label,
        steps_run=len(steps),
        steps_skipped=len(steps) - len(applied),
        losses=len(losses),
        loss_first=first,
        loss_last=last,
        loss_trend=_loss_trend(first, last) if applied else None,  # no step applied: no trend
        grad_norm=_percentiles([s.grad_norm for s in steps if math.isfinite(s.grad_norm)]),
        first_layer_grad=_median([s.first_grad_norm for s in applied if math.isfinite(s.first_grad_norm)]),
        spikes=_spikes(steps),
        nonfinite_grad_steps=sum(s.nonfinite_grads > 0 for s in steps),
        nonfinite_grad_steps_applied=sum(s.nonfinite_grads > 0 for s in applied),
        first_nonfinite_weights_step=next((s.index for s in steps if s.nonfinite_params), None),
        first_layer_zero_grad=_zero_fraction(applied),
    )


def _zero_fraction(applied: Sequence[StepRecord]) -> float | None:
    return _median([s.first_zero_grad_fraction for s in applied if s.first_zero_grad_fraction is not None])


def _run_loss(record: Record, only: OptimizerReport | None) -> tuple[float | None, float | None, str | None]:
    """The run's loss: its optimizer's; with no step, the backward passes' (and no trend)."""
    if only is not None:
        return only.loss_first, only.loss_last, only.loss_trend
    if record.steps:
        return None, None, None  # several optimizers: each has its own
    first, last = _loss_ends(record.backward_losses)
    return first, last, None


def steps_done(record: Record) -> int:
    """Steps made by the optimizer that made the fewest (of those that stepped): what --steps counts."""
    counts = [len(record.steps_of(i)) for i in range(len(record.optimizers))]
    return min((c for c in counts if c), default=0)


def describe_ending(record: Record) -> str:
    """How the run ended, in words: "stopped after 10 steps", "the script ended after 5 of 10 steps"."""
    ending = record.ending
    done = steps_done(record)
    of = f" of {ending.steps_wanted}" if ending.steps_wanted else ""
    if ending.stopped_by == "steps":
        text = f"stopped after {done} steps (--steps {ending.steps_wanted})"
    elif ending.stopped_by == "backward passes":
        text = f"stopped after {ending.limit:g} backward passes without an optimizer step"
    elif ending.stopped_by == "seconds":
        text = f"stopped after {ending.limit:g} s (--max-seconds), at step {done}{of}"
    elif record.exception is not None:
        text = f"the script raised after {done}{of} steps"
    else:
        text = f"the script ended after {done}{of} steps"
    if ending.swallowed_stops:
        text += f", caught by the script {ending.swallowed_stops}x"
    return text


def _loss_ends(losses: Sequence[float]) -> tuple[float | None, float | None]:
    """The first finite loss (before any update: the same in runs with the same seed and data),
    and the median of the last tenth of the run, up to 10 losses, as they are (NaN stays NaN;
    a median, so that one hard or easy minibatch does not decide whether the loss fell).
    """
    if not losses:
        return None, None
    k = max(1, min(10, len(losses) // 10))
    first = next((v for v in losses if math.isfinite(v)), None)
    tail = losses[-k:]
    last = statistics.median(tail) if all(math.isfinite(v) for v in tail) else math.nan
    return first, last


def _loss_trend(first: float | None, last: float | None) -> str | None:
    if first is None or last is None:
        return None
    if not math.isfinite(last):
        return "non-finite"
    tolerance = LOSS_FLAT_TOLERANCE * max(abs(first), 1e-12)
    if last < first - tolerance:
        return "fell"
    return "rose" if last > first + tolerance else "flat"


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _spikes(steps: Sequence[StepRecord]) -> list[int]:
    """Steps whose gradient norm is SPIKE_FACTOR times the median of the steps just before."""
    history: list[float] = []
    spikes = []
    for s in steps:
        if not math.isfinite(s.grad_norm):
            continue
        recent = history[-SPIKE_WINDOW:]
        if len(recent) >= SPIKE_MIN_HISTORY and s.grad_norm > SPIKE_FACTOR * statistics.median(recent):
            spikes.append(s.index)
        history.append(s.grad_norm)
    return spikes


def _reasons(report: HealthReport, record: Record) -> list[str]:
    reasons = []
    if report.exception:
        reasons.append(f"raised {report.exception}")
    if report.steps_run == 0 and not report.exception:
        if report.iterations:
            reasons.append(f"{report.iterations} backward passes but no optimizer step")
        else:
            reasons.append("no optimizer step and no backward pass")
    if report.nonfinite_losses:
        reasons.append(f"non-finite loss in {report.nonfinite_losses}/{len(record.backward_losses)} backward passes")
    several = len(report.optimizers) > 1
    for optimizer in report.optimizers:
        prefix = f"{optimizer.label}: " if several else ""
        reasons += [prefix + r for r in _optimizer_reasons(optimizer)]
    return reasons


def _optimizer_reasons(o: OptimizerReport) -> list[str]:
    reasons = []
    if o.steps_skipped and o.steps_skipped > SKIPPED_FRACTION_LIMIT * o.steps_run:
        reasons.append(f"{o.steps_skipped}/{o.steps_run} steps skipped by the GradScaler")
    if o.nonfinite_grad_steps_applied:
        reasons.append(f"{o.nonfinite_grad_steps_applied} steps applied non-finite gradients")
    if o.first_nonfinite_weights_step is not None:
        reasons.append(f"non-finite weights from step {o.first_nonfinite_weights_step}")
    if o.losses >= MIN_LOSSES_FOR_TREND and _rose_too_far(o):
        reasons.append(f"loss rose ({_loss_span(o.loss_first, o.loss_last)})")
    return reasons


def _rose_too_far(o: OptimizerReport) -> bool:
    if o.loss_first is None or o.loss_last is None or o.loss_trend != "rose":
        return False
    return o.loss_last > o.loss_first + LOSS_RISE_LIMIT * abs(o.loss_first)


def _loss_span(first: float | None, last: float | None) -> str:
    return f"{format_number(first)} -> {format_number(last)}"


def _warnings(report: HealthReport, record: Record) -> list[str]:
    warnings = []
    if record.ending.swallowed_stops:
        warnings.append(
            f"the script caught trainlint's stop {record.ending.swallowed_stops} time(s) (a bare `except:` or "
            "`except BaseException:` around the step, which also swallows Ctrl-C); it was stopped again"
        )
    several = len(report.optimizers) > 1
    for optimizer in report.optimizers:
        prefix = f"{optimizer.label}: " if several else ""
        warnings += [prefix + w for w in _optimizer_warnings(optimizer)]
    if any(not s.enabled for s in record.scalers):
        warnings.append("a GradScaler was created disabled: it neither scales nor skips")
    stepped = {s.optimizer for s in record.steps}
    idle = [o.label for i, o in enumerate(record.optimizers) if i not in stepped]
    if idle and record.steps:
        warnings.append(f"optimizers created but never stepped: {', '.join(idle)}")
    return warnings


def _optimizer_warnings(o: OptimizerReport) -> list[str]:
    warnings = []
    if o.spikes:
        shown = ", ".join(str(i) for i in o.spikes[:5]) + (", ..." if len(o.spikes) > 5 else "")
        warnings.append(f"{len(o.spikes)} gradient-norm spikes (>{SPIKE_FACTOR:g}x the running median) at steps {shown}")
    if o.steps_run and o.grad_norm["max"] == 0.0:
        warnings.append("every gradient was zero")
    span = _loss_span(o.loss_first, o.loss_last)
    if o.losses >= MIN_LOSSES_FOR_TREND and o.loss_trend == "flat":
        warnings.append(f"loss flat ({span}, within {LOSS_FLAT_TOLERANCE:.0%} of the first loss)")
    elif o.losses >= MIN_LOSSES_FOR_TREND and o.loss_trend == "rose" and not _rose_too_far(o):
        warnings.append(f"loss rose slightly ({span})")
    return warnings


# --------------------------------------------------------------------------------------------
# Output


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{max(1, digits - 2)}e}"
    return f"{value:.{digits}g}"


def report_rows(report: HealthReport) -> list[tuple[str, str]]:
    """The report as (label, value) rows; the same labels for the same optimizers, so they line up."""
    scale = "-"
    if report.scale_first is not None:
        scale = f"{format_number(report.scale_first)} -> {format_number(report.scale_last)}"
    bad_weights = report.first_nonfinite_weights_step
    rows = [
        ("verdict", report.verdict),
        ("run", _clip(report.ending, 70)),
        ("exception", _clip(report.exception or "-", 60)),
        ("backward passes", str(report.iterations)),
    ]
    if not report.optimizers:
        loss = "-" if report.loss_first is None else f"{_loss_span(report.loss_first, report.loss_last)} (no step)"
        rows += [("optimizer steps", "0 applied / 0"), ("loss", loss)]
    several = len(report.optimizers) > 1
    for optimizer in report.optimizers:
        prefix = f"{optimizer.label}: " if several else ""
        rows += [(prefix + label, value) for label, value in _optimizer_rows(optimizer, report.scaler_used)]
    rows += [
        ("loss scale", scale),
        ("non-finite losses", str(report.nonfinite_losses)),
        ("non-finite weights", "-" if bad_weights is None else f"from step {bad_weights}"),
        ("wall time", f"{report.wall_time_s:.2f} s"),
    ]
    return rows


def _optimizer_rows(o: OptimizerReport, scaler_used: bool) -> list[tuple[str, str]]:
    g = o.grad_norm
    loss = "-"
    if o.loss_first is not None:
        trend = o.loss_trend if o.loss_trend in ("fell", "flat", "rose") else ""
        if o.steps_applied == 0:
            trend = "(no step applied)"
        loss = f"{_loss_span(o.loss_first, o.loss_last)} {trend}".rstrip()
    return [
        ("optimizer steps", f"{o.steps_applied} applied / {o.steps_run}"),
        ("skipped by GradScaler", f"{o.steps_skipped}/{o.steps_run}" if scaler_used else "no GradScaler"),
        ("loss", loss),
        ("steps, non-finite grads", f"{o.nonfinite_grad_steps} ({o.nonfinite_grad_steps_applied} applied)"),
        ("grad norm p50/p90/p99", "/".join(format_number(g[k]) for k in ("p50", "p90", "p99"))),
        ("grad norm max", format_number(g["max"])),
        ("first layer grad (median)", format_number(o.first_layer_grad)),
        ("grad norm spikes", str(len(o.spikes))),
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_report(report: HealthReport, title: str = "") -> str:
    return format_side_by_side([(title or "health report", report)])


def format_side_by_side(columns: Sequence[tuple[str, HealthReport]]) -> str:
    """Reports as columns of one table, then each report's reasons, warnings and notes."""
    values: dict[str, dict[int, str]] = {}
    for c, (_, report) in enumerate(columns):
        for label, value in report_rows(report):
            values.setdefault(label, {})[c] = value
    table = [["", *[title for title, _ in columns]]]
    table += [[label, *[cells.get(c, "-") for c in range(len(columns))]] for label, cells in values.items()]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for title, report in columns:
        prefix = f"{title}: " if len(columns) > 1 else ""
        lines += [f"{prefix}unhealthy: {r}" for r in report.reasons]
        lines += [f"{prefix}warning: {w}" for w in report.warnings]
        lines += [f"{prefix}note: {n}" for n in report.notes]
        lines += [f"{prefix}{line}" for line in report.other_ranks]
    return "\n".join(lines)


def write_json(path: Path, runs: dict[str, Any], about: dict[str, Any] | None = None) -> None:
    """``about`` (script, arguments, device, seed, torch...) first, then each run's report and
    record, and every other rank's under torchrun."""
    data: dict[str, Any] = dict(about or {})
    data["runs"] = runs
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def run_json(record: Record, report: HealthReport, ranks: Sequence[tuple[int, Record]] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"report": report.to_json(), "record": record.to_json()}
    if ranks:
        data["ranks"] = [
            {"rank": rank, "report": summarize(other).to_json(), "record": other.to_json()} for rank, other in ranks
        ]
    return data
