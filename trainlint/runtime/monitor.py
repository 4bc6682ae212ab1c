"""Watch optimizers and GradScalers while training code runs, without changing what it computes.

Where PyTorch has a public hook we use it: the global optimizer step pre/post hooks see every
optimizer step of every optimizer. Where it has none we wrap the one function at the class level
for the duration of the watch and restore it afterwards:

* ``torch.autograd.backward`` (``Tensor.backward`` calls it): the only place the loss is visible;
* ``GradScaler.scale`` / ``GradScaler.step``, and the same methods of any subclass that overrides
  them (FSDP's ``ShardedGradScaler``): the loss before scaling, and the steps a scaler skips,
  which never reach ``optimizer.step()``;
* ``Optimizer.__init__`` / ``GradScaler.__init__``: where each optimizer was created, and
  scalers created disabled.

Every hook runs outside ``torch.compile`` (``torch.compiler.disable``): in a compiled training
step Dynamo calls it as it is instead of tracing it, so the monitor's changing state never
becomes a guard that recompiles the step.

What a step's loss is (the micro-batches that fed it) is decided in ``attribution``, updates
written without an optimizer in ``manual_steps``, when to stop in ``stopping``, and the numbers
themselves stay on the device until ``device_stats`` copies a batch of them to the host.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from trainlint.runtime.attribution import LossLedger, LossSum
from trainlint.runtime.device_stats import (
    PendingStep,
    TensorStats,
    flush,
    grad_stats,
    memory_in_use_mb,
    params_of,
    tensor_norms,
    to_host,
)
from trainlint.runtime.manual_steps import ManualStep, ManualUpdates
from trainlint.runtime.records import (
    MANUAL_UPDATE,
    ExceptionRecord,
    OptimizerRecord,
    Record,
    ScalerRecord,
    StepRecord,
)
from trainlint.runtime.stopping import StopRun, Stopper
from trainlint.runtime.user_code import creation_site, format_user_traceback

GradScaler = torch.amp.GradScaler

__all__ = ["Monitor", "Record", "StepRecord", "StopRun", "watch"]

_active: Monitor | None = None
_patch_lock = threading.Lock()


def _outside_dynamo(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` as it is inside compiled code: a graph break, never a trace or a guard."""
    return torch.compiler.disable(fn, recursive=True)


@dataclass
class _ScalerStepState:
    """What happens inside one ``scaler.step(optimizer)`` call."""

    scale: torch.Tensor | None
    applied: bool = False  # the optimizer's own step ran
    grads: TensorStats | None = None
    params: TensorStats | None = None
    found_inf: torch.Tensor | None = None  # fused optimizers skip inside their kernel


@dataclass
class _ClosureStep:
    """``optimizer.step(closure)``: the step's numbers are those of the closure's first call."""

    calls: int = 0
    loss: LossSum | None = None
    grads: TensorStats | None = None


class Monitor:
    """Observes optimizers and GradScalers. Use as ``with watch(): ...`` or ``start()``/``stop()``.

    ``max_steps`` ends the watched code (by raising :class:`StopRun` from the hook that completes
    the step) once every optimizer that has stepped has made that many steps; ``max_backward``
    after that many backward passes in a row without an optimizer step (a loop that stopped
    reaching its optimizer); ``max_seconds`` after that much wall time.
    """

    def __init__(
        self,
        *,
        max_steps: int | None = None,
        max_backward: int | None = None,
        max_seconds: float | None = None,
        sync_every: int = 50,
        check_params: bool = True,
    ) -> None:
        self.max_steps = max_steps
        self.max_backward = max_backward
        self.sync_every = max(1, sync_every)
        self.check_params = check_params
        self._stopper = Stopper(steps=max_steps, seconds=max_seconds)
        self._record = Record(ending=self._stopper.ending)
        self._pending: list[PendingStep] = []
        self._backward_losses: list[torch.Tensor | None] = []
        self._backward_since_step = 0
        self._ledger = LossLedger()
        self._manual: ManualUpdates | None = ManualUpdates()  # until an optimizer steps
        self._manual_index: int | None = None
        self._optimizer_ids: weakref.WeakKeyDictionary[Optimizer, int] = weakref.WeakKeyDictionary()
        self._steps_per_optimizer: dict[int, int] = {}
        self._scaler_steps: dict[int, _ScalerStepState] = {}
        self._closure_steps: dict[int, _ClosureStep] = {}
        self._last_scaled: tuple[weakref.ref[torch.Tensor], torch.Tensor] | None = None
        self._step_depth = 0  # nested optimizers (wrappers that call an inner step): outermost only
        self._direct_grads: TensorStats | None = None
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
        self._install()  # imports torch._dynamo once (a second): not the run's time
        self._started_at = time.perf_counter()
        self._stopper.start()
        return self

    def stop(self, exc: BaseException | None = None) -> Record:
        """Stop watching; ``exc`` is an exception the watched code raised, to be recorded."""
        global _active
        if exc is not None:
            self.record_exception(exc)
        if self._running:
            self._running = False
            self._stopper.finish()
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()
            with _patch_lock:
                _active = None
            self._take_manual_step(check_limit=False)  # an update after the last backward pass
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
            return  # the Stopper has recorded why
        self._record.exception = ExceptionRecord(
            type=type(exc).__name__, message=str(exc), traceback=format_user_traceback(exc)
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
        pre = register_optimizer_step_pre_hook(_outside_dynamo(self._before_optimizer_step))
        post = register_optimizer_step_post_hook(_outside_dynamo(self._after_optimizer_step))
        self._undo += [pre.remove, post.remove]
        self._wrap(torch.autograd, "backward", self._wrapped_backward)
        self._wrap(GradScaler, "scale", self._wrapped_scale)
        self._wrap(GradScaler, "step", self._wrapped_scaler_step)
        self._wrap(GradScaler, "__init__", self._wrapped_scaler_init)
        self._wrap(Optimizer, "__init__", self._wrapped_optimizer_init)

    def _wrap(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        wrapper = _outside_dynamo(make(original))
        wrapper.__trainlint_wraps__ = original  # type: ignore[attr-defined]
        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def _wrap_scaler_subclass(self, cls: type) -> None:
        """A GradScaler subclass's own ``scale``/``step`` (they may never call GradScaler's)."""
        for klass in cls.__mro__:
            if klass is GradScaler:
                break
            for name, make in (("scale", self._wrapped_scale), ("step", self._wrapped_scaler_step)):
                method = klass.__dict__.get(name)
                if method is not None and not hasattr(method, "__trainlint_wraps__"):
                    self._wrap(klass, name, make)

    def _locate_rank(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            self._record.rank, self._record.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self._record.rank = int(os.environ.get("RANK", "0"))
            self._record.world_size = int(os.environ.get("WORLD_SIZE", "1"))

    # -- creation -----------------------------------------------------------------------------

    def _wrapped_optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(optimizer: Optimizer, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            if optimizer not in self._optimizer_ids:
                name, where = creation_site(optimizer)
                self._optimizer_index(optimizer, OptimizerRecord(type(optimizer).__name__, name, where))

        return __init__

    def _wrapped_scaler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(scaler: GradScaler, *args: Any, **kwargs: Any) -> None:
            original(scaler, *args, **kwargs)
            self._wrap_scaler_subclass(type(scaler))
            self._record.scalers.append(
                ScalerRecord(
                    device=str(getattr(scaler, "_device", "?")),
                    enabled=bool(scaler.is_enabled()),
                    init_scale=float(getattr(scaler, "_init_scale", math.nan)),
                )
            )

        return __init__

    def _optimizer_index(self, optimizer: Optimizer, seen: OptimizerRecord | None = None) -> int:
        if optimizer not in self._optimizer_ids:
            index = len(self._record.optimizers)
            self._optimizer_ids[optimizer] = index
            self._record.optimizers.append(seen or OptimizerRecord(type(optimizer).__name__))
            self._ledger.track(index, optimizer)
        return self._optimizer_ids[optimizer]

    # -- backward -----------------------------------------------------------------------------

    def _wrapped_scale(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def scale(scaler: GradScaler, outputs: Any) -> Any:
            self._stopper.at_hook()
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
            loss, before = self._before_backward(tensors)
            self._in_backward.active = True
            try:
                result = original(tensors, *args, **kwargs)
            finally:
                self._in_backward.active = False
            self._after_backward(loss, before)
            return result

        return backward

    def _before_backward(self, tensors: Any) -> tuple[torch.Tensor | None, Any]:
        self._stopper.at_hook()
        in_step = self._step_depth > 0  # a closure's backward, inside optimizer.step()
        if not in_step and self.max_backward is not None and self._backward_since_step >= self.max_backward:
            self._stopper.stop("backward passes", self.max_backward)
        if self._manual is not None:
            self._take_manual_step(check_limit=True, tensors=tensors)
        self._record.backward_calls += 1
        if not in_step:
            self._backward_since_step += 1
        return self._visible_loss(tensors), self._ledger.before_backward()

    def _after_backward(self, loss: torch.Tensor | None, before: Any) -> None:
        self._ledger.after_backward(before, loss)
        if self._manual is not None:
            self._manual.after_backward(loss)
        if loss is not None:
            self._backward_losses.append(loss)
            if len(self._backward_losses) >= self.sync_every:
                self._sync()

    def _visible_loss(self, tensors: Any) -> torch.Tensor | None:
        if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
            tensors = tensors[0]
        if not isinstance(tensors, torch.Tensor) or tensors.numel() != 1 or not tensors.is_floating_point():
            return None
        if self._last_scaled is not None and self._last_scaled[0]() is tensors:
            return self._last_scaled[1].reshape(())
        return tensors.detach().reshape(())

    def _take_manual_step(self, *, check_limit: bool, tensors: Any = None) -> None:
        """Record an update made without an optimizer since the last backward pass, if any."""
        if self._manual is None:
            return
        step = self._manual.before_backward(tensors) if tensors is not None else self._manual.take_step()
        if step is not None:
            self._record_manual_step(step, check_limit)

    def _record_manual_step(self, step: ManualStep, check_limit: bool) -> None:
        if self._manual_index is None:
            self._manual_index = len(self._record.optimizers)
            self._record.optimizers.append(OptimizerRecord(MANUAL_UPDATE))
        self._finish_step(self._manual_index, step.loss, step.grads, step.params, None, False, check_limit)

    # -- optimizer steps ----------------------------------------------------------------------

    def _before_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
        self._stopper.at_hook()
        self._step_depth += 1
        if self._step_depth > 1:
            return None
        self._manual = None  # an optimizer steps: parameter updates from now on are its own
        index = self._optimizer_index(optimizer)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if callable(closure):
            state = _ClosureStep()
            self._closure_steps[id(optimizer)] = state
            wrapped = self._closure_wrapper(optimizer, index, closure, state)
            if len(args) > 1:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}
        with torch.no_grad():
            grads = self._grad_stats(optimizer)
        state = self._scaler_steps.get(id(optimizer))
        if state is not None:
            state.applied, state.grads = True, grads
            state.found_inf = getattr(optimizer, "found_inf", None)
        else:
            self._direct_grads = grads
        return None

    def _closure_wrapper(
        self, optimizer: Optimizer, index: int, closure: Callable[[], Any], state: _ClosureStep
    ) -> Callable[[], Any]:
        """The gradient a closure optimizer acts on exists only once the closure has run."""

        @_outside_dynamo
        def closure_then_read() -> Any:
            result = closure()
            taken = self._ledger.take(index)  # later calls (a line search) are not the step's loss
            if state.calls == 0:
                state.loss = taken
                with torch.no_grad():
                    state.grads = self._grad_stats(optimizer)
            state.calls += 1
            return result

        return closure_then_read

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
        index = self._optimizer_index(optimizer)
        closure_state = self._closure_steps.pop(id(optimizer), None)
        if closure_state is not None:
            loss, grads = closure_state.loss or LossSum(), closure_state.grads
        else:
            loss, grads = self._ledger.take(index), self._direct_grads
        self._direct_grads = None
        self._finish_step(index, loss, grads, params, scale=None, skipped=False)

    def _wrapped_scaler_step(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def step(scaler: GradScaler, optimizer: Optimizer, *args: Any, **kwargs: Any) -> Any:
            if id(optimizer) in self._scaler_steps:  # a scaler inside a scaler: let it through
                return original(scaler, optimizer, *args, **kwargs)
            self._stopper.at_hook()
            self._manual = None
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
        index = self._optimizer_index(optimizer)
        loss = self._ledger.take(index)
        if state.applied:
            skipped: bool | torch.Tensor = False if state.found_inf is None else state.found_inf
            self._finish_step(index, loss, state.grads, state.params, state.scale, skipped)
            return
        # Skipped: optimizer.step() never ran, so the hooks saw nothing. The gradients were
        # unscaled in place by now and hold the Inf/NaN that made the scaler skip.
        with torch.no_grad():
            grads, params = self._grad_stats(optimizer), self._param_stats(optimizer)
        self._finish_step(index, loss, grads, params, state.scale, skipped=True)

    def _grad_stats(self, optimizer: Optimizer) -> TensorStats | None:
        stats = grad_stats(params_of(optimizer))
        grad_scale = getattr(optimizer, "grad_scale", None)
        if stats is not None and isinstance(grad_scale, torch.Tensor):
            # Fused optimizers unscale inside their kernel: report what they will apply.
            stats = stats.scaled(1.0 / grad_scale.to(stats.total.device))
        return stats

    def _param_stats(self, optimizer: Optimizer) -> TensorStats | None:
        if not self.check_params:
            return None
        return tensor_norms(params_of(optimizer))

    def _finish_step(
        self,
        index: int,
        loss: LossSum,
        grads: TensorStats | None,
        params: TensorStats | None,
        scale: torch.Tensor | None,
        skipped: bool | torch.Tensor,
        check_limit: bool = True,
    ) -> None:
        self._pending.append(
            PendingStep(
                index=self.steps_taken,
                optimizer=index,
                loss=loss.total,
                grads=grads,
                params=params,
                scale=scale,
                skipped=skipped,
                backward_calls=loss.backward_calls,
                memory_mb=memory_in_use_mb(None if loss.total is None else loss.total.device),
            )
        )
        self._backward_since_step = 0
        self._steps_per_optimizer[index] = self._steps_per_optimizer.get(index, 0) + 1
        if len(self._pending) >= self.sync_every:
            self._sync()
        if check_limit and self.max_steps is not None and min(self._steps_per_optimizer.values()) >= self.max_steps:
            self._stopper.stop("steps", self.max_steps)

    def _sync(self) -> None:
        pending, self._pending = self._pending, []
        self._record.steps.extend(flush(pending))
        losses, self._backward_losses = self._backward_losses, []
        self._record.backward_losses.extend(math.nan if v is None else v for v in to_host(losses))


def watch(
    *,
    max_steps: int | None = None,
    max_backward: int | None = None,
    max_seconds: float | None = None,
    sync_every: int = 50,
    check_params: bool = True,
) -> Monitor:
    """A monitor for the code inside ``with watch() as monitor:``; ``monitor.record`` afterwards.

    Also usable without ``with``: ``monitor = watch().start()`` ... ``record = monitor.stop()``.
    """
    return Monitor(
        max_steps=max_steps,
        max_backward=max_backward,
        max_seconds=max_seconds,
        sync_every=sync_every,
        check_params=check_params,
    )
