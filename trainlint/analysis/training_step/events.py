"""What a training step does: its events and what they act on (optimizers and GradScalers)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import libcst as cst

from trainlint.analysis.values import (
    Instance,
    Values,
)
from trainlint.analysis.values.torch_semantics import (
    DEFAULT_INIT_SCALE,
    GRAD_SCALERS,
)

HELPER_DEPTH = 2  # helpers of helpers are followed, one level further is not


class EventKind(Enum):
    BACKWARD = "backward"  # loss.backward(), torch.autograd.backward(loss)
    SCALED_BACKWARD = "scaled_backward"  # scaler.scale(loss).backward()
    # accelerator.backward(loss), fabric.backward(loss), self.manual_backward(loss): the framework
    # may scale the loss itself, so rules about GradScaler scaling treat it as neither kind above.
    FRAMEWORK_BACKWARD = "framework_backward"
    UNSCALE = "unscale"  # scaler.unscale_(opt)
    GRAD_INSPECT = "grad_inspect"  # reads gradient values: isnan/isfinite/norm/logging of .grad
    CLIP = "clip"  # torch.nn.utils.clip_grad_norm_ / clip_grad_value_
    SCALER_STEP = "scaler_step"  # scaler.step(opt)
    OPT_STEP = "opt_step"  # opt.step()
    SCALER_UPDATE = "scaler_update"  # scaler.update()
    ZERO_GRAD = "zero_grad"  # opt.zero_grad(), model.zero_grad(), p.grad.zero_(), p.grad = None / a fresh value, del p.grad
    SKIP = "skip"  # continue / return / break that leaves the rest of the step


# A function holding one of these itself (not through a helper) is a TrainingStep.
BACKWARD_KINDS = frozenset({EventKind.BACKWARD, EventKind.SCALED_BACKWARD, EventKind.FRAMEWORK_BACKWARD})
CORE_KINDS = BACKWARD_KINDS | {EventKind.OPT_STEP, EventKind.SCALER_STEP}
STEP_KINDS = frozenset({EventKind.OPT_STEP, EventKind.SCALER_STEP})  # the optimizer's update, either way
# Events that finish a step: an exit that bypasses one of them skips the step.
_FINISHING_KINDS = frozenset(
    {EventKind.OPT_STEP, EventKind.SCALER_STEP, EventKind.SCALER_UPDATE, EventKind.ZERO_GRAD}
)

GRAD_SCALER_CONSTRUCTORS = GRAD_SCALERS
CLIP_FUNCTIONS = frozenset(
    {
        "torch.nn.utils.clip_grad_norm_",
        "torch.nn.utils.clip_grad_value_",
        "torch.nn.utils.clip_grad_norm",
        "torch.nn.utils.clip_grad.clip_grad_norm_",
        "torch.nn.utils.clip_grad.clip_grad_value_",
        "torch.nn.utils.clip_grad.clip_grad_norm",
    }
)
_FINITENESS_CALLS = frozenset({"isnan", "isinf", "isfinite", "isposinf", "isneginf"})
# Calls and methods that turn gradient values into a number someone looks at.
_INSPECTING_METHODS = frozenset(
    {"norm", "max", "min", "amax", "amin", "mean", "std", "var", "item", "tolist", "numpy", "any", "all",
     "median", "nansum", "count_nonzero", *_FINITENESS_CALLS}
)
_INSPECTING_CALLS = frozenset(
    {"norm", "vector_norm", "matrix_norm", "get_total_norm", "max", "min", "amax", "amin", "mean", "std", "var",
     "float", "any", "all", "allclose", "isclose", "count_nonzero", "print", "log", "log_dict", "log_metrics",
     "info", "debug", "warning", "warn", "error", "add_scalar", "add_scalars", "add_histogram", "histogram",
     *_FINITENESS_CALLS}
)
# Operations that pass gradient values on unchanged in meaning (a norm of their result still reads them).
_PASSING_METHODS = frozenset(
    {"detach", "clone", "float", "double", "half", "cpu", "cuda", "to", "view", "reshape", "flatten", "ravel",
     "contiguous", "abs", "pow", "square", "sqrt", "sum", "data", "T", "values"}
)
_PASSING_CALLS = frozenset(
    {"stack", "cat", "concat", "hstack", "vstack", "tensor", "as_tensor", "abs", "sum", "sqrt", "pow", "square",
     "flatten", "list", "tuple", "sorted", "parameters_to_vector"}
)
_OPTIMIZER_NAME = re.compile(r"optimi[sz]er|^optim(_|$)|(^|_)opt(_|$)|^opt[a-z0-9]{0,2}$|_opt[a-z0-9]?$")


Precision = Literal["fp16", "other", "unknown"]
LIGHTNING_FP16 = frozenset({"16", "16-mixed"})  # "16-true" casts the model: no loss scaling


@dataclass(frozen=True)
class FrameworkScaling:
    """A framework object whose ``backward`` scales the loss (the code shows float16 mixed
    precision), set on its FRAMEWORK_BACKWARD events and on the UNSCALE of its own clipping."""

    owner: str  # "accelerator" as written ("self" for Lightning's manual optimization)
    framework: str  # "Accelerate" | "Fabric" | "Lightning"

    @property
    def clip_call(self) -> str:
        """The framework's clip, which unscales first."""
        method = "clip_grad_norm_" if self.framework == "Accelerate" else "clip_gradients"
        return f"{self.owner}.{method}"

    @property
    def backward_call(self) -> str:
        return f"{self.owner}.manual_backward" if self.framework == "Lightning" else f"{self.owner}.backward"

    def condition(self) -> str:
        setting = '`mixed_precision="fp16"`' if self.framework == "Accelerate" else '`precision="16-mixed"`'
        return f"under {setting}"


@dataclass(frozen=True)
class SkipGuard:
    """What the ``if`` tests around a skip look at (for SKIP events)."""

    test: cst.BaseExpression | None = field(repr=False)  # the innermost enclosing `if` test inside the step
    checks_finiteness: bool = False  # isnan/isinf/isfinite (of anything: loss, gradients, a norm), or a flag set by one
    reads_grads: bool = False  # the tests read gradient values (directly, via a norm or a flag set from them)


@dataclass(frozen=True, eq=False)
class StepEvent:
    """One event of a step. Compared by identity."""

    kind: EventKind
    node: cst.CSTNode  # the call (or continue/return/break statement); inside the helper when inlined
    statement: cst.CSTNode  # the statement a fix edits, in the step's own function (the helper's call site)
    scaler: str | None = None  # "self.scaler" as written in the step's function
    optimizer: str | None = None  # "self.optimizer" / "opt" for unscale_/step/zero_grad (and clip, when known)
    via_helper: cst.FunctionDef | None = None  # the helper (outermost) the event was found in
    target: cst.BaseExpression | None = None  # the loss of a backward, the params of a clip, the `.grad` read
    call_site: cst.Call | None = None  # the call of the helper in the step's function, when inlined
    local_statement: cst.CSTNode | None = None  # the statement holding `node`, in whatever function holds it
    guard: SkipGuard | None = None  # for SKIP: what its enclosing `if` tests look at
    skip_keyword: str | None = None  # for SKIP: "continue" | "return" | "break" | "if" (a branch that leaves the step out)
    # for SKIP: the events that finish the step (steps, update, zero_grad) it leaves out
    bypassed: tuple[StepEvent, ...] = ()
    # for SCALED_BACKWARD: the loss is scaled on some paths only (``if amp: loss = scaler.scale(loss)``
    # in a helper): rules about scaled gradients cannot be sure of this backward's
    partly_scaled: bool = False
    # for GRAD_INSPECT: a NaN/Inf test, whose verdict is the same before and after unscaling
    # (only acting on it, by skipping or zeroing, goes behind the scaler's back)
    scale_invariant: bool = False
    # for GRAD_INSPECT: the value read goes into isnan/isinf/isfinite (``math.isfinite(norm.item())``)
    tests_finiteness: bool = False
    # for FRAMEWORK_BACKWARD: the framework object scales the loss; for UNSCALE: whose unscale it is
    framework: FrameworkScaling | None = None

    @property
    def skip_text(self) -> str:
        """How a SKIP is named in a message: "this `continue`"; "`if not skip_step:`" for a branch."""
        if self.skip_keyword != "if":
            return f"this `{self.skip_keyword}`"
        test = " ".join(cst.Module(body=[]).code_for_node(self.node).split())
        return f"`if {test}:`" if len(test) <= 40 else "this `if`"

    @property
    def anchor(self) -> cst.CSTNode:
        """The node to report: the helper's call when inlined, else the event's own node."""
        return self.call_site if self.call_site is not None else self.node


@dataclass(frozen=True)
class ScalerInfo:
    expr: str  # "self.scaler" as written
    constructor: str | None  # "torch.cuda.amp.GradScaler"; None when known by usage (a parameter `scaler`)
    enabled: bool | None  # True: always on; None: depends on a runtime value (`enabled=self.amp`)
    init_scale: float | None = DEFAULT_INIT_SCALE  # the scale it starts with; None when unknown

    def scale_text(self) -> str:
        """``65536x at start`` (``1024x`` for ``GradScaler(init_scale=1024)``), for messages."""
        if self.init_scale is None:
            return "its initial scale"
        return f"{self.init_scale:g}x at start"


@dataclass(frozen=True)
class OptimizerInfo:
    expr: str  # "self.optimizer" as written
    constructor: str | None  # "torch.optim.AdamW"; None when known by usage or name
    params_code: str | None  # "model.parameters()" when the constructor is seen
    params: cst.BaseExpression | None = field(default=None, compare=False)  # that expression's node, in this file
    instance: Instance | None = field(default=None, compare=False)  # the engine's value of the optimizer
    params_values: Values | None = field(default=None, compare=False)  # what its parameters are
