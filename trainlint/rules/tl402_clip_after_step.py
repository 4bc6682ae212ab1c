"""TL402: gradients clipped after the optimizer step that already used them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from trainlint.analysis.imports import dotted_name
from trainlint.analysis.training_step import (
    BACKWARD_KINDS,
    STEP_KINDS,
    EventKind,
    StepEvent,
    TrainingStep,
    TrainingSteps,
    unscale_insertion,
)
from trainlint.context import FileContext, child_nodes
from trainlint.findings import Edit, Finding, Fix
from trainlint.rule import Example, Rule


@dataclass(frozen=True)
class _LateClip:
    clip: StepEvent
    step: StepEvent  # the step it follows (the last one before it on its paths)


class ClipAfterStep(Rule):
    """## What it does
    Reports `clip_grad_norm_` / `clip_grad_value_` called after `optimizer.step()` (or
    `scaler.step(optimizer)`) in the same training step, on the gradients of the parameters that
    step just updated: on every path through the clip, that step has already run since the last
    `backward()`. A clip of another model's parameters between two optimizers' steps (GANs) is
    not reported.

    ## Why is this bad?
    The optimizer reads `.grad` inside `step()`. Clipping afterwards rescales gradients that have
    already been used and that the next `zero_grad()` (or the next `backward()`) discards, so the
    update is never clipped: a spike with a gradient norm of 1,000 moves the weights 1,000 times
    as far as a `max_norm=1.0` clip would have allowed. The code reads as protected while it is
    not, and the logged norm is the only trace.

    The fix moves the clip statement (with the comment lines right above it) before the step.
    With a GradScaler it also inserts `scaler.unscale_(optimizer)` first when the step has none,
    so the clip sees true gradients rather than gradients multiplied by the scale (65,536 by
    default). It is offered only when the move is simple: the clip is a statement of its own in
    the same block as the step, and no statement in between reads what it assigns or rebinds a
    name it reads.

    ## Evidence
    Measured with torch 2.13 on CPU: one SGD step (lr 0.1) on a gradient of norm 1,000 moves the
    weights by 0.1 with `clip_grad_norm_(params, 1.0)` before `step()`, and by 100.0 with the
    same clip after it.

    ## Fix safety
    Unsafe: the original clip never acted on a step (the optimizer had already used the
    gradients), so the run trained without clipping. Moving the clip before the step turns
    clipping on at a `max_norm` that was never tried: every step whose gradient norm exceeds it
    changes. Review the threshold.
    """

    code = "TL402"
    name = "clip-after-step"
    summary = "Gradients clipped after the optimizer step that used them"
    level = "error"
    fix_applicability = "unsafe"
    triggers = ("clip_grad",)
    examples = [
        Example(
            code='''
            import torch

            def train(model, optimizer, loader):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    optimizer.step()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            ''',
            expect=[(9, 9)],
            unsafe=True,
            fixed='''
            import torch

            def train(model, optimizer, loader):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                    optimizer.step()
            ''',
        ),
    ]
    valid_examples = [
        '''
        import torch

        def train(model, optimizer, scaler, loader):
            for x, y in loader:
                optimizer.zero_grad()
                scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                scaler.step(optimizer)
                scaler.update()
        ''',
    ]

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        for step in ctx.get(TrainingSteps).all_steps():
            for late in _late_clips(step):
                message = (
                    f"`{_short(ctx, late.clip.anchor)}` runs after `{_short(ctx, late.step.anchor)}` has "
                    "already used the gradients, so the update is never clipped"
                )
                yield ctx.report(self, late.clip.anchor, message, _move_fix(ctx, step, late))


# -- detection -------------------------------------------------------------------------------------
def _late_clips(step: TrainingStep) -> Iterator[_LateClip]:
    """Clips that follow a step of the optimizer owning their parameters on every path through them."""

    def last_step(previous: tuple[StepEvent, ...], event: StepEvent) -> tuple[StepEvent, ...]:
        if event.kind in BACKWARD_KINDS:
            return ()
        return (event,) if event.kind in STEP_KINDS else previous

    fold = step.flow.fold((), last_step)  # the last step since the last backward, if any
    for clip in step.of_kind(EventKind.CLIP):
        before = {_step_before(step, last[0] if last else None, clip) for last in fold.before(clip)}
        if len(before) == 1 and (previous := before.pop()) is not None:
            yield _LateClip(clip, previous)


def _step_before(step: TrainingStep, last: StepEvent | None, clip: StepEvent) -> StepEvent | None:
    """The last optimizer step since the last backward, when it updates the clipped parameters."""
    if last is None or last.scaler in step.uncertain_scalers:
        return None  # a scaler of unknown origin may clip or step in its own way
    if len(step.optimizers) <= 1:
        return last
    if clip.optimizer is not None:  # the one optimizer built over exactly the clipped parameters
        return last if clip.optimizer == last.optimizer else None
    clipped = _params_owner(clip.target)
    owner = _params_owner_of_optimizer(step, last.optimizer)
    return last if clipped is not None and clipped == owner else None


def _params_owner(params: cst.BaseExpression | None) -> str | None:
    """``netD`` for ``netD.parameters()``; the code of a plain name or attribute otherwise."""
    if isinstance(params, cst.Call) and isinstance(params.func, cst.Attribute):
        if params.func.attr.value in ("parameters", "named_parameters"):
            return dotted_name(params.func.value)
        return None
    return dotted_name(params) if params is not None else None


def _params_owner_of_optimizer(step: TrainingStep, optimizer: str | None) -> str | None:
    info = step.optimizers.get(optimizer) if optimizer is not None else None
    if info is None or info.params_code is None:
        return None
    try:
        return _params_owner(cst.parse_expression(info.params_code))
    except cst.ParserSyntaxError:
        return None


# -- the fix ----------------------------------------------------------------------------------------
def _move_fix(ctx: FileContext, step: TrainingStep, late: _LateClip) -> Fix | None:
    clip, stepped = late.clip, late.step
    if clip.via_helper is not None or not _is_plain_clip_statement(clip):
        return None
    if not _same_block(ctx, clip.statement, stepped.statement):
        return None
    between = _statements_between(ctx, stepped.statement, clip.statement)
    if between is None or _crosses_a_use(ctx, clip.statement, between):
        return None
    unscale = _missing_unscale(step, stepped)
    if unscale is False:
        return None
    moved_start, moved_end = _lines_with_comments(ctx, clip.statement, stepped.statement)
    step_line_start = _line_start(ctx, stepped.statement)
    if moved_start is None or step_line_start is None:
        return None
    moved = ctx.source.text[moved_start:moved_end]
    if not moved.endswith(("\n", "\r")):
        moved += ctx.source.newline
    if unscale:
        indent = ctx.statement_indent(stepped.statement) or ""
        moved = f"{indent}{unscale}{ctx.source.newline}{moved}"
    edits = [Edit(step_line_start, step_line_start, moved), Edit(moved_start, moved_end, "")]
    return ctx.fix(edits, "unsafe", "Move the clip before the optimizer step")


def _is_plain_clip_statement(clip: StepEvent) -> bool:
    """``clip(...)`` or ``norm = clip(...)`` alone on its statement line."""
    statement = clip.statement
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    if isinstance(small, cst.Expr):
        return small.value is clip.node
    if isinstance(small, cst.Assign):
        return small.value is clip.node and all(isinstance(t.target, cst.Name) for t in small.targets)
    if isinstance(small, cst.AnnAssign):
        return small.value is clip.node and isinstance(small.target, cst.Name)
    return False


def _same_block(ctx: FileContext, first: cst.CSTNode, second: cst.CSTNode) -> bool:
    parent = ctx.parent(first)
    return parent is not None and parent is ctx.parent(second)


def _statements_between(ctx: FileContext, first: cst.CSTNode, last: cst.CSTNode) -> list[cst.CSTNode] | None:
    body = getattr(ctx.parent(first), "body", None)
    if not isinstance(body, (list, tuple)):
        return None
    indexes = {id(s): i for i, s in enumerate(body)}
    start, end = indexes.get(id(first)), indexes.get(id(last))
    if start is None or end is None or start >= end:
        return None
    return list(body[start + 1 : end])


def _crosses_a_use(ctx: FileContext, clip_statement: cst.CSTNode, between: list[cst.CSTNode]) -> bool:
    """True when a statement between the step and the clip reads a name the clip assigns, or
    assigns a name the clip reads: moving the clip up would change what either sees."""
    clip_names = _names(clip_statement)
    assigned_by_clip = _assigned_names(clip_statement)
    for statement in between:
        if _names(statement) & assigned_by_clip or _assigned_names(statement) & clip_names:
            return True
    return False


def _names(node: cst.CSTNode) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Name):
            found.add(current.value)
        stack.extend(child_nodes(current))
    return found


def _assigned_names(node: cst.CSTNode) -> set[str]:
    """Names a statement binds (assignment targets, loop and ``with`` targets, walrus)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        targets: list[cst.CSTNode] = []
        if isinstance(current, cst.Assign):
            targets = [t.target for t in current.targets]
        elif isinstance(current, (cst.AugAssign, cst.AnnAssign, cst.For)):
            targets = [current.target]
        elif isinstance(current, cst.NamedExpr):
            targets = [current.target]
        elif isinstance(current, cst.AsName):
            targets = [current.name]
        for target in targets:
            found |= _names(target)
        stack.extend(child_nodes(current))
    return found


def _missing_unscale(step: TrainingStep, stepped: StepEvent) -> str | bool | None:
    """The ``scaler.unscale_(opt)`` line the moved clip needs first; None when none is needed
    (no scaler, or one already unscales before the step); False when inserting one is unsafe."""
    if stepped.kind is not EventKind.SCALER_STEP:
        return None
    scaler, optimizer = stepped.scaler, stepped.optimizer
    if scaler is None or optimizer is None or scaler in step.uncertain_scalers:
        return False
    for event in reversed(step.events[: step.index(stepped)]):
        if event.kind in BACKWARD_KINDS:
            break
        if event.kind is EventKind.UNSCALE and event.optimizer == optimizer:
            return None
    if unscale_insertion(step, stepped, scaler, optimizer) != []:
        return False
    return f"{scaler}.unscale_({optimizer})"


def _line_start(ctx: FileContext, statement: cst.CSTNode) -> int | None:
    indent = ctx.statement_indent(statement)
    if indent is None:
        return None
    start, _ = ctx.span(statement)
    return start - len(indent)


def _lines_with_comments(ctx: FileContext, statement: cst.CSTNode, floor: cst.CSTNode) -> tuple[int | None, int]:
    """The text span of the statement's whole lines, extended up over the comment lines right
    above it (not past ``floor``, the step statement)."""
    start = _line_start(ctx, statement)
    _, end = ctx.span(statement)
    source = ctx.source
    end_line = source.line_column(end)[0]
    line_end = source.line_end_offset(end_line)
    rest = source.text[end:line_end].strip()
    if start is None or (rest and not rest.startswith("#")):
        return None, line_end
    _, floor_end = ctx.span(floor)
    floor_line = source.line_column(floor_end)[0]
    line = source.line_column(start)[0]
    while line - 1 > floor_line and source.line_text(line - 1).strip().startswith("#"):
        line -= 1
    return source.line_starts[line - 1], line_end


def _short(ctx: FileContext, node: cst.CSTNode) -> str:
    """A call as written when it fits on a line, else its function with ``(...)``."""
    code = ctx.code(node)
    if isinstance(node, cst.Call) and ("\n" in code or len(code) > 60):
        return f"{ctx.code(node.func)}(...)"
    return code
