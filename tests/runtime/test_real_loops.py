"""Real training loops of the shapes found in public scripts, each run twice: once as it is,
logging what the script itself would log, and once under the monitor. The monitor's numbers
must be the script's own, and the trained weights the same bits.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from conftest import RUNTIME_FIXTURES  # noqa: E402

from trainlint.runtime import summarize, watch  # noqa: E402
from trainlint.runtime.records import MANUAL_UPDATE  # noqa: E402
from trainlint.runtime.report import format_number, report_rows  # noqa: E402
from trainlint.runtime.smoke import run_script  # noqa: E402


def total_norm(params) -> float:
    """The gradient norm as the script would log it (what clip_grad_norm_ returns)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def plain_and_watched(loop, **watch_options):
    """(log, model) of the loop run as it is, and (log, model, record) of it under the monitor."""
    plain_log, plain_model = loop()
    with watch(**watch_options) as monitor:
        log, model = loop()
    assert same_weights(plain_model, model)  # the monitor changes nothing
    assert log == plain_log
    return plain_log, monitor.record


# --------------------------------------------------------------------------------------------
# Several optimizers


def printed(stdout: str, name: str) -> list[float]:
    """A number the GAN script prints each step ("Loss_D: 1.38")."""
    return [float(v) for v in re.findall(rf"{name}: (\S+)", stdout)]


def test_a_gan_s_discriminator_and_generator_each_have_their_own_loss_and_norms(capsys):
    run = run_script(RUNTIME_FIXTURES / "gan_train.py", steps=12, device="cpu")
    out, record = capsys.readouterr().out, run.record
    assert [o.label for o in record.optimizers] == ["opt_d (Adam)", "opt_g (Adam)"]
    d_steps, g_steps = record.steps_of(0), record.steps_of(1)
    assert len(d_steps) == len(g_steps) == 12
    # The generator's 12th step ends the run before the script prints it: 11 lines printed.
    assert [s.loss for s in d_steps[:11]] == pytest.approx(printed(out, "Loss_D"), rel=1e-6)
    assert [s.loss for s in g_steps[:11]] == pytest.approx(printed(out, "Loss_G"), rel=1e-6)
    assert [s.grad_norm for s in d_steps[:11]] == printed(out, "norm_D")
    assert [s.grad_norm for s in g_steps[:11]] == printed(out, "norm_G")
    assert [s.backward_calls for s in d_steps] == [2] * 12  # real and fake
    # The discriminator wins: its loss falls while the generator's rises. One stream would hide it.
    d, g = run.report.optimizers
    assert (d.label, d.loss_trend, d.steps_run) == ("opt_d (Adam)", "fell", 12)
    assert (g.label, g.loss_trend, g.steps_run) == ("opt_g (Adam)", "rose", 12)
    assert run.report.loss_first is None  # no single loss for two optimizers
    assert f"opt_g (Adam): loss rose ({format_number(g.loss_first)} -> " in "; ".join(run.report.reasons)


def test_the_report_and_the_png_show_each_optimizer_on_its_own(capsys, tmp_path):
    from trainlint.runtime.cli import main

    png = tmp_path / "gan.png"
    assert main(["smoke", "--steps", "12", "--png", str(png), str(RUNTIME_FIXTURES / "gan_train.py")]) == 1
    out = capsys.readouterr().out
    table = {line.split("  ")[0]: line for line in out.splitlines()}
    assert table["opt_d (Adam): optimizer steps"].split()[-4:] == ["12", "applied", "/", "12"]
    assert table["opt_d (Adam): loss"].endswith(" fell") and table["opt_g (Adam): loss"].endswith(" rose")
    first_g = format_number(printed(out, "Loss_G")[0])
    assert f"\nunhealthy: opt_g (Adam): loss rose ({first_g} -> " in out  # the generator's, by name
    pytest.importorskip("matplotlib")
    from trainlint.runtime.plot import build_figure

    run = run_script(RUNTIME_FIXTURES / "gan_train.py", steps=12, device="cpu")
    loss_axes = build_figure([("smoke", run.record, run.report)]).axes[0]
    lines = [line for line in loss_axes.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["opt_d (Adam)", "opt_g (Adam)"]
    assert [len(line.get_xdata()) for line in lines] == [12, 12]  # a step each, no sawtooth
    assert png.read_bytes()[:4] == b"\x89PNG"


def actor_critic_loop(steps: int = 10):
    """Both losses backpropagated, then both optimizers step: each step applies only its own loss."""
    torch.manual_seed(0)
    actor, critic = torch.nn.Linear(4, 2), torch.nn.Linear(4, 1)
    opt_actor = torch.optim.SGD(actor.parameters(), lr=0.05)
    opt_critic = torch.optim.SGD(critic.parameters(), lr=0.05)
    log = {"actor": [], "critic": []}
    for _ in range(steps):
        states, returns = torch.randn(32, 4), torch.randn(32, 1)
        value = critic(states)
        log_prob = F.log_softmax(actor(states), dim=1)[:, 0:1]
        actor_loss = -(log_prob * (returns - value.detach())).mean()
        critic_loss = F.mse_loss(value, returns)
        opt_actor.zero_grad()
        opt_critic.zero_grad()
        actor_loss.backward()
        critic_loss.backward()
        opt_actor.step()
        opt_critic.step()
        log["actor"].append(actor_loss.item())
        log["critic"].append(critic_loss.item())
    return log, actor


def test_actor_and_critic_steps_each_take_the_loss_that_reached_their_parameters():
    log, record = plain_and_watched(actor_critic_loop)
    assert [o.label for o in record.optimizers] == ["opt_actor (SGD)", "opt_critic (SGD)"]
    assert [s.loss for s in record.steps_of(0)] == pytest.approx(log["actor"], rel=1e-6)
    assert [s.loss for s in record.steps_of(1)] == pytest.approx(log["critic"], rel=1e-6)
    assert all(s.backward_calls == 1 for s in record.steps)


# --------------------------------------------------------------------------------------------
# The loss as the script logs it


def accumulation_loop(steps: int = 5, accum: int = 4):
    """nanoGPT's shape: each micro-batch's loss divided by the accumulation count."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = torch.randn(steps * accum, 16, 8)
    log = {"step_loss": [], "logged_last_micro": [], "norm": []}
    for step in range(steps):
        step_loss = 0.0
        for micro in range(accum):
            batch = data[step * accum + micro]
            loss = F.mse_loss(model(batch), batch.sum(dim=1, keepdim=True)) / accum
            step_loss += loss.item()
            loss.backward()
        log["logged_last_micro"].append(loss.item() * accum)  # what nanoGPT prints
        log["step_loss"].append(step_loss)
        log["norm"].append(total_norm(model.parameters()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return log, model


def test_gradient_accumulation_reports_the_loss_of_the_whole_step_not_a_micro_batch_share():
    log, record = plain_and_watched(accumulation_loop)
    steps = record.steps
    assert [s.backward_calls for s in steps] == [4] * 5
    assert [s.loss for s in steps] == pytest.approx(log["step_loss"], rel=1e-6)
    assert [s.grad_norm for s in steps] == pytest.approx(log["norm"], rel=1e-6)
    # On the scale the script prints (loss.item() * accum), not 4x below it.
    for shown, printed in zip([s.loss for s in steps], log["logged_last_micro"]):
        assert 0.5 < shown / printed < 2.0


class ManualScaler(torch.amp.GradScaler):
    """A subclass with its own ``scale``, as FSDP's ShardedGradScaler has: GradScaler.scale never runs."""

    def scale(self, outputs):
        if self._scale is None:
            self._lazy_init_scale_growth_tracker(outputs.device)
        return outputs * self._scale.to(outputs.device, outputs.dtype)


def scaler_subclass_loop(steps: int = 8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = ManualScaler("cpu", init_scale=2.0**16)
    inputs = torch.randn(64, 16)
    targets = inputs[:, :4].argmax(dim=1)
    log = {"loss": [], "scale": []}
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(inputs), targets)
        log["loss"].append(loss.item())
        log["scale"].append(scaler.get_scale())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return log, model


def test_a_gradscaler_subclass_with_its_own_scale_shows_the_loss_before_scaling():
    own_scale = ManualScaler.scale
    log, record = plain_and_watched(scaler_subclass_loop)
    assert [s.loss for s in record.steps] == pytest.approx(log["loss"], rel=1e-6)  # not 65536x
    assert [s.scale for s in record.steps] == log["scale"]
    assert record.backward_losses == pytest.approx(log["loss"], rel=1e-6)
    assert ManualScaler.scale is own_scale  # put back when the watch ended


def lbfgs_loop(steps: int = 4):
    """A closure optimizer: the gradient exists only once the closure has run."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    inputs = torch.randn(40, 6)
    targets = inputs @ torch.randn(6, 1)
    log = {"loss": [], "first_norm": [], "calls": []}

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        log["calls"][-1] += 1
        if log["calls"][-1] == 1:  # the gradient the step starts from
            log["first_norm"].append(total_norm(model.parameters()))
        return loss

    for _ in range(steps):
        log["calls"].append(0)
        log["loss"].append(optimizer.step(closure).item())  # LBFGS returns the first closure's loss
    return log, model


def test_a_closure_optimizer_reports_the_gradient_after_the_closure_ran():
    log, record = plain_and_watched(lbfgs_loop)
    assert all(calls > 1 for calls in log["calls"])  # a line search: several closures per step
    steps = record.steps
    assert [s.loss for s in steps] == pytest.approx(log["loss"], rel=1e-6)
    assert [s.grad_norm for s in steps] == pytest.approx(log["first_norm"], rel=1e-6)
    assert steps[0].grad_norm > 0  # not read before the closure, when there was no gradient yet
    assert [s.backward_calls for s in steps] == [1] * 4  # the step's own; the line search's are not
    assert record.backward_calls == sum(log["calls"])


def manual_sgd_loop(steps: int = 8, lr: float = 0.1):
    """No optimizer at all: the update is written out, through ``.data``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    inputs = torch.randn(32, 5)
    targets = inputs.sum(dim=1, keepdim=True)
    log = {"loss": [], "norm": []}
    for _ in range(steps):
        loss = F.mse_loss(model(inputs), targets)
        model.zero_grad()
        loss.backward()
        log["loss"].append(loss.item())
        log["norm"].append(total_norm(model.parameters()))
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
    return log, model


def test_manual_parameter_updates_are_steps():
    log, record = plain_and_watched(manual_sgd_loop)
    assert [o.kind for o in record.optimizers] == [MANUAL_UPDATE]
    assert [s.loss for s in record.steps] == pytest.approx(log["loss"], rel=1e-6)
    assert [s.grad_norm for s in record.steps] == pytest.approx(log["norm"], rel=1e-6)
    report = summarize(record)
    assert report.healthy and report.steps_applied == 8 and report.loss_trend is not None
    assert "no optimizer step" not in " ".join(report.reasons)


def test_manual_updates_count_toward_the_step_limit():
    with watch(max_steps=3) as monitor:
        manual_sgd_loop(steps=50)
    assert len(monitor.record.steps) == 3 and monitor.record.ending.stopped_by == "steps"


def test_no_loss_verdict_when_no_step_was_applied():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # overflows float16, and stays there
    inputs = torch.randn(64, 16)
    with watch() as monitor:
        for step in range(12):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(inputs), inputs[:, :4].argmax(dim=1)) * (12 - step) / 12
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped: the gradients are Inf
            scaler.update(2.0**24)
            optimizer.zero_grad()
    report = summarize(monitor.record)
    assert report.steps_run == 12 and report.steps_applied == 0
    assert report.loss_first > 2 * report.loss_last  # the numbers fell, but nothing trained
    assert report.loss_trend is None and report.loss_fell is None
    loss_row = dict(report_rows(report))["loss"]
    assert loss_row.endswith("(no step applied)") and "fell" not in loss_row


def test_fsdp_s_sharded_gradscaler_shows_the_loss_before_scaling(tmp_path):
    """The real ShardedGradScaler (it overrides ``scale``), in a one-process gloo group."""
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    def loop():
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = ShardedGradScaler(device="cpu", init_scale=2.0**16)
        inputs = torch.randn(16, 8)
        log = []
        for _ in range(4):
            loss = F.cross_entropy(model(inputs), inputs[:, :4].argmax(dim=1))
            log.append(loss.item())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        return log, model

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        log, record = plain_and_watched(loop)
    finally:
        dist.destroy_process_group()
    assert [s.loss for s in record.steps] == pytest.approx(log, rel=1e-6)  # not 65536x
    assert [s.scale for s in record.steps] == [2.0**16] * 4
