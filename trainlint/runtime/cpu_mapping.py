"""Run code written for CUDA mixed precision on the CPU without losing its mixed precision.

Without a GPU, ``torch.amp.GradScaler("cuda")`` and ``torch.autocast("cuda")`` warn and turn
themselves off, so float32 runs and the anti-patterns that float16 creates vanish. Their CPU
equivalents exist (CPU autocast runs matmuls and convolutions in float16; the CPU GradScaler
unscales and checks for Inf/NaN the same way), so this maps:

* ``torch.autocast("cuda", dtype)`` -> ``torch.autocast("cpu", dtype)``, float16 when unspecified,
  as CUDA's default, not the CPU's bfloat16;
* ``GradScaler("cuda")`` -> ``GradScaler("cpu")``;
* tensors and modules sent to ``"cuda"`` (``.cuda()``, ``.to("cuda")``, ``device="cuda"``) -> CPU,
  through a TorchFunctionMode, which sees every torch call without patching any of them;
* ``torch.cuda.synchronize()`` -> no-op.

Every mapping that happens is counted so the report can say so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

FLOAT16_DIFFERENCE_NOTE = (
    "results may differ on a GPU: CPU float16 autocast casts fewer operations than CUDA's, and "
    "CPU kernels accumulate in float32 where some GPU kernels overflow in float16"
)
DEVICE_DIFFERENCE_NOTE = "results may differ on a GPU: CUDA kernels round differently from CPU kernels"


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


class _DevicesToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch call to the CPU."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.device:  # naming a device is harmless (and process groups register
            return func(*args, **kwargs)  # backends by name); using it for a tensor is mapped
        if func is torch.Tensor.cuda:
            self.counts["tensor.cuda()"] += 1
            return args[0].cpu()
        if any(_is_cuda(a) for a in args) or any(_is_cuda(v) for v in kwargs.values()):
            self.counts["device='cuda'"] += 1
            args = tuple(torch.device("cpu") if _is_cuda(a) else a for a in args)
            kwargs = {k: torch.device("cpu") if _is_cuda(v) else v for k, v in kwargs.items()}
        return func(*args, **kwargs)


class CudaOnCpu:
    """Context manager mapping CUDA autocast, GradScaler and devices to their CPU equivalents."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []
        self._mode = _DevicesToCpu(self.counts)

    def __enter__(self) -> CudaOnCpu:
        self._patch(torch.amp.autocast_mode.autocast, "__init__", self._autocast_init)
        self._patch(torch.amp.GradScaler, "__init__", self._scaler_init)
        self._patch(torch.cuda, "synchronize", lambda original: lambda *a, **k: None)
        self._mode.__enter__()
        self._undo.append(lambda: self._mode.__exit__(None, None, None))
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def _autocast_init(self, original: Callable[..., None]) -> Callable[..., None]:
        counts = self.counts

        def __init__(ac: Any, device_type: str, dtype: torch.dtype | None = None, *args: Any, **kwargs: Any) -> None:
            if device_type == "cuda":
                dtype = torch.float16 if dtype is None else dtype
                counts[f"autocast {str(dtype).removeprefix('torch.')}"] += 1
                device_type = "cpu"
            original(ac, device_type, dtype, *args, **kwargs)

        return __init__

    def _scaler_init(self, original: Callable[..., None]) -> Callable[..., None]:
        counts = self.counts

        def __init__(scaler: Any, device: str = "cuda", *args: Any, **kwargs: Any) -> None:
            if _is_cuda(device):
                counts["GradScaler"] += 1
                device = "cpu"
            original(scaler, device, *args, **kwargs)

        return __init__

    def notes(self) -> list[str]:
        """What was mapped, in words; empty when the code never asked for CUDA."""
        if not self.counts:
            return []
        mapped = []
        autocast = sorted(k for k in self.counts if k.startswith("autocast"))
        for key in autocast:
            dtype = key.split()[1]
            mapped.append(f'torch.autocast("cuda", {dtype}) ran as torch.autocast("cpu", {dtype})')
        if self.counts["GradScaler"]:
            mapped.append('GradScaler("cuda") ran as GradScaler("cpu")')
        if self.counts["tensor.cuda()"] or self.counts["device='cuda'"]:
            mapped.append('.cuda() and device "cuda" ran on the CPU')
        mixed_precision = bool(autocast) or bool(self.counts["GradScaler"])
        return [
            "cpu mapping: " + "; ".join(mapped),
            FLOAT16_DIFFERENCE_NOTE if mixed_precision else DEVICE_DIFFERENCE_NOTE,
        ]
