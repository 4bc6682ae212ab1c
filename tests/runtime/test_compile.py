"""torch.compile'd training steps under the monitor: no recompilation on the monitor's state.

Dynamo's "eager" backend keeps these fast (no C++ code generation); recompiles, guards and the
recompile limit are Dynamo's, whatever the backend.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

from trainlint.runtime import watch  # noqa: E402

WARMUP, STEPS = 3, 15


def _dynamo_unavailable() -> str:
    """Why torch.compile cannot run here (an unsupported Python, say); empty when it can."""
    try:
        torch.compile(lambda x: x + 1, backend="eager")(torch.ones(1))
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot test here
        return f"torch.compile does not run here: {type(exc).__name__}: {exc}"
    return ""


_WHY_NOT = _dynamo_unavailable()
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT or "torch.compile runs")


def compiled_loop(whole_step: bool):
    """(losses, model, step function) of a tiny model trained with a compiled step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs = torch.randn(32, 8)
    targets = inputs.sum(dim=1, keepdim=True)

    if whole_step:

        @torch.compile(backend="eager")
        def train_step():
            loss = F.mse_loss(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

    else:
        compiled_optimizer_step = torch.compile(optimizer.step, backend="eager")

        def train_step():
            loss = F.mse_loss(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            compiled_optimizer_step()
            return loss

    return model, train_step


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def recompile_limit_hit() -> bool:
    return any("recompile limit" in reason.lower() for reason in counters["unimplemented"])


@pytest.mark.parametrize("whole_step", [False, True], ids=["compiled optimizer step", "compiled training step"])
def test_a_compiled_step_is_not_recompiled_for_the_monitor(whole_step):
    dynamo.reset()
    counters.clear()
    model, train_step = compiled_loop(whole_step)
    plain = [train_step().item() for _ in range(STEPS)]
    plain_weights = [p.detach().clone() for p in model.parameters()]

    dynamo.reset()
    counters.clear()
    model, train_step = compiled_loop(whole_step)
    with watch() as monitor:
        watched = [train_step().item() for _ in range(WARMUP)]
        after_warmup = graphs_compiled()
        watched += [train_step().item() for _ in range(STEPS - WARMUP)]
    assert graphs_compiled() == after_warmup  # nothing recompiled once warm: no guard on our state
    assert not recompile_limit_hit()
    assert watched == plain and all(torch.equal(a, b) for a, b in zip(plain_weights, model.parameters()))
    record = monitor.record
    assert len(record.steps) == STEPS and [s.loss for s in record.steps] == pytest.approx(plain, rel=1e-6)
    assert all(s.grad_norm > 0 for s in record.steps)
