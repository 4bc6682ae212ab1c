"""TL305: activations or logits hard-clamped in a module's forward during training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.model_structure import ModelStructure
from trainlint.analysis.regions import Regions
from trainlint.analysis.values import Facts, Scopes, Tensor, ValueFlow, number
from trainlint.context import FileContext, child_nodes
from trainlint.findings import Finding
from trainlint.rule import Example, Rule

# How many assignments back a local name is followed to see that it is made of module state only.
_STATE_DEPTH = 4
_CLAMP_FUNCTIONS = frozenset({"torch.clamp", "torch.clip"})
_CLAMP_METHODS = frozenset({"clamp", "clip", "clamp_", "clip_"})
# A clamp at float16's edge (65504) keeps an overflow from turning into inf: it cuts nothing a
# float16 value could hold anyway, and is left alone.
_FLOAT16_GUARD = 6.0e4


@dataclass(frozen=True)
class _Clamp:
    call: cst.Call
    value: cst.BaseExpression  # what is clamped
    low: float
    high: float


class HardClampInForward(Rule):
    """## What it does
    Finds a two-sided clamp with constant bounds (`x.clamp(-10, 10)`,
    `torch.clamp(logits, -20, 20)`, `x.clip_(-5, 5)`) on an activation computed in the `forward`
    of an `nn.Module` of the project (or in a method `forward` calls) that runs with gradients:
    not under `no_grad`/`inference_mode`, not in an `if not self.training:` branch.

    Not reported: one-sided clamps (`x.clamp(min=1e-6)`, a floor before a log or a division);
    clamps inside [-1, 1], which are nonlinearities rather than caps (a hard sigmoid or tanh, a
    ramp mask, a probability kept in `[eps, 1 - eps]` before a log: TL201's fix); a sigmoid or
    softmax output; the raw input of `forward`, parameters and buffers (`self.logit_scale`) and
    values computed from them alone (learned filter cut-offs kept below Nyquist: a constraint on
    the parameters, the same for every input), tensors that carry no gradient (made by `torch.arange`, detached); bounds at float16's edge
    (|bound| >= 60000, a guard against inf, not a cap).

    ## Why is this bad?
    `clamp` passes the gradient through inside the range and blocks it outside: a unit whose
    pre-clamp value is beyond the bound gets a gradient of exactly zero, so the weights feeding
    it stop learning from that example, and a unit that stays beyond the bound for every
    example stops learning altogether. The clamp also hides the growth that made the values
    large: an initialization, a learning rate or a missing normalization that should be fixed.
    Where a bound is wanted, a soft cap keeps a gradient everywhere:
    `cap * torch.tanh(x / cap)` (as Gemma 2 and Grok cap attention logits), or a normalization
    (`nn.LayerNorm`) before the layer that blew up.

    The rule is off by default: hard clamps in `forward` are also used on purpose (a VAE's
    log-variance clamped to [-30, 20] so that `exp` stays finite, a value kept in a known range
    that is rarely reached) and the linter cannot tell how often a bound is hit. Enable it with
    `extend-select = ["TL305"]` when hunting for dead units.

    ## Evidence
    Measured with torch 2.13 on CPU: a 16-64-2 classifier fed unnormalized readings (around 5)
    through a first layer initialized at 4x the usual scale, its hidden activations clamped to
    [-3, 3], 60 Adam steps: 69% of the first layer's gradient entries are exactly zero (median
    over the steps: those units never learn) and the loss goes from 1.58 to 0.440; with
    `3 * torch.tanh(h / 3)`, the same range as a soft cap, 1.6% are zero and the loss goes from
    1.42 to 0.371 (`trainlint confirm --examples TL305`).

    There is no automatic fix: removing a bound changes the model, and whether a soft cap, a
    normalization or a smaller learning rate is right depends on why the values grew.
    """

    code = "TL305"
    name = "hard-clamp-in-forward"
    summary = "Activations or logits hard-clamped in `forward` (zero gradient past the bounds)"
    level = "warning"
    default_enabled = False
    fix_applicability = None
    triggers = ("clamp", "clip")
    examples = (
        Example(
            code='''
            import torch.nn as nn


            class Tagger(nn.Module):
                def __init__(self, dim, classes):
                    super().__init__()
                    self.proj = nn.Linear(dim, dim)
                    self.head = nn.Linear(dim, classes)

                def forward(self, x):
                    h = self.proj(x).clamp(-10, 10)
                    logits = self.head(h)
                    return logits.clamp(-20, 20)
            ''',
            expect=[(11, 13), (13, 16)],
        ),
    )
    valid_examples = (
        '''
        import torch
        import torch.nn as nn

        class Tagger(nn.Module):
            def forward(self, x):
                h = self.proj(x)
                h = 10 * torch.tanh(h / 10)
                p = torch.sigmoid(self.head(h)).clamp(1e-6, 1 - 1e-6)
                return torch.log(p)
        ''',
    )

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        structure = ctx.get(ModelStructure)
        regions = ctx.get(Regions)
        flow = ctx.get(ValueFlow)
        for call in ctx.nodes.of(cst.Call):
            clamp = _two_sided_clamp(ctx, flow, call)
            if clamp is None or not _is_a_cap(clamp):
                continue
            owner = structure.forward_of(call)
            if owner is None or regions.computes_no_gradient(call) or regions.runs_only_in_eval(call):
                continue
            if not _is_activation(ctx, flow, clamp.value):
                continue
            yield ctx.report(self, call, _message(ctx, structure.forward_place(call), clamp))


def _message(ctx: FileContext, place: str, clamp: _Clamp) -> str:
    return (
        f"`{_short(ctx.code(clamp.value))}` is hard-clamped to [{clamp.low:g}, {clamp.high:g}] in "
        f"{place}: past the bounds its gradient is exactly zero, so units that reach them stop "
        "learning, and the growth that should be fixed is hidden; use a soft cap "
        f"(`{clamp.high:g} * torch.tanh(x / {clamp.high:g})`) or normalize"
    )


def _short(code: str) -> str:
    code = " ".join(code.split())
    return code if len(code) <= 40 else code[:37] + "..."


def _two_sided_clamp(ctx: FileContext, flow: ValueFlow, call: cst.Call) -> _Clamp | None:
    func = call.func
    qualified = ctx.qualified_name(func)
    positional = [a.value for a in call.args if a.keyword is None and not a.star]
    keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    if qualified in _CLAMP_FUNCTIONS:
        if not positional:
            return None
        value, bounds = positional[0], positional[1:]
    elif qualified is None and isinstance(func, cst.Attribute) and func.attr.value in _CLAMP_METHODS:
        value, bounds = func.value, positional
    else:
        return None
    bounds = bounds + [None, None]  # type: ignore[list-item]
    low = _constant(flow, keywords.get("min", bounds[0]))
    high = _constant(flow, keywords.get("max", bounds[1]))
    if low is None or high is None or low >= high:
        return None
    return _Clamp(call, value, low, high)


def _constant(flow: ValueFlow, expr: cst.BaseExpression | None) -> float | None:
    if expr is None:
        return None
    values = flow.values(expr)
    numbers = {number(v) for v in values}
    return numbers.pop() if len(numbers) == 1 and not values.unknown and None not in numbers else None


def _is_a_cap(clamp: _Clamp) -> bool:
    """A cap on values that may grow: not a clamp inside [-1, 1] (a hard sigmoid or tanh, a ramp
    mask, a probability kept off 0 and 1 before a log: TL201's fix), not a float16 guard."""
    magnitude = max(abs(clamp.low), abs(clamp.high))
    return 1.0 < magnitude < _FLOAT16_GUARD


def _is_activation(ctx: FileContext, flow: ValueFlow, value: cst.BaseExpression) -> bool:
    """The clamped value is computed in the forward pass with a gradient: not a parameter or
    buffer (``self.x``), not the raw input of the function, not a probability, not a tensor that
    carries no gradient."""
    base = value
    while isinstance(base, cst.Subscript):
        base = base.value
    if isinstance(base, cst.Attribute) and isinstance(base.value, cst.Name) and base.value.value == "self":
        return False
    if isinstance(base, cst.Name) and ctx.get(Scopes).only_parameters(base):
        return False
    if _from_module_state(ctx, value, _STATE_DEPTH):
        return False
    values = flow.values(value)
    if values.may(lambda v: isinstance(v, Tensor) and (v.is_probability or v.detached)):
        return False
    return not values.may(lambda v: isinstance(v, Facts) and v.detached)


def _from_module_state(ctx: FileContext, expr: cst.BaseExpression, depth: int) -> bool:
    """Every name the expression reads is ``self`` (parameters, buffers, settings), an import or a
    global, or a local assigned from such values only: the value is the module's own state, the
    same for every input, not an activation (``high = torch.clamp(low + torch.abs(self.band),
    50, 8000)``)."""
    if depth < 0:
        return False
    scopes = ctx.get(Scopes)
    for name in _read_names(expr):
        if name is None:
            return False
        if name.value == "self":
            continue
        values = scopes.assigned_values(name)  # none: an import, a module-level constant
        if values is None or not all(_from_module_state(ctx, value, depth - 1) for value in values):
            return False
    return True


def _read_names(expr: cst.BaseExpression) -> Iterator[cst.Name | None]:
    """The names an expression loads: not attribute names (``x.attr``) nor keywords (``dim=``).
    A lambda or comprehension (names of its own) yields None: it is not read here."""
    stack: list[cst.CSTNode] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Name):
            yield node
        elif isinstance(node, cst.Attribute):
            stack.append(node.value)
        elif isinstance(node, cst.Arg):
            stack.append(node.value)
        elif isinstance(node, (cst.Lambda, cst.BaseComp)):
            yield None
        else:
            stack.extend(child_nodes(node))
