"""Parameter updates written without an optimizer (``p.data.add_(p.grad, alpha=-lr)``).

Until an optimizer steps, each backward pass remembers the leaf tensors it reached (from its
graph, before backward frees it), their gradients' norms once it is done, and their values'
norms. If those values differ when the next backward pass starts (or the watch ends), the code in
between updated them: that was a step, and it is recorded like an optimizer's, with the losses
and gradients that fed it. Comparing the values costs one host synchronisation per backward
pass, which only code that has not stepped an optimizer (yet) pays. Version counters alone would
miss updates through ``.data``, which has a counter of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlint.runtime.attribution import LossSum
from trainlint.runtime.device_stats import TensorStats, grad_stats, tensor_norms


@dataclass
class ManualStep:
    loss: LossSum
    grads: TensorStats | None
    params: TensorStats | None


@dataclass
class _Candidate:
    leaves: list[torch.Tensor]
    grads: TensorStats | None = None
    values: TensorStats | None = None


def reached_leaves(tensors: object) -> list[torch.Tensor]:
    """The leaf tensors (parameters) whose gradients a backward pass from ``tensors`` computes."""
    roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors) if isinstance(tensors, (list, tuple)) else []
    leaves: dict[int, torch.Tensor] = {}
    pending = []
    for root in roots:
        if not isinstance(root, torch.Tensor):
            continue
        if root.grad_fn is None and root.requires_grad:
            leaves[id(root)] = root
        elif root.grad_fn is not None:
            pending.append(root.grad_fn)
    seen = set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if isinstance(variable, torch.Tensor):
            leaves[id(variable)] = variable
            continue
        pending.extend(next_node for next_node, _ in node.next_functions)
    return list(leaves.values())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN included (a NaN weight that stays NaN is not an update)."""
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


class ManualUpdates:
    """Recognises updates of the leaves a backward pass reached, made after it."""

    def __init__(self) -> None:
        self._candidate: _Candidate | None = None
        self._loss = LossSum()

    def before_backward(self, tensors: object) -> ManualStep | None:
        """A step, if the previous backward pass's leaves changed since; then remember this one's."""
        step = self.take_step()
        self._candidate = _Candidate(reached_leaves(tensors))
        return step

    def after_backward(self, loss: torch.Tensor | None) -> None:
        self._loss.add(loss)
        candidate = self._candidate
        if candidate is None or not candidate.leaves:
            return
        with torch.no_grad():
            candidate.grads = grad_stats(candidate.leaves)
            candidate.values = tensor_norms([leaf.detach() for leaf in candidate.leaves])

    def take_step(self) -> ManualStep | None:
        """The update made since the last backward pass, if any (call when the watch ends, too)."""
        candidate = self._candidate
        if candidate is None or candidate.values is None:
            return None
        with torch.no_grad():
            now = tensor_norms([leaf.detach() for leaf in candidate.leaves])
        if now is None or _same_bits(now.per_tensor, candidate.values.per_tensor):
            return None  # nothing changed: gradient accumulation goes on
        step = ManualStep(loss=self._loss, grads=candidate.grads, params=now)
        self._candidate, self._loss = None, LossSum()
        return step
