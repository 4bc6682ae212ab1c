"""The PNG: loss and gradient norm per optimizer step, one column per run, on shared axes.

Columns share their x axis (optimizer steps) and each row its y axis, gradient norms on a log
scale, so that the original and the fixed run read against the same ticks: a gradient norm
65536x too large sits 4.8 decades above the other column's. Each optimizer has its own colour,
the same in every column; steps the GradScaler skipped are shaded red, non-finite values are red
crosses along the top. The verdicts (of each run, and of each finding for ``confirm``) are
printed under the plots.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainlint.runtime.records import Record
from trainlint.runtime.report import HealthReport

_WRAP = 110
_NONFINITE = "nonfinite"  # the gid of the red crosses


def plot_png(
    path: Path, runs: Sequence[tuple[str, Record, HealthReport]], verdicts: Sequence[str] = ()
) -> str | None:
    """Write the PNG; None when written, else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    figure = build_figure(runs, verdicts)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def build_figure(runs: Sequence[tuple[str, Record, HealthReport]], verdicts: Sequence[str] = ()) -> Any:
    import matplotlib.pyplot as plt

    footer = [line for v in verdicts for line in textwrap.wrap(v, _WRAP, subsequent_indent="    ")]
    footer_inches = 0.22 * len(footer) + (0.2 if footer else 0.0)
    figure, axes = plt.subplots(
        2, len(runs), figsize=(6.0 * len(runs), 6.6 + footer_inches), squeeze=False, sharex="all", sharey="row"
    )
    for column, (title, record, report) in enumerate(runs):
        _plot_loss(axes[0][column], record)
        _plot_grad_norms(axes[1][column], record)
        axes[0][column].set_title(_run_title(title, report), fontsize=10)
        axes[1][column].set_xlabel("optimizer step" if record.steps else "backward pass (no optimizer step)")
        for ax in (axes[0][column], axes[1][column]):
            labels = ax.get_legend_handles_labels()[1]
            if len(labels) > 1 or (labels and not record.steps):  # one optimizer's line needs no key
                ax.legend(fontsize=8, loc="best")
    _scale_rows(axes)
    axes[0][0].set_ylabel("loss (sum over the step's micro-batches)")
    axes[1][0].set_ylabel("gradient norm (log)")
    bottom = footer_inches / figure.get_figheight()
    figure.tight_layout(rect=(0, bottom, 1, 1))
    if footer:
        figure.text(0.01, bottom - 0.01, "\n".join(footer), va="top", ha="left", fontsize=9, family="monospace")
    return figure


def _run_title(title: str, report: HealthReport) -> str:
    why = f": {report.reasons[0]}" if report.reasons else ""
    return textwrap.shorten(f"{title}: {report.verdict}{why}", 70, placeholder="...")


def _series(record: Record) -> list[tuple[str, list[Any]]]:
    """(label, steps) per optimizer that stepped."""
    return [(o.label, record.steps_of(i)) for i, o in enumerate(record.optimizers) if record.steps_of(i)]


def _plot_loss(ax: Any, record: Record) -> None:
    series = _series(record)
    if not series:  # no optimizer step: the loss of each backward pass is all there is
        losses = record.backward_losses
        label = "loss per backward pass (no optimizer step)"
        ax.plot(range(len(losses)), [_finite_or_nan(v) for v in losses], color="gray", label=label, **_style(losses))
        _mark_nonfinite(ax, [k for k, v in enumerate(losses) if not math.isfinite(v)])
        return
    for colour, (label, steps) in enumerate(series):
        xs = [k for k, s in enumerate(steps) if s.loss is not None]
        ax.plot(xs, [_finite_or_nan(steps[k].loss) for k in xs], color=f"C{colour}", label=label, **_style(xs))
        _mark_nonfinite(ax, [k for k in xs if not math.isfinite(steps[k].loss)])
        _shade_skipped(ax, steps)


def _plot_grad_norms(ax: Any, record: Record) -> None:
    series = _series(record)
    if not series:
        ax.text(0.5, 0.5, "no optimizer step", transform=ax.transAxes, ha="center", va="center", color="gray")
        return
    for colour, (label, steps) in enumerate(series):
        norms = [s.grad_norm if math.isfinite(s.grad_norm) and s.grad_norm > 0 else math.nan for s in steps]
        ax.plot(range(len(norms)), norms, color=f"C{colour}", label=label, **_style(norms))
        _mark_nonfinite(ax, [k for k, s in enumerate(steps) if not math.isfinite(s.grad_norm)])
        _shade_skipped(ax, steps)


def _scale_rows(axes: Any) -> None:
    """Log scale for gradient norms; for the loss only when it is positive and spans decades."""
    for ax in axes[1]:
        if any(_has_positive(line.get_ydata()) for line in _data_lines(ax)):
            ax.set_yscale("log")
    values = [v for ax in axes[0] for line in _data_lines(ax) for v in line.get_ydata() if math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        for ax in axes[0]:
            ax.set_yscale("log")


def _style(points: Sequence[Any]) -> dict[str, Any]:
    """Lines, with dots while they are few enough to tell apart (a lone finite value shows)."""
    return {"lw": 1, "marker": "o", "ms": 2.5} if len(points) <= 200 else {"lw": 1}


def _data_lines(ax: Any) -> list[Any]:
    return [line for line in ax.get_lines() if line.get_gid() != _NONFINITE]


def _has_positive(values: Any) -> bool:
    return any(math.isfinite(v) and v > 0 for v in values)


def _finite_or_nan(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _mark_nonfinite(ax: Any, xs: Sequence[int]) -> None:
    """Red crosses along the top of the axes, where a value was NaN or Inf."""
    if xs:
        first = not any(line.get_gid() == _NONFINITE for line in ax.get_lines())
        ax.plot(xs, [0.96] * len(xs), "x", color="red", ms=5, transform=ax.get_xaxis_transform(),
                gid=_NONFINITE, label="NaN/Inf" if first else "_")


def _shade_skipped(ax: Any, steps: Sequence[Any]) -> None:
    for k, s in enumerate(steps):
        if s.skipped:
            label = "_" if ax.patches else "skipped by the GradScaler"
            ax.axvspan(k - 0.5, k + 0.5, color="red", alpha=0.15, lw=0, label=label)
