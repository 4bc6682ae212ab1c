"""Per-step statistics computed on the device, and copied to the host in batches.

Statistics stay on the device as 0-d or 1-d tensors until a batch of steps is flushed, so the
monitor adds a handful of kernel launches per step and no per-step synchronisation beyond the one
the GradScaler already does.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.optimizer import Optimizer

from trainlint.runtime.records import StepRecord

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class TensorStats:
    """Norms of a list of tensors, still on the device."""

    total: torch.Tensor  # 0-d, float32
    per_tensor: torch.Tensor  # 1-d, float32, in the order of the input
    # for gradients: the fraction of the first tensor's entries that are exactly zero (0-d)
    first_zero_fraction: torch.Tensor | None = None

    def scaled(self, factor: torch.Tensor) -> TensorStats:
        return TensorStats(self.total * factor, self.per_tensor * factor, self.first_zero_fraction)


def tensor_norms(tensors: Sequence[torch.Tensor]) -> TensorStats | None:
    """L2 norms as ``clip_grad_norm_`` computes them (same grouping, same order: same bits).

    Tensors are grouped by device and dtype and each group goes through the fused
    ``torch._foreach_norm``; float16/bfloat16 groups are reduced in float32 so that a large but
    finite gradient is not reported as an overflow. Called under ``torch.no_grad()``.
    """
    if not tensors:
        return None
    first = tensors[0]
    dtype, device = first.dtype, first.device
    if all(t.dtype == dtype and t.device == device and not t.is_sparse for t in tensors):
        # The common case, one group: no Python work per tensor beyond this check.
        stacked = torch.stack(_group_norms(list(tensors), first.device, first.dtype))
        return TensorStats(total=torch.linalg.vector_norm(stacked, 2.0), per_tensor=stacked)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    ordered: list[int] = []
    norms: list[torch.Tensor] = []
    for (device, dtype), indices in groups.items():
        norms.extend(_group_norms([_dense(tensors[i]) for i in indices], device, dtype))
        ordered.extend(indices)
    stacked = torch.stack([n.to(first.device) for n in norms])
    total = torch.linalg.vector_norm(stacked, 2.0)
    position = {index: k for k, index in enumerate(ordered)}
    stacked = stacked[[position[i] for i in range(len(tensors))]]  # back into the caller's order
    return TensorStats(total=total, per_tensor=stacked)


def _group_norms(members: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    low = torch.float32 if dtype in _LOW_PRECISION else None
    if device.type in ("cpu", "cuda"):
        return list(torch._foreach_norm(members, 2.0, dtype=low))
    return [torch.linalg.vector_norm(t, 2.0, dtype=low) for t in members]


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.coalesce().values() if t.is_sparse else t


def params_of(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def grad_stats(params: Sequence[torch.Tensor]) -> TensorStats | None:
    """Norms of the gradients, and how much of the first one (usually the first layer's weight)
    is exactly zero: units that learn nothing from this step (a clamp or a dead ReLU blocked them)."""
    grads = [p.grad for p in params if p.grad is not None]
    stats = tensor_norms(grads)
    if stats is not None:
        first = _dense(grads[0])
        stats.first_zero_fraction = (first == 0).sum(dtype=torch.float32) / max(first.numel(), 1)
    return stats


@dataclass
class PendingStep:
    """A step whose numbers are still tensors on the device."""

    index: int
    optimizer: int
    loss: torch.Tensor | None
    grads: TensorStats | None
    params: TensorStats | None
    scale: torch.Tensor | None
    skipped: bool | torch.Tensor
    backward_calls: int
    memory_mb: float | None = None


def memory_in_use_mb(device: torch.device | None = None) -> float | None:
    """Memory the run holds now, in MiB: CUDA's allocated bytes on a GPU; on the CPU the bytes
    malloc has handed out and not taken back (glibc's ``mallinfo2``: unlike the resident set, it
    does not stay flat while the run reuses what an earlier run freed), else the resident set
    (``/proc/self/statm``); None where neither can be read. What a graph kept alive from one
    iteration to the next makes grow step after step."""
    if device is not None and device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    held = _malloc_in_use()
    if held is not None:
        return held / 2**20
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


def _malloc_in_use() -> int | None:
    """Bytes in use in malloc's heap and in its mmapped blocks."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return int(info.uordblks + info.hblkhd)


def flush(pending: list[PendingStep]) -> list[StepRecord]:
    """Copy a batch of steps to the host: one stack and one copy per kind of number."""
    if not pending:
        return []
    losses = to_host([p.loss for p in pending])
    grad_totals = to_host([p.grads.total if p.grads else None for p in pending])
    grad_vectors = _to_host_vectors([p.grads.per_tensor if p.grads else None for p in pending])
    zero_fractions = to_host([p.grads.first_zero_fraction if p.grads else None for p in pending])
    param_vectors = _to_host_vectors([p.params.per_tensor if p.params else None for p in pending])
    scales = to_host([p.scale for p in pending])
    skipped = to_host([p.skipped if isinstance(p.skipped, torch.Tensor) else None for p in pending])
    records = []
    for k, p in enumerate(pending):
        grad_vector, param_vector = grad_vectors[k], param_vectors[k]
        was_skipped = p.skipped if isinstance(p.skipped, bool) else bool(skipped[k])
        records.append(
            StepRecord(
                index=p.index,
                optimizer=p.optimizer,
                loss=losses[k],
                grad_norm=0.0 if grad_totals[k] is None else grad_totals[k],
                first_grad_norm=grad_vector[0] if grad_vector else 0.0,
                nonfinite_grads=sum(not math.isfinite(v) for v in grad_vector),
                nonfinite_params=sum(not math.isfinite(v) for v in param_vector),
                scale=scales[k],
                skipped=was_skipped,
                backward_calls=p.backward_calls,
                memory_mb=p.memory_mb,
                first_zero_grad_fraction=zero_fractions[k],
            )
        )
    return records


def to_host(values: Sequence[torch.Tensor | None]) -> list[float | None]:
    present = [(k, v) for k, v in enumerate(values) if v is not None]
    out: list[float | None] = [None] * len(values)
    if present:
        device = present[0][1].device
        host = torch.stack([v.to(device, torch.float32).reshape(()) for _, v in present]).cpu().tolist()
        for (k, _), value in zip(present, host):
            out[k] = value
    return out


def _to_host_vectors(values: list[torch.Tensor | None]) -> list[list[float]]:
    present = [v for v in values if v is not None]
    if not present:
        return [[] for _ in values]
    device = present[0].device
    flat = torch.cat([v.to(device, torch.float32) for v in present]).cpu().tolist()
    out: list[list[float]] = []
    offset = 0
    for v in values:
        if v is None:
            out.append([])
            continue
        end = offset + v.numel()
        out.append(flat[offset:end])
        offset += v.numel()
    return out
