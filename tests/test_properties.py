"""Properties that must hold for any input: linting never raises, fixes re-parse, --fix is
idempotent, bytes outside a fix are untouched, and a file without findings is never rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesmith
import libcst as cst
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainlint.config import INTERNAL_ERROR, Settings
from trainlint.engine import Linter
from trainlint.fixes import apply_fixes
from trainlint.project import ProjectIndex

LINTER = Linter(Settings(select=["ALL"]), ProjectIndex([]))
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("TRAINLINT_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Statements a training step is made of, good and bad orders alike.
STEP_STATEMENTS = [
    "optimizer.zero_grad()",
    "optimizer.zero_grad(set_to_none=True)",
    "scaler.scale(loss).backward()",
    "loss.backward()",
    "scaler.unscale_(optimizer)",
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
    "grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))",
    "scaler.step(optimizer)",
    "optimizer.step()",
    "scaler.update()",
    "loss = torch.nan_to_num(loss)",
    "probs = torch.softmax(logits, dim=-1)",
    "loss = -torch.log(probs + 1e-7).mean()",
    "loss = F.nll_loss(torch.log(torch.softmax(logits, dim=1)), y)",
]
GUARDS = [
    "if not torch.isfinite(loss):",
    "if (i + 1) % accum == 0:",
    "if torch.isnan(model.fc.weight.grad).any():",
    "if self_amp:",
]
HEADER = """import torch
import torch.nn.functional as F

model = torch.nn.GRU(8, 8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cuda")


def train(loader, accum=2, self_amp=True):
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cuda", dtype=torch.float16):
            logits = model(x)[0]
            loss = F.cross_entropy(logits, y)
"""


@st.composite
def training_steps(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 9))):
        statement = draw(st.sampled_from(STEP_STATEMENTS))
        if draw(st.integers(0, 4)) == 0:
            guard = draw(st.sampled_from(GUARDS))
            tail = draw(st.sampled_from([statement, "continue"]))
            lines += [f"        {guard}", f"            {tail}"]
        else:
            lines.append(f"        {statement}")
    return HEADER + "\n".join(lines) + "\n"


def _no_internal_errors(text: str) -> list:
    findings = LINTER.lint(text, "generated.py")
    # Valid Python that LibCST's grammar does not accept (a line continuation just before the end
    # of the file) is reported "not checked": a limit of the parser, not a rule that raised.
    raised = [f for f in findings if f.code == INTERNAL_ERROR and not f.message.startswith("not checked: ")]
    assert not raised, findings
    return findings


@PROPERTY_SETTINGS
@given(hypothesmith.from_grammar())
def test_linting_any_valid_source_never_raises(source: str) -> None:
    _no_internal_errors("import torch\n" + source)


@PROPERTY_SETTINGS
@given(st.text(max_size=300))
def test_linting_any_text_never_raises(text: str) -> None:
    _no_internal_errors("import torch\n" + text)


@PROPERTY_SETTINGS
@given(training_steps(), st.booleans())
def test_fixes_reparse_and_are_idempotent(source: str, unsafe: bool) -> None:
    _no_internal_errors(source)
    outcome = LINTER.fix(source, "generated.py", None, unsafe_fixes=unsafe)
    cst.parse_module(outcome.text)
    compile(outcome.text, "generated.py", "exec")
    assert LINTER.fix(outcome.text, "generated.py", None, unsafe_fixes=unsafe).text == outcome.text


@PROPERTY_SETTINGS
@given(training_steps())
def test_bytes_outside_a_fix_are_untouched(source: str) -> None:
    for finding in LINTER.lint(source, "generated.py"):
        if finding.fix is None:
            continue
        start, end = finding.fix.span
        fixed = apply_fixes(source, [finding.fix])
        tail = len(source) - end
        assert fixed[:start] == source[:start]
        assert fixed[len(fixed) - tail :] == source[end:]


@PROPERTY_SETTINGS
@given(source=training_steps())
def test_a_file_without_fixable_findings_is_never_rewritten(source: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from trainlint.discovery import Target
    from trainlint.runner import RunOptions, run

    if any(f.fix for f in LINTER.lint(source, "generated.py")):
        return
    path = tmp_path_factory.mktemp("clean") / "train.py"
    path.write_text(source)
    before = os.stat(path)
    run([Target(path, "train.py")], LINTER.settings, RunOptions(fix=True, unsafe_fixes=True, use_cache=False, jobs=1), [path.parent])
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert Path(path).read_text() == source


# -- splicing fixes in one pass -------------------------------------------------------------------
@st.composite
def _text_and_edits(draw: st.DrawFn) -> tuple[str, list[tuple[int, int, str]]]:
    """A text and edits that do not overlap (inserts may share a position, or touch a range)."""
    text = draw(st.text(alphabet="ab\n", max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    edits = []
    for start, end in zip(cuts[::2], cuts[1::2]):
        edits.append((start, end, draw(st.text(alphabet="XYZ", max_size=3))))
        if draw(st.booleans()):
            edits.append((start, start, draw(st.text(alphabet="XYZ", min_size=1, max_size=2))))
    return text, edits


@given(_text_and_edits())
def test_fixes_spliced_in_one_pass_equal_splicing_from_the_end(case: tuple[str, list[tuple[int, int, str]]]) -> None:
    from trainlint.findings import Edit, Fix

    text, raw_edits = case
    fixes = [Fix((Edit(start, end, content),), "safe", "m") for start, end, content in raw_edits]
    expected = text
    for edit in sorted((f.edits[0] for f in fixes), reverse=True):  # the way fixes were always spliced
        expected = expected[: edit.start] + edit.content + expected[edit.end :]
    assert apply_fixes(text, fixes) == expected


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 8)), max_size=30))
def test_non_overlapping_fixes_are_those_touching_no_earlier_choice(spans: list[tuple[int, int]]) -> None:
    from trainlint.findings import Edit, Finding, Fix, Position
    from trainlint.fixes import non_overlapping

    findings = [
        Finding("TL202", "n", "m", "f.py", Position(1, 1), Position(1, 1), fix=Fix((Edit(s, s + w, ""),), "safe", "m"))
        for s, w in spans
    ]
    chosen: list[tuple[int, int]] = []
    for finding in sorted(findings, key=lambda f: (f.fix.span, f.code)):  # type: ignore[union-attr]
        start, end = finding.fix.span  # type: ignore[union-attr]
        if not any(start <= t_end and t_start <= end for t_start, t_end in chosen):  # pairwise, quadratic
            chosen.append((start, end))
    assert [f.fix.span for f in non_overlapping(findings)] == chosen  # type: ignore[union-attr]


@PROPERTY_SETTINGS
@given(hypothesmith.from_grammar())
def test_source_order_compares_as_the_positions_do(source: str) -> None:
    """``ctx.order`` stands for ``ctx.span`` wherever an analysis only compares places: a node
    that ends before another starts in order does so in the text, and starts are ordered alike."""
    from trainlint.context import FileContext
    from trainlint.source import SourceText

    try:
        module = cst.parse_module(source)
    except Exception:  # noqa: BLE001 - a source LibCST's grammar rejects says nothing here
        return
    ctx = FileContext("generated.py", SourceText(source), module, ProjectIndex([]))
    nodes = [n for kind in (cst.Name, cst.Call, cst.SimpleStatementLine, cst.If, cst.FunctionDef) for n in ctx.nodes.of(kind)]
    for a in nodes[:40]:
        for b in nodes[:40]:
            if ctx.order(a)[1] < ctx.order(b)[0]:
                assert ctx.span(a)[1] <= ctx.span(b)[0]
            if ctx.order(a)[0] < ctx.order(b)[0]:
                assert ctx.span(a)[0] <= ctx.span(b)[0]
