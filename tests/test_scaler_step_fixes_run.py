"""TL104-TL107 on real (CPU) training loops: the code as written misbehaves, and the code that
`--fix` writes runs and trains. The numbers on the rule pages come from these loops."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from tests.test_rules import linter_for

torch = pytest.importorskip("torch")

TL104_LOOP = """
import torch


def train(model, batches, optimizer, scaler):
    for x, y in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        optimizer.step()
"""

TL105_LOOP = """
import torch


def train(model, batches, optimizer, scaler):
    for x, y in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
"""

# Two models share the scaler, as a GAN's generator and discriminator do: only B is unscaled.
TL106_LOOP = """
import torch


def train(model_a, model_b, batches, opt_a, opt_b, scaler):
    for x, y in batches:
        opt_a.zero_grad()
        opt_b.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model_a(x), y)).backward()
        scaler.step(opt_a)
        loss_b = torch.nn.functional.mse_loss(model_b(x), y)
        loss_b.backward()
        scaler.step(opt_b)
        scaler.update()
"""

TL107_LOOP = """
import torch


def train(model, batches, optimizer):
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if torch.isnan(loss):
            continue
        optimizer.step()
        optimizer.zero_grad()
"""


@pytest.fixture(autouse=True)
def _quiet_and_single_threaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns on CPU builds without CUDA
        yield
    torch.set_num_threads(threads)


def fixed_by(code: str, source: str, unsafe: bool = False) -> str:
    """The source after `--fix --select CODE` (with `--unsafe-fixes` when ``unsafe``, and then
    `--fix` alone must leave it unchanged), which must have changed it."""
    source = textwrap.dedent(source).lstrip("\n")
    linter = linter_for(code)
    assert [f.code for f in linter.lint(source, "train.py")] == [code]
    if unsafe:
        assert linter.fix(source, "train.py", None, unsafe_fixes=False).text == source
    fixed = linter.fix(source, "train.py", None, unsafe_fixes=unsafe).text
    assert fixed != source and not linter.lint(fixed, "train.py")
    return fixed


def train_function(source: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(source).lstrip("\n"), "train.py", "exec"), namespace)
    return namespace["train"]


def regression(batches: int, seed: int = 0) -> list[tuple[Any, Any]]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(16, 1, generator=generator)
    return [(x, x @ weights) for x in (torch.randn(32, 16, generator=generator) for _ in range(batches))]


def mse(model: Any, batches: list[tuple[Any, Any]]) -> float:
    with torch.no_grad():
        inputs = torch.cat([x for x, _ in batches[:8]])
        targets = torch.cat([y for _, y in batches[:8]])
        return float(torch.nn.functional.mse_loss(model(inputs), targets))


def run_tl104(source: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model, batches = torch.nn.Linear(16, 1), regression(200)
    before = mse(model, batches)
    train_function(source)(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu"))
    return before, mse(model, batches)


def test_tl104_sgd_on_scaled_gradients_diverges_and_the_fix_trains() -> None:
    before, after = run_tl104(TL104_LOOP)
    assert not torch.isfinite(torch.tensor(after))  # measured: the weights are inf/NaN by step 9
    before, after = run_tl104(fixed_by("TL104", TL104_LOOP))
    assert after < before / 1000


def test_tl105_step_without_update_raises_at_the_second_step_and_the_fix_trains() -> None:
    torch.manual_seed(0)
    model, batches = torch.nn.Linear(16, 1), regression(200)
    optimizer, scaler = torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called since the last update"):
        train_function(TL105_LOOP)(model, batches[:2], optimizer, scaler)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    before = mse(model, batches)
    train = train_function(fixed_by("TL105", TL105_LOOP))
    train(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu"))
    assert mse(model, batches) < before / 1000


def run_tl106(source: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model_a, model_b, batches = torch.nn.Linear(16, 1), torch.nn.Linear(16, 1), regression(200)
    before = mse(model_b, batches)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    train_function(source)(model_a, model_b, batches, opt_a, opt_b, torch.amp.GradScaler("cpu"))
    return before, mse(model_b, batches)


def test_tl106_unscaled_gradients_are_divided_by_the_scale_and_the_fix_trains() -> None:
    before, after = run_tl106(TL106_LOOP)
    assert after > 0.99 * before  # measured: 17.64 -> 17.62 in 200 SGD steps
    # unsafe: the scaler scales model_a's loss, so model_b trained (barely) as written
    before, after = run_tl106(fixed_by("TL106", TL106_LOOP, unsafe=True))
    assert after < before / 1000


def run_tl107(source: str, nan_batch: int = 10) -> tuple[int, int]:
    """NaN weights after training, and the number of weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(32, 16, generator=generator)
    batches = [(x, x @ weights) for x in (torch.randn(8, 32, generator=generator) for _ in range(50))]
    batches[nan_batch][0][3, 5] = float("nan")  # one bad sample in one batch
    train_function(source)(model, batches, torch.optim.SGD(model.parameters(), lr=0.01))
    nan = sum(int(torch.isnan(p).sum()) for p in model.parameters())
    return nan, sum(p.numel() for p in model.parameters())


def test_tl107_one_skipped_nan_batch_poisons_every_weight_and_the_fix_does_not() -> None:
    nan, total = run_tl107(TL107_LOOP)
    assert nan == total == 3152
    nan, _ = run_tl107(fixed_by("TL107", TL107_LOOP))
    assert nan == 0
