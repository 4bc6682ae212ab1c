"""What a watch measured, as plain data: per optimizer step, per optimizer, per run.

Host-side values only (floats, ints, strings), so a record is written to JSON and read back by
rank 0 under torchrun, or by a later process, without torch tensors in it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MANUAL_UPDATE = "manual update"  # the kind of the stand-in for an update written without an optimizer


@dataclass
class StepRecord:
    """One optimizer step (or one step the GradScaler skipped), as the host finally sees it."""

    index: int  # position among all steps of the run, every optimizer together
    optimizer: int  # position of the optimizer in Record.optimizers
    loss: float | None  # sum of the losses whose gradients this step applied (micro-batches)
    grad_norm: float  # global L2 norm of the gradients, as the optimizer sees them
    first_grad_norm: float  # norm of the first parameter's gradient (usually the first layer)
    nonfinite_grads: int  # gradient tensors holding a NaN or Inf
    nonfinite_params: int  # parameter tensors holding a NaN or Inf after the step
    scale: float | None  # the GradScaler's scale used for this step's backward
    skipped: bool  # the GradScaler skipped optimizer.step()
    backward_calls: int  # backward passes whose gradients this step applied
    memory_mb: float | None = None  # the process's memory when the step ran (see device_stats.memory_in_use_mb)
    first_zero_grad_fraction: float | None = None  # entries of the first parameter's gradient that are exactly 0


@dataclass
class OptimizerRecord:
    """An optimizer the watch saw: created under it, or first seen stepping."""

    kind: str  # its class name, or MANUAL_UPDATE
    name: str = ""  # the name the script assigned it to, when its line says (``opt_d = Adam(...)``)
    created_at: str = ""  # "train.py:42", where the script created it

    @property
    def label(self) -> str:
        """How a person tells it apart: ``opt_d (Adam)``, ``Adam at train.py:42`` or ``Adam``."""
        if self.name:
            return f"{self.name} ({self.kind})"
        if self.created_at:
            return f"{self.kind} at {self.created_at}"
        return self.kind


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
class Ending:
    """How the watched code ended."""

    stopped_by: str | None = None  # "steps", "backward passes", "seconds"; None: the script ended
    limit: float | None = None  # the limit that stopped it
    steps_wanted: int | None = None  # --steps
    swallowed_stops: int = 0  # times the script caught the stop and went on


@dataclass
class Record:
    """Everything one watch measured on one process."""

    steps: list[StepRecord] = field(default_factory=list)
    backward_losses: list[float] = field(default_factory=list)  # one per scalar backward call
    backward_calls: int = 0
    optimizers: list[OptimizerRecord] = field(default_factory=list)  # in order of first sight
    scalers: list[ScalerRecord] = field(default_factory=list)
    exception: ExceptionRecord | None = None
    ending: Ending = field(default_factory=Ending)
    rank: int = 0
    world_size: int = 1
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. how CUDA code was mapped to the CPU

    @property
    def stopped_at_limit(self) -> bool:
        return self.ending.stopped_by is not None

    def steps_of(self, optimizer: int) -> list[StepRecord]:
        return [s for s in self.steps if s.optimizer == optimizer]

    def to_json(self) -> dict[str, Any]:
        return json_safe({**asdict(self), "stopped_at_limit": self.stopped_at_limit})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        data = dict(data)
        data.pop("stopped_at_limit", None)  # a property now, kept in the JSON for readers
        data["steps"] = [StepRecord(**_floats_from_strings(s)) for s in data.get("steps", [])]
        data["backward_losses"] = [
            math.nan if v is None else float(v) for v in data.get("backward_losses", [])
        ]
        data["optimizers"] = [
            OptimizerRecord(kind=o) if isinstance(o, str) else OptimizerRecord(**o) for o in data.get("optimizers", [])
        ]
        data["scalers"] = [ScalerRecord(**_floats_from_strings(s)) for s in data.get("scalers", [])]
        data["ending"] = Ending(**data.get("ending", {}))
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


def _floats_from_strings(item: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, str) and k not in ("device",) else v for k, v in item.items()}
