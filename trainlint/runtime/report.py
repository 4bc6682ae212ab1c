"""The health report: what a record says about the training it watched, and a verdict.

Printed as a table, written as JSON, drawn as a PNG (when matplotlib is installed).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainlint.runtime.monitor import Record, StepRecord, json_safe

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
class HealthReport:
    verdict: str  # "healthy" or "unhealthy"
    reasons: list[str]
    warnings: list[str]
    notes: list[str]
    exception: str | None
    iterations: int  # backward calls
    steps_run: int  # optimizer steps, including those the GradScaler skipped
    steps_skipped: int
    scaler_used: bool
    scale_first: float | None
    scale_last: float | None
    nonfinite_losses: int
    nonfinite_grad_steps: int
    nonfinite_grad_steps_applied: int
    first_nonfinite_weights_step: int | None
    grad_norm: dict[str, float | None]  # p50, p90, p99, max over steps with a finite norm
    first_layer_grad: float | None  # median over applied steps
    spikes: list[int]
    loss_first: float | None
    loss_last: float | None
    loss_trend: str | None  # "fell", "flat", "rose" or "non-finite"; None without losses
    loss_fell: bool | None
    stopped_at_limit: bool
    wall_time_s: float
    optimizers: list[str] = field(default_factory=list)
    other_ranks: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    @property
    def steps_applied(self) -> int:
        return self.steps_run - self.steps_skipped

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps_applied"] = self.steps_applied
        return json_safe(data)


# --------------------------------------------------------------------------------------------
# From record to report


def summarize(record: Record) -> HealthReport:
    steps = record.steps
    losses = record.backward_losses or [s.loss for s in steps if s.loss is not None]
    applied = [s for s in steps if not s.skipped]
    finite_norms = [s.grad_norm for s in steps if math.isfinite(s.grad_norm)]
    scales = [s.scale for s in steps if s.scale is not None]
    loss_first, loss_last = _loss_ends(losses)
    trend = _loss_trend(loss_first, loss_last)
    report = HealthReport(
        verdict="healthy",
        reasons=[],
        warnings=[],
        notes=list(record.notes),
        exception=None if record.exception is None else str(record.exception),
        iterations=record.backward_calls,
        steps_run=len(steps),
        steps_skipped=sum(s.skipped for s in steps),
        scaler_used=bool(scales) or any(s.enabled for s in record.scalers),
        scale_first=scales[0] if scales else None,
        scale_last=scales[-1] if scales else None,
        nonfinite_losses=sum(not math.isfinite(v) for v in losses),
        nonfinite_grad_steps=sum(s.nonfinite_grads > 0 for s in steps),
        nonfinite_grad_steps_applied=sum(s.nonfinite_grads > 0 for s in applied),
        first_nonfinite_weights_step=next((s.index for s in steps if s.nonfinite_params), None),
        grad_norm=_percentiles(finite_norms),
        first_layer_grad=_median([s.first_grad_norm for s in applied if math.isfinite(s.first_grad_norm)]),
        spikes=_spikes(steps),
        loss_first=loss_first,
        loss_last=loss_last,
        loss_trend=trend,
        loss_fell=None if trend is None else trend == "fell",
        stopped_at_limit=record.stopped_at_limit,
        wall_time_s=record.wall_time_s,
        optimizers=list(record.optimizers),
    )
    report.reasons = _reasons(report, record, len(losses))
    report.warnings = _warnings(report, record, len(losses))
    report.verdict = "unhealthy" if report.reasons else "healthy"
    return report


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


def _reasons(report: HealthReport, record: Record, loss_count: int) -> list[str]:
    reasons = []
    if report.exception:
        reasons.append(f"raised {report.exception}")
    if report.steps_run == 0 and not report.exception:
        if report.iterations:
            reasons.append(f"{report.iterations} backward passes but no optimizer step")
        else:
            reasons.append("no optimizer step and no backward pass")
    if report.steps_skipped and report.steps_skipped > SKIPPED_FRACTION_LIMIT * report.steps_run:
        reasons.append(f"{report.steps_skipped}/{report.steps_run} steps skipped by the GradScaler")
    if report.nonfinite_losses:
        reasons.append(f"non-finite loss in {report.nonfinite_losses}/{loss_count} backward passes")
    if report.nonfinite_grad_steps_applied:
        reasons.append(f"{report.nonfinite_grad_steps_applied} steps applied non-finite gradients")
    if report.first_nonfinite_weights_step is not None:
        reasons.append(f"non-finite weights from step {report.first_nonfinite_weights_step}")
    if loss_count >= MIN_LOSSES_FOR_TREND and _rose_too_far(report):
        reasons.append(f"loss rose ({_loss_span(report)})")
    return reasons


def _rose_too_far(report: HealthReport) -> bool:
    if report.loss_first is None or report.loss_last is None or report.loss_trend != "rose":
        return False
    return report.loss_last > report.loss_first + LOSS_RISE_LIMIT * abs(report.loss_first)


def _loss_span(report: HealthReport) -> str:
    return f"{format_number(report.loss_first)} -> {format_number(report.loss_last)}"


def _warnings(report: HealthReport, record: Record, loss_count: int) -> list[str]:
    warnings = []
    if report.spikes:
        shown = ", ".join(str(i) for i in report.spikes[:5]) + (", ..." if len(report.spikes) > 5 else "")
        warnings.append(
            f"{len(report.spikes)} gradient-norm spikes (>{SPIKE_FACTOR:g}x the running median) at steps {shown}"
        )
    if any(not s.enabled for s in record.scalers):
        warnings.append("a GradScaler was created disabled: it neither scales nor skips")
    stepped = {s.optimizer for s in record.steps}
    idle = [name for i, name in enumerate(record.optimizers) if i not in stepped]
    if idle and record.steps:
        warnings.append(f"optimizers created but never stepped: {', '.join(idle)}")
    if report.steps_run and report.grad_norm["max"] == 0.0:
        warnings.append("every gradient was zero")
    if loss_count >= MIN_LOSSES_FOR_TREND and report.loss_trend == "flat":
        warnings.append(f"loss flat ({_loss_span(report)}, within {LOSS_FLAT_TOLERANCE:.0%} of the first loss)")
    elif loss_count >= MIN_LOSSES_FOR_TREND and report.loss_trend == "rose" and not _rose_too_far(report):
        warnings.append(f"loss rose slightly ({_loss_span(report)})")
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
    """The report as (label, value) rows; the same labels for every report, so they line up."""
    g = report.grad_norm
    loss = "-"
    if report.loss_first is not None:
        trend = report.loss_trend if report.loss_trend in ("fell", "flat", "rose") else ""
        loss = f"{_loss_span(report)} {trend}".rstrip()
    skipped = f"{report.steps_skipped}/{report.steps_run}" if report.scaler_used else "no GradScaler"
    scale = "-"
    if report.scale_first is not None:
        scale = f"{format_number(report.scale_first)} -> {format_number(report.scale_last)}"
    bad_weights = report.first_nonfinite_weights_step
    return [
        ("verdict", report.verdict),
        ("exception", _clip(report.exception or "-", 60)),
        ("backward passes", str(report.iterations)),
        ("optimizer steps", f"{report.steps_applied} applied / {report.steps_run}"),
        ("skipped by GradScaler", skipped),
        ("loss scale", scale),
        ("loss", loss),
        ("non-finite losses", str(report.nonfinite_losses)),
        ("steps, non-finite grads", f"{report.nonfinite_grad_steps} ({report.nonfinite_grad_steps_applied} applied)"),
        ("non-finite weights", "-" if bad_weights is None else f"from step {bad_weights}"),
        ("grad norm p50/p90/p99", "/".join(format_number(g[k]) for k in ("p50", "p90", "p99"))),
        ("grad norm max", format_number(g["max"])),
        ("first layer grad (median)", format_number(report.first_layer_grad)),
        ("grad norm spikes", str(len(report.spikes))),
        ("wall time", f"{report.wall_time_s:.2f} s"),
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_report(report: HealthReport, title: str = "") -> str:
    return format_side_by_side([(title or "health report", report)])


def format_side_by_side(columns: Sequence[tuple[str, HealthReport]]) -> str:
    """Reports as columns of one table, then each report's reasons, warnings and notes."""
    rows = [report_rows(r) for _, r in columns]
    labels = [label for label, _ in rows[0]]
    table = [["", *[title for title, _ in columns]]]
    table += [[label, *[r[i][1] for r in rows]] for i, label in enumerate(labels)]
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


def write_json(path: Path, runs: dict[str, tuple[Record, HealthReport]], extra: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = dict(extra or {})
    data["runs"] = {name: {"report": rep.to_json(), "record": rec.to_json()} for name, (rec, rep) in runs.items()}
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def plot_png(path: Path, runs: Sequence[tuple[str, Record]]) -> str | None:
    """Loss per backward pass and gradient norm per step, skipped steps marked in red.

    Returns None when written, else why not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 6), squeeze=False)
    for column, (title, record) in enumerate(runs):
        _plot_run(axes[0][column], axes[1][column], title, record)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _plot_run(loss_ax: Any, norm_ax: Any, title: str, record: Record) -> None:
    # A step happens after its backward passes: place it at the last of them.
    at_iteration, total = [], 0
    for s in record.steps:
        total += s.backward_calls
        at_iteration.append(max(total - 1, 0))
    skipped = [k for k, s in enumerate(record.steps) if s.skipped]
    losses = record.backward_losses
    loss_ax.plot(range(len(losses)), [v if math.isfinite(v) else math.nan for v in losses], lw=1)
    for k in skipped:
        loss_ax.axvline(at_iteration[k], color="red", alpha=0.25, lw=1)
    loss_ax.set_title(f"{title}: loss" + (" (red: skipped steps)" if skipped else ""))
    loss_ax.set_xlabel("backward pass")
    norms = [s.grad_norm if math.isfinite(s.grad_norm) and s.grad_norm > 0 else math.nan for s in record.steps]
    norm_ax.plot(range(len(norms)), norms, lw=1)
    if any(math.isfinite(v) for v in norms):
        norm_ax.set_yscale("log")
    for k in skipped:
        norm_ax.axvline(k, color="red", alpha=0.25, lw=1)
    if not record.steps:
        norm_ax.text(0.5, 0.5, "no optimizer step", transform=norm_ax.transAxes, ha="center", va="center")
    norm_ax.set_title(f"{title}: gradient norm")
    norm_ax.set_xlabel("optimizer step")
