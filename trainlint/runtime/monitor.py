"""Watch optimizers and GradScalers while training code runs, without changing what it computes.

Where PyTorch has a public hook we use it: the global optimizer step pre/post hooks see every
optimizer step of every optimizer. Where it has none we wrap the one function at the class level
for the duration of the watch and restore it afterwards:

* ``torch.autograd.backward`` (``Tensor.backward`` calls it): the only place the loss is visible;
* ``GradScaler.scale`` / ``GradScaler.step``: a step that the scaler skips never reaches
  ``optimizer.step()``, so no optimizer hook can see it;
* ``Optimizer.__init__`` / ``GradScaler.__init__``: to report optimizers that were created but
  never stepped, and scalers that were created disabled.

Statistics stay on the device as 0-d tensors and are copied to the host in batches
(``sync_every`` steps), so the monitor adds a handful of kernel launches per step and no
per-step synchronisation beyond the one the GradScaler already does.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

GradScaler = torch.amp.GradScaler
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class StopRun(BaseException):
    """Raised from a hook to end the watched code once the step limit is reached.

    A BaseException, so that the ``except Exception`` blocks of training code do not catch it.
    """


@dataclass
class StepRecord:
    """One optimizer step (or one step the GradScaler skipped), as the host finally sees it."""

    index: int
    optimizer: int  # position of the optimizer in Record.optimizers
    loss: float | None  # mean of the losses backpropagated since the previous step
    grad_norm: float  # global L2 norm of the gradients, as the optimizer sees them
    first_grad_norm: float  # norm of the first parameter's gradient (usually the first layer)
    nonfinite_grads: int  # gradient tensors holding a NaN or Inf
    nonfinite_params: int  # parameter tensors holding a NaN or Inf after the step
    scale: float | None  # the GradScaler's scale used for this step's backward
    skipped: bool  # the GradScaler skipped optimizer.step()
    backward_calls: int  # backward calls since the previous step (gradient accumulation)


@dataclass
class ExceptionRecord:
    type: str
    message: str
    traceback: str

    def __str__(self) -> str:
        first_line = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return f"{self.type}: {first_line}" if first_line else self.type


@dataclass
class ScalerRecord:
    device: str
    enabled: bool
    init_scale: float


@dataclass
class Record:
    """Everything one watch measured on one process."""

    steps: list[StepRecord] = field(default_factory=list)
    backward_losses: list[float] = field(default_factory=list)  # one per scalar backward call
    backward_calls: int = 0
    optimizers: list[str] = field(default_factory=list)  # class names, in order of first sight
    scalers: list[ScalerRecord] = field(default_factory=list)
    exception: ExceptionRecord | None = None
    stopped_at_limit: bool = False
    rank: int = 0
    world_size: int = 1
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. how CUDA code was mapped to the CPU

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        data = dict(data)
        data["steps"] = [StepRecord(**_nan_for_none(s)) for s in data.get("steps", [])]
        data["backward_losses"] = [
            math.nan if v is None else float(v) for v in data.get("backward_losses", [])
        ]
        data["scalers"] = [ScalerRecord(**s) for s in data.get("scalers", [])]
        if data.get("exception"):
            data["exception"] = ExceptionRecord(**data["exception"])
        return cls(**data)


def json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as strings ("nan", "inf") that float() reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _nan_for_none(step: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, str) else v for k, v in step.items()}


# --------------------------------------------------------------------------------------------
# Per-step statistics, computed on the device


@dataclass
class _TensorStats:
    """Norms of a list of tensors, still on the device."""

    total: torch.Tensor  # 0-d, float32
    per_tensor: torch.Tensor  # 1-d, float32, in the order of the input


def _tensor_norms(tensors: Sequence[torch.Tensor]) -> _TensorStats | None:
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
        return _TensorStats(total=torch.linalg.vector_norm(stacked, 2.0), per_tensor=stacked)
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
    return _TensorStats(total=total, per_tensor=stacked)


def _group_norms(members: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    low = torch.float32 if dtype in _LOW_PRECISION else None
    if device.type in ("cpu", "cuda"):
        return list(torch._foreach_norm(members, 2.0, dtype=low))
    return [torch.linalg.vector_norm(t, 2.0, dtype=low) for t in members]


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.coalesce().values() if t.is_sparse else t


def _params_of(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@dataclass
class _PendingStep:
    """A step whose numbers are still tensors on the device."""

    index: int
    optimizer: int
    loss: torch.Tensor | None
    grads: _TensorStats | None
    params: _TensorStats | None
    scale: torch.Tensor | None
    skipped: bool | torch.Tensor
    backward_calls: int


def _flush(pending: list[_PendingStep]) -> list[StepRecord]:
    """Copy a batch of steps to the host: one stack and one copy per kind of number."""
    if not pending:
        return []
    losses = _to_host([p.loss for p in pending])
    grad_totals = _to_host([p.grads.total if p.grads else None for p in pending])
    grad_vectors = _to_host_vectors([p.grads.per_tensor if p.grads else None for p in pending])
    param_vectors = _to_host_vectors([p.params.per_tensor if p.params else None for p in pending])
    scales = _to_host([p.scale for p in pending])
    skipped = _to_host([p.skipped if isinstance(p.skipped, torch.Tensor) else None for p in pending])
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
            )
        )
    return records


def _to_host(values: list[torch.Tensor | None]) -> list[float | None]:
    present = [(k, v) for k, v in enumerate(values) if v is not None]
    out: list[float | None] = [None] * len(values)
    if present:
        device = present[0][1].device
        host = torch.stack([v.to(device, torch.float32) for _, v in present]).cpu().tolist()
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


# --------------------------------------------------------------------------------------------
# The monitor

_active: Monitor | None = None
_patch_lock = threading.Lock()


@dataclass
class _ScalerStepState:
    """What happens inside one ``scaler.step(optimizer)`` call."""

    scale: torch.Tensor | None
    applied: bool = False  # the optimizer's own step ran
    grads: _TensorStats | None = None
    params: _TensorStats | None = None
    found_inf: torch.Tensor | None = None  # fused optimizers skip inside their kernel


class Monitor:
    """Observes optimizers and GradScalers. Use as ``with watch(): ...`` or ``start()``/``stop()``.

    ``max_steps`` ends the watched code (by raising :class:`StopRun` from the hook that completes
    the step) once every optimizer that has stepped has made that many steps; ``max_backward``
    does the same after that many backward calls in a row without an optimizer step, for loops
    that stop reaching the optimizer (gradient accumulation steps long before that).
    """

    def __init__(
        self,
        *,
        max_steps: int | None = None,
        max_backward: int | None = None,
        sync_every: int = 50,
        check_params: bool = True,
    ) -> None:
        self.max_steps = max_steps
        self.max_backward = max_backward
        self.sync_every = max(1, sync_every)
        self.check_params = check_params
        self._record = Record()
        self._pending: list[_PendingStep] = []
        # Losses since the last step, as a running sum on the device: gradient accumulation over
        # many micro-batches costs one add per backward and no growing list.
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._backward_losses: list[torch.Tensor] = []
        self._backward_since_step = 0
        self._optimizer_ids: weakref.WeakKeyDictionary[Optimizer, int] = weakref.WeakKeyDictionary()
        self._steps_per_optimizer: dict[int, int] = {}
        self._scaler_steps: dict[int, _ScalerStepState] = {}
        self._last_scaled: tuple[weakref.ref[torch.Tensor], torch.Tensor] | None = None
        self._step_depth = 0  # nested optimizers (wrappers that call an inner step): outermost only
        self._direct_grads: _TensorStats | None = None
        self._in_backward = threading.local()
        self._undo: list[Callable[[], None]] = []
        self._started_at = 0.0
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Monitor:
        global _active
        with _patch_lock:
            if _active is not None:
                raise RuntimeError("another trainlint monitor is already watching this process")
            _active = self
        self._running = True
        self._started_at = time.perf_counter()
        self._install()
        return self

    def stop(self, exc: BaseException | None = None) -> Record:
        """Stop watching; ``exc`` is an exception the watched code raised, to be recorded."""
        global _active
        if exc is not None:
            self.record_exception(exc)
        if self._running:
            self._running = False
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()
            with _patch_lock:
                _active = None
            self._record.wall_time_s += time.perf_counter() - self._started_at
            self._locate_rank()
        return self.record

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self.stop(exc)
        # The step limit is ours to raise and ours to catch; every other exception propagates.
        return isinstance(exc, StopRun)

    def record_exception(self, exc: BaseException) -> None:
        if isinstance(exc, StopRun):
            self._record.stopped_at_limit = True
            return
        self._record.exception = ExceptionRecord(
            type=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )

    def note(self, text: str) -> None:
        """Add a line to the record, e.g. how CUDA code was mapped to the CPU."""
        if text not in self._record.notes:
            self._record.notes.append(text)

    @property
    def record(self) -> Record:
        """The record so far; reading it copies pending device statistics to the host."""
        self._sync()
        return self._record

    @property
    def steps_taken(self) -> int:
        return len(self._record.steps) + len(self._pending)

    # -- installation -------------------------------------------------------------------------

    def _install(self) -> None:
        pre = register_optimizer_step_pre_hook(self._before_optimizer_step)
        post = register_optimizer_step_post_hook(self._after_optimizer_step)
        self._undo += [pre.remove, post.remove]
        self._wrap(torch.autograd, "backward", self._wrapped_backward)
        self._wrap(GradScaler, "scale", self._wrapped_scale)
        self._wrap(GradScaler, "step", self._wrapped_scaler_step)
        self._wrap(GradScaler, "__init__", self._wrapped_scaler_init)
        self._wrap(Optimizer, "__init__", self._wrapped_optimizer_init)

    def _wrap(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def _locate_rank(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            self._record.rank, self._record.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self._record.rank = int(os.environ.get("RANK", "0"))
            self._record.world_size = int(os.environ.get("WORLD_SIZE", "1"))

    # -- what the wrappers and hooks record -------------------------------------------------------

    def _wrapped_optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(optimizer: Optimizer, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            self._optimizer_index(optimizer)

        return __init__

    def _wrapped_scaler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(scaler: GradScaler, *args: Any, **kwargs: Any) -> None:
            original(scaler, *args, **kwargs)
            self._record.scalers.append(
                ScalerRecord(
                    device=str(getattr(scaler, "_device", "?")),
                    enabled=bool(scaler.is_enabled()),
                    init_scale=float(getattr(scaler, "_init_scale", math.nan)),
                )
            )

        return __init__

    def _wrapped_scale(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def scale(scaler: GradScaler, outputs: Any) -> Any:
            scaled = original(scaler, outputs)
            if isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor) and scaled is not outputs:
                # Remember the unscaled loss: the backward call will see only the scaled one.
                self._last_scaled = (weakref.ref(scaled), outputs.detach())
            return scaled

        return scale

    def _wrapped_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(self._in_backward, "active", False):  # reentrant checkpointing
                return original(tensors, *args, **kwargs)
            self._before_backward(tensors)
            self._in_backward.active = True
            try:
                return original(tensors, *args, **kwargs)
            finally:
                self._in_backward.active = False

        return backward

    def _before_backward(self, tensors: Any) -> None:
        if self.max_backward is not None and self._backward_since_step >= self.max_backward:
            raise StopRun(f"stopped after {self.max_backward} backward calls without an optimizer step")
        self._record.backward_calls += 1
        self._backward_since_step += 1
        loss = self._visible_loss(tensors)
        if loss is not None:
            self._add_loss(loss)
            self._backward_losses.append(loss)
            if len(self._backward_losses) >= self.sync_every:
                self._sync()

    def _add_loss(self, loss: torch.Tensor) -> None:
        if self._loss_sum is None:
            self._loss_sum = loss.to(torch.float32)
        else:
            self._loss_sum = self._loss_sum + loss.to(self._loss_sum.device, torch.float32)
        self._loss_count += 1

    def _take_loss(self) -> torch.Tensor | None:
        """The mean loss since the previous step (None if none was seen); starts a new sum."""
        total, count = self._loss_sum, self._loss_count
        self._loss_sum, self._loss_count = None, 0
        if total is None:
            return None
        return total if count == 1 else total / count

    def _visible_loss(self, tensors: Any) -> torch.Tensor | None:
        if not isinstance(tensors, torch.Tensor) or tensors.numel() != 1 or not tensors.is_floating_point():
            return None
        if self._last_scaled is not None and self._last_scaled[0]() is tensors:
            return self._last_scaled[1].reshape(())
        return tensors.detach().reshape(())

    def _optimizer_index(self, optimizer: Optimizer) -> int:
        if optimizer not in self._optimizer_ids:
            self._optimizer_ids[optimizer] = len(self._record.optimizers)
            self._record.optimizers.append(type(optimizer).__name__)
        return self._optimizer_ids[optimizer]

    def _before_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._step_depth += 1
        if self._step_depth > 1:
            return
        with torch.no_grad():
            grads = self._grad_stats(optimizer)
        state = self._scaler_steps.get(id(optimizer))
        if state is not None:
            state.applied, state.grads = True, grads
            state.found_inf = getattr(optimizer, "found_inf", None)
        else:
            self._direct_grads = grads

    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._step_depth -= 1
        if self._step_depth > 0:
            return
        with torch.no_grad():
            params = self._param_stats(optimizer)
        state = self._scaler_steps.get(id(optimizer))
        if state is not None:  # the GradScaler wrapper finishes the step
            state.params = params
            return
        grads, self._direct_grads = self._direct_grads, None
        self._finish_step(optimizer, grads, params, scale=None, skipped=False)

    def _wrapped_scaler_step(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def step(scaler: GradScaler, optimizer: Optimizer, *args: Any, **kwargs: Any) -> Any:
            if id(optimizer) in self._scaler_steps:  # a scaler inside a scaler: let it through
                return original(scaler, optimizer, *args, **kwargs)
            scale = getattr(scaler, "_scale", None) if scaler.is_enabled() else None
            state = _ScalerStepState(scale=None if scale is None else scale.detach().clone())
            self._scaler_steps[id(optimizer)] = state
            try:
                result = original(scaler, optimizer, *args, **kwargs)
            finally:
                del self._scaler_steps[id(optimizer)]
                self._step_depth = 0  # an exception inside optimizer.step() skips the post-hook
            self._finish_scaler_step(optimizer, state)
            return result

        return step

    def _finish_scaler_step(self, optimizer: Optimizer, state: _ScalerStepState) -> None:
        if state.applied:
            skipped: bool | torch.Tensor = False if state.found_inf is None else state.found_inf
            self._finish_step(optimizer, state.grads, state.params, state.scale, skipped)
            return
        # Skipped: optimizer.step() never ran, so the hooks saw nothing. The gradients were
        # unscaled in place by now and hold the Inf/NaN that made the scaler skip.
        with torch.no_grad():
            grads, params = self._grad_stats(optimizer), self._param_stats(optimizer)
        self._finish_step(optimizer, grads, params, state.scale, skipped=True)

    def _grad_stats(self, optimizer: Optimizer) -> _TensorStats | None:
        grads = [p.grad for p in _params_of(optimizer) if p.grad is not None]
        stats = _tensor_norms(grads)
        grad_scale = getattr(optimizer, "grad_scale", None)
        if stats is not None and isinstance(grad_scale, torch.Tensor):
            # Fused optimizers unscale inside their kernel: report what they will apply.
            inverse = 1.0 / grad_scale.to(stats.total.device)
            stats = _TensorStats(stats.total * inverse, stats.per_tensor * inverse)
        return stats

    def _param_stats(self, optimizer: Optimizer) -> _TensorStats | None:
        if not self.check_params:
            return None
        return _tensor_norms(_params_of(optimizer))

    def _finish_step(
        self,
        optimizer: Optimizer,
        grads: _TensorStats | None,
        params: _TensorStats | None,
        scale: torch.Tensor | None,
        skipped: bool | torch.Tensor,
    ) -> None:
        which = self._optimizer_index(optimizer)
        self._pending.append(
            _PendingStep(
                index=self.steps_taken,
                optimizer=which,
                loss=self._take_loss(),
                grads=grads,
                params=params,
                scale=scale,
                skipped=skipped,
                backward_calls=self._backward_since_step,
            )
        )
        self._backward_since_step = 0
        self._steps_per_optimizer[which] = self._steps_per_optimizer.get(which, 0) + 1
        if len(self._pending) >= self.sync_every:
            self._sync()
        if self.max_steps is not None and min(self._steps_per_optimizer.values()) >= self.max_steps:
            raise StopRun(f"stopped after {self.max_steps} optimizer steps")

    def _sync(self) -> None:
        pending, self._pending = self._pending, []
        self._record.steps.extend(_flush(pending))
        losses, self._backward_losses = self._backward_losses, []
        self._record.backward_losses.extend(
            math.nan if v is None else v for v in _to_host(list(losses))
        )


def watch(
    *,
    max_steps: int | None = None,
    max_backward: int | None = None,
    sync_every: int = 50,
    check_params: bool = True,
) -> Monitor:
    """A monitor for the code inside ``with watch() as monitor:``; ``monitor.record`` afterwards.

    Also usable without ``with``: ``monitor = watch().start()`` ... ``record = monitor.stop()``.
    """
    return Monitor(
        max_steps=max_steps,
        max_backward=max_backward,
        sync_every=sync_every,
        check_params=check_params,
    )
