"""Run code written for CUDA mixed precision on the CPU without losing its mixed precision.

Without a GPU, ``torch.amp.GradScaler("cuda")`` and ``torch.autocast("cuda")`` warn and turn
themselves off, so float32 runs and the anti-patterns that float16 creates vanish. Their CPU
equivalents exist (CPU autocast runs matmuls and convolutions in float16; the CPU GradScaler
unscales and checks for Inf/NaN the same way), so this maps:

* ``torch.autocast("cuda", dtype)`` -> ``torch.autocast("cpu", dtype)``, float16 when unspecified,
  as CUDA's default, not the CPU's bfloat16;
* ``GradScaler("cuda")`` -> ``GradScaler("cpu")``;
* ``torch.cuda.synchronize()`` -> no-op; ``DataLoader(pin_memory=True)`` -> unpinned;
* with ``map_devices``: tensors and modules sent to ``"cuda"`` (``.cuda()``, ``.to("cuda")``,
  ``device="cuda"``) -> CPU, and ``pin_memory()`` -> the tensor itself, through a
  TorchFunctionMode, which sees every torch call without patching any of them. Seeing every call
  costs Python work per call (+88% CPU time on a small model), so ``uses_cuda_devices`` decides,
  from the code, whether the mode is needed at all.

Every mapping that happens is counted so the report can say so.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

FLOAT16_DIFFERENCE_NOTE = (
    "results may differ on a GPU: CPU float16 autocast casts fewer operations than CUDA's, and "
    "CPU kernels accumulate in float32 where some GPU kernels overflow in float16"
)
BFLOAT16_DIFFERENCE_NOTE = (
    "results may differ on a GPU: CPU bfloat16 autocast casts a different set of operations from CUDA's"
)
DEVICE_DIFFERENCE_NOTE = "results may differ on a GPU: CUDA kernels round differently from CPU kernels"

_CUDA_DEVICE = re.compile(r"cuda(:\d+)?")


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


class _DevicesToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch call to the CPU; pinning does nothing."""

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
        if func is torch.Tensor.pin_memory:
            self.counts["pin_memory"] += 1
            return args[0]
        if kwargs.get("pin_memory"):
            self.counts["pin_memory"] += 1
            kwargs = {**kwargs, "pin_memory": False}
        if any(_is_cuda(a) for a in args) or any(_is_cuda(v) for v in kwargs.values()):
            self.counts["device='cuda'"] += 1
            args = tuple(torch.device("cpu") if _is_cuda(a) else a for a in args)
            kwargs = {k: torch.device("cpu") if _is_cuda(v) else v for k, v in kwargs.items()}
        return func(*args, **kwargs)


class CudaOnCpu:
    """Context manager mapping CUDA autocast, GradScaler and (``map_devices``) devices to the CPU."""

    def __init__(self, map_devices: bool = True) -> None:
        self.counts: Counter[str] = Counter()
        self.map_devices = map_devices
        self._undo: list[Callable[[], None]] = []
        self._mode = _DevicesToCpu(self.counts)

    def __enter__(self) -> CudaOnCpu:
        self._patch(torch.amp.autocast_mode.autocast, "__init__", self._autocast_init)
        self._patch(torch.amp.GradScaler, "__init__", self._scaler_init)
        self._patch(torch.cuda, "synchronize", lambda original: lambda *a, **k: None)
        self._patch(torch.utils.data.DataLoader, "__init__", self._loader_init)
        if self.map_devices:
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

        def __init__(
            ac: Any, device_type: str, dtype: torch.dtype | None = None, enabled: bool = True, *args: Any, **kwargs: Any
        ) -> None:
            if device_type == "cuda":
                dtype = torch.float16 if dtype is None else dtype
                if enabled:
                    counts[f"autocast {str(dtype).removeprefix('torch.')}"] += 1
                device_type = "cpu"
            original(ac, device_type, dtype, enabled, *args, **kwargs)

        return __init__

    def _scaler_init(self, original: Callable[..., None]) -> Callable[..., None]:
        counts = self.counts

        def __init__(scaler: Any, device: str = "cuda", *args: Any, **kwargs: Any) -> None:
            if _is_cuda(device):
                counts["GradScaler"] += 1
                device = "cpu"
            original(scaler, device, *args, **kwargs)

        return __init__

    def _loader_init(self, original: Callable[..., None]) -> Callable[..., None]:
        counts, signature = self.counts, inspect.signature(original)

        def __init__(loader: Any, *args: Any, **kwargs: Any) -> None:
            bound = signature.bind(loader, *args, **kwargs)
            if bound.arguments.get("pin_memory"):
                counts["pin_memory"] += 1
                bound.arguments["pin_memory"] = False  # pinned memory is for copies to a GPU
            original(*bound.args, **bound.kwargs)

        return __init__

    def notes(self) -> list[str]:
        """What was mapped, in words, and how that may differ on a GPU; empty when nothing was."""
        if not self.counts:
            return []
        mapped = []
        autocast = sorted(k.split()[1] for k in self.counts if k.startswith("autocast"))
        for dtype in autocast:
            mapped.append(f'torch.autocast("cuda", {dtype}) ran as torch.autocast("cpu", {dtype})')
        if self.counts["GradScaler"]:
            mapped.append('GradScaler("cuda") ran as GradScaler("cpu")')
        if self.counts["tensor.cuda()"] or self.counts["device='cuda'"]:
            mapped.append('.cuda() and device "cuda" ran on the CPU')
        if self.counts["pin_memory"]:
            mapped.append("pinned memory was left unpinned")
        differences = []
        if "float16" in autocast:
            differences.append(FLOAT16_DIFFERENCE_NOTE)
        if "bfloat16" in autocast:
            differences.append(BFLOAT16_DIFFERENCE_NOTE)
        return ["cpu mapping: " + "; ".join(mapped), *(differences or [DEVICE_DIFFERENCE_NOTE])]


# --------------------------------------------------------------------------------------------
# Does the code put tensors on CUDA? (then the TorchFunctionMode is needed)


def uses_cuda_devices(text: str, cuda_available: bool | None = None) -> bool:
    """Whether ``text`` may place a tensor or module on a CUDA device.

    ``.cuda()``, a ``"cuda"``/``"cuda:N"`` string (``.to("cuda")``, ``device="cuda"``, an
    argparse default), ``torch.cuda.FloatTensor`` and pinned memory outside a DataLoader count; the device type given to autocast or
    GradScaler does not (mapped without the mode), nor a comparison (``x.device.type ==
    "cuda"``), nor, on a machine without CUDA, the branch that ``torch.cuda.is_available()``
    guards. Code that does not parse counts: better slow than wrong.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return True
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    finder = _CudaDeviceUse(available)
    finder.visit(tree)
    return finder.found


class _CudaDeviceUse(ast.NodeVisitor):
    _MAPPED_WITHOUT_MODE = {"autocast", "GradScaler"}

    def __init__(self, cuda_available: bool) -> None:
        self.cuda_available = cuda_available
        self.found = False

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if isinstance(func, ast.Attribute) and func.attr in ("cuda", "pin_memory"):
            self.found = True  # .cuda(), .pin_memory(): both need a GPU without the mapping
        if name != "DataLoader" and any(k.arg == "pin_memory" for k in node.keywords):
            self.found = True  # torch.empty(..., pin_memory=True); DataLoader's is patched cheaply
        if name in self._MAPPED_WITHOUT_MODE:  # its device type is mapped by the cheap patches
            self.visit(func)
            for value in [*node.args, *(k.value for k in node.keywords)]:
                if not isinstance(value, ast.Constant):
                    self.visit(value)
            return
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        return  # ``device.type == "cuda"`` asks, it does not place

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _CUDA_DEVICE.fullmatch(node.value):
            self.found = True

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.endswith("Tensor") and isinstance(node.value, ast.Attribute) and node.value.attr == "cuda":
            self.found = True  # torch.cuda.FloatTensor(...)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._guarded(node.test, [node.body], [node.orelse])

    def visit_If(self, node: ast.If) -> None:
        self._guarded(node.test, node.body, node.orelse)

    def _guarded(self, test: ast.expr, body: list[Any], orelse: list[Any]) -> None:
        self.visit(test)
        cuda_branch = None if self.cuda_available else _cuda_branch(test)
        for branch, children in (("body", body), ("orelse", orelse)):
            if branch != cuda_branch:
                for child in children:
                    self.visit(child)


def _cuda_branch(test: ast.expr) -> str | None:
    """Which branch runs only with CUDA: "body" for ``if torch.cuda.is_available():``,
    "orelse" for ``if not ...``; None for any other test."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _cuda_branch(test.operand)
        return None if inner is None else {"body": "orelse", "orelse": "body"}[inner]
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "is_available":
        return "body"
    return None
