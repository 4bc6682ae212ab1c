"""The health report: verdicts and reasons from records, and its three outputs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")

from trainlint.runtime.plot import plot_png  # noqa: E402
from trainlint.runtime.records import ExceptionRecord, OptimizerRecord, Record, StepRecord  # noqa: E402
from trainlint.runtime.report import format_side_by_side, run_json, summarize, write_json  # noqa: E402


def step(
    i: int,
    loss: float = 1.0,
    norm: float = 1.0,
    skipped: bool = False,
    nan_grads: int = 0,
    nan_params: int = 0,
    scale: float | None = None,
) -> StepRecord:
    return StepRecord(i, 0, loss, norm, norm, nan_grads, nan_params, scale, skipped, 1)


def record_of(steps: list[StepRecord], **kwargs) -> Record:
    losses = [s.loss for s in steps]
    optimizers = [OptimizerRecord("SGD")]
    return Record(steps=steps, backward_losses=losses, backward_calls=len(steps), optimizers=optimizers, **kwargs)


def test_a_falling_loss_with_finite_gradients_is_healthy():
    report = summarize(record_of([step(i, loss=2.0 - 0.1 * i, norm=1.0 + 0.01 * i) for i in range(12)]))
    assert report.verdict == "healthy" and report.reasons == []
    assert report.loss_fell and report.loss_first == pytest.approx(2.0)
    assert report.grad_norm["p50"] == pytest.approx(1.05) and report.grad_norm["max"] == pytest.approx(1.11)


def test_mostly_skipped_steps_are_unhealthy():
    overflowed = [step(i, skipped=True, norm=math.inf, nan_grads=2, scale=2.0 ** (24 - i)) for i in range(8)]
    steps = overflowed + [step(i, scale=2.0**16) for i in (8, 9)]
    report = summarize(record_of(steps))
    assert report.verdict == "unhealthy"
    assert "8/10 steps skipped by the GradScaler" in report.reasons
    assert report.nonfinite_grad_steps == 8 and report.nonfinite_grad_steps_applied == 0
    assert (report.scale_first, report.scale_last) == (2.0**24, 2.0**16)


def test_nan_loss_and_weights_each_give_a_reason():
    rising = [step(i, loss=1.0 + i) for i in range(10)]
    steps = rising + [step(i, loss=math.nan, norm=math.nan, nan_grads=3, nan_params=2) for i in (10, 11)]
    report = summarize(record_of(steps))
    assert report.reasons == [
        "non-finite loss in 2/12 backward passes",
        "2 steps applied non-finite gradients",
        "non-finite weights from step 10",
    ]
    assert report.loss_trend == "non-finite" and report.loss_fell is False


def test_a_loss_that_rises_far_is_unhealthy():
    report = summarize(record_of([step(i, loss=1.0 + 0.5 * i) for i in range(12)]))
    assert report.loss_trend == "rose" and report.reasons == ["loss rose (1 -> 6.5)"]


def test_a_flat_or_slightly_rising_loss_is_a_warning_not_a_verdict():
    # The median of the last tenth decides, so one noisy last minibatch does not.
    flat = summarize(record_of([step(i, loss=2.0 - 0.001 * (i % 3)) for i in range(29)] + [step(29, loss=5.0)]))
    assert flat.verdict == "healthy" and flat.loss_trend == "flat" and flat.loss_fell is False
    assert flat.warnings == ["loss flat (2 -> 2, within 1% of the first loss)"]
    slightly = summarize(record_of([step(i, loss=1.0 + 0.005 * i) for i in range(12)]))
    assert slightly.verdict == "healthy" and slightly.loss_trend == "rose"
    assert slightly.warnings == ["loss rose slightly (1 -> 1.05)"]
    short = summarize(record_of([step(i, loss=1.0) for i in range(5)]))
    assert short.loss_trend == "flat" and short.warnings == []


def test_no_optimizer_step_and_exceptions_are_reasons():
    no_step = Record(backward_losses=[1.0] * 5, backward_calls=5, optimizers=[OptimizerRecord("Adam")])
    assert summarize(no_step).reasons == ["5 backward passes but no optimizer step"]
    raised = record_of([step(0)], exception=ExceptionRecord("ValueError", "bad batch\nmore", "tb"))
    assert summarize(raised).reasons == ["raised ValueError: bad batch"]


def test_spikes_are_norms_ten_times_the_running_median():
    norms = [1.0] * 10 + [50.0] + [1.0] * 5 + [9.0]
    report = summarize(record_of([step(i, loss=1.0 - 0.01 * i, norm=n) for i, n in enumerate(norms)]))
    assert report.spikes == [10]
    assert report.verdict == "healthy" and report.warnings[0].startswith("1 gradient-norm spikes")


def test_table_json_and_png(tmp_path):
    healthy = record_of([step(i, loss=2.0 - 0.1 * i) for i in range(12)])
    broken = record_of([step(i, loss=math.nan, norm=math.inf, skipped=True, nan_grads=1) for i in range(12)])
    table = format_side_by_side([("original", summarize(broken)), ("fixed", summarize(healthy))])
    header, _, verdict_row = table.splitlines()[:3]
    assert header.split() == ["original", "fixed"] and verdict_row.split() == ["verdict", "unhealthy", "healthy"]
    assert "original: unhealthy: 12/12 steps skipped by the GradScaler" in table

    path = tmp_path / "report.json"
    write_json(path, {"original": run_json(broken, summarize(broken))})
    data = json.loads(path.read_text())  # strict JSON: NaN and Inf written as strings
    assert data["runs"]["original"]["report"]["verdict"] == "unhealthy"
    assert Record.from_json(data["runs"]["original"]["record"]).steps[0].grad_norm == math.inf

    png = tmp_path / "report.png"
    why_not = plot_png(png, [("original", broken, summarize(broken)), ("fixed", healthy, summarize(healthy))])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert why_not == "matplotlib is not installed (pip install matplotlib)" and not png.exists()
    else:
        assert why_not is None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
