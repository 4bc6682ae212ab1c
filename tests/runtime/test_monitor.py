"""The monitor on small real training loops: what it measures, and that it changes nothing."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from trainlint.runtime import StopRun, watch  # noqa: E402


def make_problem(seed: int = 0, classes: int = 4):
    torch.manual_seed(seed)
    inputs = torch.randn(128, 16)
    targets = inputs[:, :classes].argmax(dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))
    return model, inputs, targets


def amp_loop(steps: int, init_scale: float = 2.0**24, optimizer_cls=torch.optim.SGD):
    """CPU float16 autocast with a GradScaler; returns the model and what the loop itself saw."""
    model, inputs, targets = make_problem()
    optimizer = optimizer_cls(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    applied = []
    optimizer.register_step_post_hook(lambda *args: applied.append(True))
    seen = {"losses": [], "scales": [], "skipped": 0}
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        seen["losses"].append(loss.item())
        scale_before = scaler.get_scale()
        seen["scales"].append(scale_before)
        scaler.scale(loss).backward()
        steps_before = len(applied)
        scaler.step(optimizer)
        scaler.update()
        seen["skipped"] += len(applied) == steps_before
        optimizer.zero_grad(set_to_none=True)
    return model, seen


def test_counts_the_steps_an_overflowing_gradscaler_skips():
    with watch() as monitor:
        _, seen = amp_loop(steps=20)
    record = monitor.record
    assert len(record.steps) == 20
    skipped = [s.skipped for s in record.steps]
    assert sum(skipped) == seen["skipped"] > 0  # 2**24 overflows float16 until the scale backs off
    assert skipped[: seen["skipped"]] == [True] * seen["skipped"]  # all at the start
    assert [s.scale for s in record.steps] == seen["scales"]
    assert all(s.nonfinite_grads > 0 and not math.isfinite(s.grad_norm) for s in record.steps if s.skipped)
    assert all(s.nonfinite_grads == 0 and math.isfinite(s.grad_norm) for s in record.steps if not s.skipped)


def test_records_the_loss_before_scaling():
    with watch() as monitor:
        _, seen = amp_loop(steps=8)
    assert monitor.record.backward_losses == pytest.approx(seen["losses"], rel=0, abs=0)
    assert [s.loss for s in monitor.record.steps] == seen["losses"]


def test_grad_norm_is_what_clip_grad_norm_returns():
    model, inputs, targets = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    clipped = []
    with watch() as monitor:
        for _ in range(10):
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            clipped.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9).item())
            optimizer.step()
    assert [s.grad_norm for s in monitor.record.steps] == clipped  # exactly, bit for bit


def test_grad_norm_is_after_clipping_as_the_optimizer_sees_it():
    model, inputs, targets = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch() as monitor:
        for _ in range(5):
            loss = F.cross_entropy(model(inputs), targets) * 1000
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            optimizer.step()
    assert [s.grad_norm for s in monitor.record.steps] == pytest.approx([0.5] * 5, rel=1e-5)


def test_counts_nan_gradients_and_the_weights_they_poison():
    model, inputs, targets = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch() as monitor:
        for step in range(6):
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            if step == 2:
                model[0].weight.grad[0, 0] = float("nan")  # one bad gradient element
            optimizer.step()
    steps = monitor.record.steps
    assert [s.nonfinite_grads for s in steps[:3]] == [0, 0, 1]
    assert [s.nonfinite_params for s in steps[:3]] == [0, 0, 1]  # the weight it was applied to
    assert all(s.nonfinite_params == 4 for s in steps[3:])  # NaN spreads to every tensor
    losses = monitor.record.backward_losses
    assert all(math.isfinite(v) for v in losses[:3]) and not any(math.isfinite(v) for v in losses[4:])


def test_trained_weights_are_bitwise_identical_with_and_without_the_monitor():
    plain, _ = amp_loop(steps=15, init_scale=2.0**20, optimizer_cls=torch.optim.Adam)
    with watch():
        watched, _ = amp_loop(steps=15, init_scale=2.0**20, optimizer_cls=torch.optim.Adam)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_exceptions_are_recorded_and_not_swallowed():
    model, inputs, targets = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = watch()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        with monitor:
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
            model(torch.randn(4, 3))
    assert monitor.record.exception.type == "RuntimeError"
    assert "shapes cannot be multiplied" in str(monitor.record.exception)
    assert len(monitor.record.steps) == 1


def test_start_and_stop_without_with_and_nothing_left_patched():
    original_backward, original_step = torch.autograd.backward, torch.amp.GradScaler.step
    monitor = watch().start()
    assert torch.autograd.backward is not original_backward
    amp_loop(steps=3)
    record = monitor.stop()
    assert len(record.steps) == 3 and [o.kind for o in record.optimizers] == ["SGD"]
    assert record.scalers[0].init_scale == 2.0**24
    assert torch.autograd.backward is original_backward and torch.amp.GradScaler.step is original_step


def test_max_steps_ends_the_loop_cleanly():
    with watch(max_steps=4) as monitor:
        amp_loop(steps=50)
    assert len(monitor.record.steps) == 4 and monitor.record.stopped_at_limit
    assert monitor.record.exception is None
    with pytest.raises(StopRun):  # without `with`, the stop reaches the caller (smoke catches it)
        monitor = watch(max_steps=2).start()
        try:
            amp_loop(steps=50)
        finally:
            monitor.stop()


def test_statistics_stay_on_the_device_until_read():
    """No host synchronisation per step: 20 steps are pending until the record is read."""
    model, inputs, targets = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = watch(sync_every=50).start()
    for _ in range(20):
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert len(monitor._pending) == 20 and monitor._record.steps == []
    assert len(monitor.stop().steps) == 20


def test_two_optimizers_are_told_apart():
    model, inputs, targets = make_problem()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.Adam(model[2].parameters(), lr=0.01)
    with watch() as monitor:
        for _ in range(3):
            F.cross_entropy(model(inputs), targets).backward()
            first.step()
            second.step()
            model.zero_grad()
    record = monitor.record
    assert [o.label for o in record.optimizers] == ["SGD", "Adam"]  # made before the watch: no line
    assert [s.optimizer for s in record.steps] == [0, 1, 0, 1, 0, 1]


def test_a_loop_that_never_steps_is_ended_by_the_backward_limit():
    model, inputs, targets = make_problem()
    with watch(max_steps=5, max_backward=30) as monitor:
        for _ in range(1000):
            F.cross_entropy(model(inputs), targets).backward()
    assert monitor.record.backward_calls == 30 and monitor.record.stopped_at_limit
    assert monitor.record.steps == []
