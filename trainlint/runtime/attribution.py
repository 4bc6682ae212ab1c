"""Which optimizer step each backward pass's loss belongs to.

A step's loss is the sum of the losses whose gradients it applies: every micro-batch of a
gradient-accumulation cycle (so it matches a script that logs ``loss.item() * accum``), and only
the losses that reached its own parameters (a GAN's discriminator step is not charged the
generator's loss). Which optimizers a backward pass reached is read from a few of each
optimizer's gradients before and after it: a gradient that appears, is replaced or is accumulated
into (its version counter moves) was reached. A gradient that disappears between two backward
passes (``zero_grad()``) drops the losses gathered for that optimizer: the step will not apply
them. Sampling at most SAMPLED_PARAMS parameters per optimizer keeps this at a few microseconds
per backward pass whatever the model's size.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.optim.optimizer import Optimizer

from trainlint.runtime.device_stats import params_of

SAMPLED_PARAMS = 16
_Fingerprint = tuple[tuple[int, int] | None, ...]


@dataclass
class LossSum:
    """Losses gathered for one step, still on the device."""

    total: torch.Tensor | None = None
    backward_calls: int = 0

    def add(self, loss: torch.Tensor | None) -> None:
        self.backward_calls += 1
        if loss is None:
            return
        loss = loss.detach().reshape(()).to(torch.float32)
        self.total = loss if self.total is None else self.total + loss.to(self.total.device)

    def merged(self, other: LossSum) -> LossSum:
        if other.total is None:
            return LossSum(self.total, self.backward_calls + other.backward_calls)
        if self.total is None:
            return LossSum(other.total, self.backward_calls + other.backward_calls)
        total = self.total + other.total.to(self.total.device)
        return LossSum(total, self.backward_calls + other.backward_calls)


def _grad_identity(param: torch.Tensor) -> tuple[int, int] | None:
    grad = param.grad
    return None if grad is None else (id(grad), grad._version)


def _was_cleared(before: _Fingerprint, now: _Fingerprint) -> bool:
    """A gradient set to None or replaced by another tensor: ``zero_grad()`` or ``p.grad = ...``.

    An in-place change of the same tensor (clipping, unscaling, ``zero_grad(set_to_none=False)``)
    does not count: clipping after every micro-batch must not lose the earlier ones.
    """
    return any(a is not None and (b is None or a[0] != b[0]) for a, b in zip(before, now))


class _Sample:
    """A few parameters of one optimizer, evenly spaced, refreshed when its parameters change.

    Holds the optimizer weakly: a script that makes a new optimizer every epoch does not make
    every backward pass fingerprint all the old ones.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = weakref.ref(optimizer)
        self.count = -1
        self.params: list[torch.Tensor] = []

    @property
    def alive(self) -> bool:
        return self.optimizer() is not None

    def fingerprint(self) -> _Fingerprint:
        optimizer = self.optimizer()
        if optimizer is None:
            return ()
        count = sum(len(group["params"]) for group in optimizer.param_groups)
        if count != self.count:  # add_param_group()
            params = params_of(optimizer)
            stride = max(1, len(params) // SAMPLED_PARAMS)
            self.params, self.count = params[::stride][:SAMPLED_PARAMS] + params[-1:], count
        return tuple(_grad_identity(p) for p in self.params)


class LossLedger:
    """Losses gathered per optimizer between its steps."""

    def __init__(self) -> None:
        self._samples: dict[int, _Sample] = {}
        self._after: dict[int, _Fingerprint] = {}
        self._pending: dict[int, LossSum] = {}
        self._unassigned = LossSum()  # losses of backward passes before any optimizer was known

    def track(self, index: int, optimizer: Optimizer) -> None:
        if index not in self._samples:
            self._samples[index] = _Sample(optimizer)

    def before_backward(self) -> dict[int, _Fingerprint]:
        for index in [i for i, sample in self._samples.items() if not sample.alive]:
            del self._samples[index]
            self._after.pop(index, None)
            self._pending.pop(index, None)
        before = {index: sample.fingerprint() for index, sample in self._samples.items()}
        for index, now in before.items():
            if index in self._after and _was_cleared(self._after[index], now):
                self._pending.pop(index, None)
        return before

    def after_backward(self, before: dict[int, _Fingerprint], loss: torch.Tensor | None) -> None:
        if not self._samples:
            self._unassigned.add(loss)
            return
        for index, sample in self._samples.items():
            after = sample.fingerprint()
            self._after[index] = after
            if after != before.get(index):
                self._pending.setdefault(index, LossSum()).add(loss)

    def take(self, index: int) -> LossSum:
        """The losses that fed this optimizer's step; the next step starts from nothing."""
        taken = self._pending.pop(index, LossSum()).merged(self._unassigned)
        self._unassigned = LossSum()
        return taken
