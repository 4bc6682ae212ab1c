"""Fixes that cannot hurt: bounded passes, no overlapping edits in one pass, a fixed text that must
re-parse before it is written, atomic writes that keep encoding, line endings, BOM, permissions
and every untouched byte, and ``--fix`` twice changing nothing the second time."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import libcst as cst
import pytest

from tests.conftest import FIXTURES, run_cli
from trainlint import fixes
from trainlint import rule as rule_module
from trainlint.config import Settings, apply_cli_overrides
from trainlint.discovery import discover
from trainlint.engine import MAX_FIX_PASSES, Linter
from trainlint.findings import Edit, Finding, Fix, Position
from trainlint.project import ProjectIndex
from trainlint.rule import Rule
from trainlint.runner import RunOptions, run

AMP_VIDEO = (FIXTURES / "cli" / "amp_video.py").read_bytes()
LOG_SOFTMAX = FIXTURES / "cli" / "log_softmax.py"
BEFORE = b'with torch.autocast("cuda"):'
AFTER = b'with torch.autocast("cuda", dtype=torch.bfloat16):'  # TL108's unsafe fix


# -- through the command line: every byte the fix does not touch stays --------------------------


def _variants() -> dict[str, tuple[bytes, bytes]]:
    """name -> (file content, content after TL108's fix)."""
    lines = AMP_VIDEO.split(b"\n")
    crlf = b"\r\n".join(lines)
    mixed = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines[:-1]))
    latin1 = b"# -*- coding: latin-1 -*-\n# auteur: Ren\xe9e, donn\xe9es \xb5s\n" + AMP_VIDEO
    bom = b"\xef\xbb\xbf" + crlf
    no_final_newline = AMP_VIDEO.rstrip(b"\n") + b"  # trailing comment  "
    trailing_space_and_tabs = AMP_VIDEO.replace(
        b"        loss.backward()\n", b"        loss.backward()   \n\t# a tab-indented comment \t\n"
    )
    contents = {
        "crlf.py": crlf,
        "mixed.py": mixed,
        "latin1.py": latin1,
        "bom.py": bom,
        "no_final_newline.py": no_final_newline,
        "trailing_space.py": trailing_space_and_tabs,
    }
    return {name: (data, data.replace(BEFORE, AFTER)) for name, data in contents.items()}


def test_fix_keeps_every_untouched_byte_and_is_idempotent(tmp_path: Path) -> None:
    variants = _variants()
    for name, (data, _) in variants.items():
        (tmp_path / name).write_bytes(data)
        assert data.count(BEFORE) == 1
    first = run_cli("--no-cache", "--fix", "--unsafe-fixes", "--output-format", "concise", ".", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == f"Found {len(variants)} warnings ({len(variants)} fixed, 0 remaining)."
    for name, (_, expected) in variants.items():
        assert (tmp_path / name).read_bytes() == expected, name
    # the latin-1 file is still latin-1 (é is one byte), the BOM is still there
    assert b"Ren\xe9e" in (tmp_path / "latin1.py").read_bytes()
    assert (tmp_path / "bom.py").read_bytes().startswith(b"\xef\xbb\xbf")
    # a second --fix finds nothing to do and writes nothing
    mtimes = {name: (tmp_path / name).stat().st_mtime_ns for name in variants}
    second = run_cli("--no-cache", "--fix", "--unsafe-fixes", ".", cwd=tmp_path)
    assert second.returncode == 0 and second.stdout == "All checks passed!\n"
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in variants} == mtimes
    # and no temporary file was left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(variants)


def test_fix_keeps_permissions_and_symlinks_and_refuses_read_only_files(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_bytes(AMP_VIDEO)
    (tmp_path / "script.py").chmod(0o751)
    (tmp_path / "target.py").write_bytes(AMP_VIDEO)
    (tmp_path / "link.py").symlink_to("target.py")
    (tmp_path / "readonly.py").write_bytes(AMP_VIDEO)
    (tmp_path / "readonly.py").chmod(0o444)
    try:
        result = run_cli(
            "--no-cache", "--fix", "--unsafe-fixes", "--output-format", "concise",
            "script.py", "link.py", "readonly.py", cwd=tmp_path,
        )
        assert stat.S_IMODE((tmp_path / "script.py").stat().st_mode) == 0o751
        assert (tmp_path / "script.py").read_bytes() == AMP_VIDEO.replace(BEFORE, AFTER)
        assert (tmp_path / "link.py").is_symlink() and os.readlink(tmp_path / "link.py") == "target.py"
        assert (tmp_path / "target.py").read_bytes() == AMP_VIDEO.replace(BEFORE, AFTER)
        # a read-only file is reported (TL002), keeps its finding, and is left untouched
        assert (tmp_path / "readonly.py").read_bytes() == AMP_VIDEO
        assert stat.S_IMODE((tmp_path / "readonly.py").stat().st_mode) == 0o444
        lines = result.stdout.splitlines()
        assert lines[0] == "readonly.py:1:1: TL002 fixes not written: the file is read-only"
        assert lines[1].startswith("readonly.py:15:14: TL108 ")
        assert lines[-1] == "Found 1 error and 3 warnings (2 fixed, 2 remaining)."
        assert result.returncode == 1
    finally:
        (tmp_path / "readonly.py").chmod(0o644)


def test_unsafe_fixes_need_the_flag_and_diff_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_bytes(AMP_VIDEO)
    safe_only = run_cli("--no-cache", "--fix", "train.py", cwd=tmp_path)
    assert (tmp_path / "train.py").read_bytes() == AMP_VIDEO
    assert safe_only.returncode == 1
    assert safe_only.stdout.splitlines()[-1] == "Found 1 warning. 1 hidden fix can be enabled with `--unsafe-fixes`."

    diff = run_cli("--no-cache", "--diff", "--unsafe-fixes", "train.py", cwd=tmp_path)
    assert (tmp_path / "train.py").read_bytes() == AMP_VIDEO
    assert diff.returncode == 1  # there is something to fix
    assert diff.stdout.splitlines() == [
        "--- a/train.py",
        "+++ b/train.py",
        "@@ -12,7 +12,7 @@",
        " def train(loader, optimizer):",
        "     model = VideoNet().cuda()",
        "     for clips in loader:",
        '-        with torch.autocast("cuda"):',
        '+        with torch.autocast("cuda", dtype=torch.bfloat16):',
        "             loss = model(clips).mean()",
        "         loss.backward()",
        "         optimizer.step()",
    ]
    assert diff.stderr == "Would fix 1 error in 1 file.\n"
    nothing = run_cli("--no-cache", "--diff", "train.py", cwd=tmp_path)  # the only fix is unsafe
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", "No fixes available.\n")


def test_show_fixes_and_exit_non_zero_on_fix(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_bytes(AMP_VIDEO)
    result = run_cli(
        "--no-cache", "--fix", "--unsafe-fixes", "--show-fixes", "--exit-non-zero-on-fix", "train.py", cwd=tmp_path
    )
    assert result.stdout.splitlines() == [
        "Applied 1 fix:",
        "- train.py:",
        "    1 × TL108 (fp16-autocast-conv3d)",
        "Found 1 warning (1 fixed, 0 remaining).",
    ]
    assert result.returncode == 1  # nothing remains, but something was fixed
    again = run_cli("--no-cache", "--fix", "--exit-non-zero-on-fix", "train.py", cwd=tmp_path)
    assert again.returncode == 0


def test_safe_fixes_apply_by_default_and_the_summary_counts_them(tmp_path: Path) -> None:
    """`--fix` applies TL202's safe fix and leaves TL108's unsafe one: "N fixed, M remaining"."""
    shutil.copy(LOG_SOFTMAX, tmp_path / "loss.py")
    (tmp_path / "video.py").write_bytes(AMP_VIDEO)
    result = run_cli("--no-cache", "--fix", "--output-format", "concise", ".", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("video.py:15:14: TL108 ")
    assert lines[1] == (
        "Found 1 error and 1 warning (1 fixed, 1 remaining). 1 hidden fix can be enabled with `--unsafe-fixes`."
    )
    assert (tmp_path / "loss.py").read_text(encoding="utf-8") == LOG_SOFTMAX.read_text(encoding="utf-8").replace(
        "torch.log(F.softmax(logits, dim=-1))", "F.log_softmax(logits, dim=-1)"
    )
    assert (tmp_path / "video.py").read_bytes() == AMP_VIDEO


def test_the_api_fixes_in_memory(tmp_path: Path) -> None:
    from trainlint.api import fix_script_in_memory, fix_source, lint_source

    text = LOG_SOFTMAX.read_text(encoding="utf-8")
    assert [(f.code, f.start.row, f.start.column) for f in lint_source(text, "loss.py")] == [("TL202", 7, 17)]
    outcome = fix_source(text, "loss.py")
    assert "F.log_softmax(logits, dim=-1)" in outcome.text and [f.code for f in outcome.fixed] == ["TL202"]
    assert fix_source(AMP_VIDEO.decode(), "v.py").fixed == []  # unsafe needs unsafe_fixes
    assert fix_source(AMP_VIDEO.decode(), "v.py", unsafe_fixes=True).text == AMP_VIDEO.replace(BEFORE, AFTER).decode()
    # a script and the local module it imports, fixed without touching the disk
    (tmp_path / "losses.py").write_text(text, encoding="utf-8")
    (tmp_path / "train.py").write_text("import torch\nfrom losses import nll\n", encoding="utf-8")
    changed = fix_script_in_memory(tmp_path / "train.py")
    assert list(changed) == [(tmp_path / "losses.py").resolve()]
    assert (tmp_path / "losses.py").read_text(encoding="utf-8") == text


def test_fix_from_stdin_writes_the_fixed_source_to_stdout(tmp_path: Path) -> None:
    source = AMP_VIDEO.decode()
    result = run_cli("--no-cache", "--fix", "--unsafe-fixes", "-", "--stdin-filename", "train.py", stdin=source, cwd=tmp_path)
    assert result.stdout == source.replace(BEFORE.decode(), AFTER.decode())
    assert result.stderr.splitlines()[-1] == "Found 1 warning (1 fixed, 0 remaining)."
    assert result.returncode == 0


# -- the fix loop, with test-only rules (registered for one test) ---------------------------------


@pytest.fixture
def make_rule() -> Iterator[Callable[..., str]]:
    """make_rule(edit) registers TL99x whose finding on each `torch.foo(ARG)` call carries the
    fix ``edit(ctx, call)`` returns (a list of edits)."""
    made: list[str] = []

    def factory(edit, applicability: str = "safe") -> str:
        code = f"TL99{len(made)}"

        class TestRule(Rule):
            """## What it does
            Test rule.
            ## Why is this bad?
            Test rule.
            """

            triggers = ("foo",)
            summary = "test"

            def check(self, ctx):
                for call in ctx.nodes.of(cst.Call):
                    if ctx.qualified_name(call.func) == "torch.foo":
                        fix = ctx.fix(edit(ctx, call), applicability, "test fix")
                        yield ctx.report(self, call, "torch.foo", fix=fix)

        TestRule.code, TestRule.name = code, f"test-{code}"
        rule_module._REGISTRY[code] = TestRule
        made.append(code)
        return code

    try:
        yield factory
    finally:
        for code in made:
            rule_module._REGISTRY.pop(code, None)


def fixer(*codes: str) -> Linter:
    return Linter(apply_cli_overrides(Settings(), list(codes), None, None), ProjectIndex([]))


def test_overlapping_fixes_wait_for_the_next_pass(make_rule) -> None:
    """Each `torch.foo(x)` becomes `torch.bar(x)` by rewriting the whole call, so the outer and the
    inner call's edits overlap: the outer is applied first, the inner after re-linting."""
    code = make_rule(lambda ctx, call: [ctx.replace(call, f"torch.bar({ctx.code(call.args[0])})")])
    outcome = fixer(code).fix("import torch\ny = torch.foo(torch.foo(x))\n", "t.py", None, False)
    assert outcome.text == "import torch\ny = torch.bar(torch.bar(x))\n"
    assert [f.start.column for f in outcome.fixed] == [5, 15]
    assert outcome.remaining == []


def test_non_overlapping_takes_fixes_in_position_order() -> None:
    def finding(start: int, end: int, code: str = "TL001") -> Finding:
        fix = Fix((Edit(start, end, "x"),), "safe", "m")
        return Finding(code, "n", "m", "p", Position(1, 1), Position(1, 1), fix=fix)

    chosen = fixes.non_overlapping([finding(5, 9), finding(0, 5), finding(7, 12), finding(20, 20), finding(20, 20)])
    # touching ranges count as overlapping; two insertions at one place are not applied together
    assert [f.fix.span for f in chosen] == [(0, 5), (7, 12), (20, 20)]


def test_a_fix_that_does_not_parse_is_never_applied(make_rule) -> None:
    broken = make_rule(lambda ctx, call: [ctx.replace(call, "torch.bar(")])
    good = make_rule(lambda ctx, call: [Edit(len(ctx.source.text), len(ctx.source.text), "# fixed\n")])
    text = "import torch\ny = torch.foo(1)\n"
    outcome = fixer(broken).fix(text, "t.py", None, False)
    assert outcome.text == text and outcome.fixed == []
    assert [f.code for f in outcome.remaining] == [broken]
    # together with a good fix, the good one is applied alone
    outcome = fixer(broken, good).fix(text, "t.py", None, False)
    assert outcome.text.startswith(text) and "torch.bar(" not in outcome.text
    assert {f.code for f in outcome.fixed} == {good}


def test_fix_passes_are_bounded(make_rule) -> None:
    """A rule whose fix re-creates its own finding cannot loop forever."""
    code = make_rule(lambda ctx, call: [ctx.replace(call, f"torch.foo({ctx.code(call)})")])
    outcome = fixer(code).fix("import torch\ny = torch.foo(1)\n", "t.py", None, False)
    assert len(outcome.fixed) == MAX_FIX_PASSES
    assert outcome.text.count("torch.foo(") == MAX_FIX_PASSES + 1


def test_a_fix_that_changes_nothing_is_not_counted(make_rule) -> None:
    code = make_rule(lambda ctx, call: [ctx.replace(call.func, "torch.foo")])
    outcome = fixer(code).fix("import torch\ny = torch.foo(1)\n", "t.py", None, False)
    assert outcome.fixed == [] and len(outcome.remaining) == 1


def test_unsafe_fix_needs_unsafe_fixes(make_rule) -> None:
    code = make_rule(lambda ctx, call: [ctx.replace(call.func, "torch.bar")], applicability="unsafe")
    text = "import torch\ny = torch.foo(1)\n"
    assert fixer(code).fix(text, "t.py", None, False).text == text
    assert fixer(code).fix(text, "t.py", None, True).text == "import torch\ny = torch.bar(1)\n"


# -- atomic writes ---------------------------------------------------------------------------------


def test_failed_write_leaves_the_file_untouched_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "train.py"
    path.write_bytes(b"original\n")

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fixes.os, "replace", failing_replace)
    with pytest.raises(OSError):
        fixes.write_atomic(path, b"new content\n")
    assert path.read_bytes() == b"original\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train.py"]


def test_failed_write_is_reported_as_tl002_with_the_finding_kept(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "train.py").write_bytes(AMP_VIDEO)
    monkeypatch.chdir(tmp_path)

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fixes.os, "replace", failing_replace)
    settings = Settings(root=tmp_path)
    result = run(discover(["."], settings), settings, RunOptions(fix=True, unsafe_fixes=True, use_cache=False, jobs=1), [tmp_path])
    assert [(f.code, f.message) for f in result.findings][0] == ("TL002", "fixes not written: No space left on device")
    assert [f.code for f in result.findings] == ["TL002", "TL108"] and result.fixed == []
    assert (tmp_path / "train.py").read_bytes() == AMP_VIDEO


def test_write_atomic_refuses_a_read_only_file_even_for_root(tmp_path: Path) -> None:
    path = tmp_path / "ro.py"
    path.write_bytes(b"x = 1\n")
    path.chmod(0o444)
    try:
        with pytest.raises(PermissionError):
            fixes.write_atomic(path, b"x = 2\n")
        assert path.read_bytes() == b"x = 1\n"
    finally:
        path.chmod(0o644)


# -- what a safe fix may change --------------------------------------------------------------------
# A safe fix rewrites arguments and operators. The calls it may drop are of functions without side
# effects that the rewrite folds into another (log(softmax(x)) -> log_softmax(x)), or a rename
# (BCELoss -> BCEWithLogitsLoss). TL102 drops a second `unscale_`, which could only raise.
_FOLDED_AWAY = frozenset({"log", "softmax", "sigmoid", "expit", "exp", "mul", "div", "add", "sub"})  # the last: operators
_RENAMED = {"BCELoss": "BCEWithLogitsLoss", "binary_cross_entropy": "binary_cross_entropy_with_logits"}
_RAISING = {("TL102", "unscale_")}


def _call_names(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for node in _walk(cst.parse_module(text)):
        if isinstance(node, cst.Call):
            func = node.func
            name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else "?"
            found[name] = found.get(name, 0) + 1
    return found


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    from trainlint.context import child_nodes

    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(child_nodes(current))


def _rule_sources() -> list[tuple[str, str, Path]]:
    cases = []
    for directory in sorted((FIXTURES / "rules").glob("TL*")):
        for path in sorted(directory.glob("pos_*.py")):
            if not path.name.endswith(".fixed.py"):
                cases.append((directory.name, path.name, path))
    return cases


@pytest.mark.parametrize("code,name,path", _rule_sources(), ids=lambda v: getattr(v, "name", v) if isinstance(v, Path) else v)
def test_a_safe_fix_never_removes_a_call_that_may_have_side_effects(code: str, name: str, path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    linter = Linter(apply_cli_overrides(Settings(), [code], None, None), ProjectIndex([path.parent]))
    fixed = linter.fix(source, name, path, unsafe_fixes=False).text
    before, after = _call_names(source), _call_names(fixed)
    for callee, count in before.items():
        dropped = count - after.get(callee, 0)
        if dropped <= 0 or callee in _FOLDED_AWAY or (code, callee) in _RAISING:
            continue
        renamed = _RENAMED.get(callee)
        assert renamed is not None and after.get(renamed, 0) - before.get(renamed, 0) >= dropped, (
            f"{code} {name}: the safe fix removed {dropped} call(s) of `{callee}`"
        )


def test_no_floor_is_proposed_where_one_already_holds(tmp_path: Path) -> None:
    """`s = x.clamp(min=1e-4)` then `log(s + 1e-8)` under float16: the value is floored well
    above 1/65504, so there is no finding and no clamp to add; with a floor of 1e-6 there is,
    and the fix's floor is above it (never a no-op)."""
    rules = FIXTURES / "rules" / "TL201"
    for name, expected in (("neg_log_of_clamped_value_fp16.py", []), ("pos_log_of_clamped_value_fp16.py", ["TL201"])):
        shutil.copyfile(rules / name, tmp_path / name)
        result = run_cli("--no-cache", "--select", "TL201", "--output-format", "concise", name, cwd=tmp_path)
        assert [line.split(": ")[1].split()[0] for line in result.stdout.splitlines() if ": TL" in line] == expected
    run_cli("--no-cache", "--select", "TL201", "--fix", "--unsafe-fixes", "pos_log_of_clamped_value_fp16.py", cwd=tmp_path)
    fixed = (tmp_path / "pos_log_of_clamped_value_fp16.py").read_text(encoding="utf-8")
    assert "var.clamp(min=2e-5)" in fixed and "var.clamp(min=1e-6)" in fixed


def test_a_scaled_residual_sum_is_not_rewritten_into_another_function_by_fix(tmp_path: Path) -> None:
    """TL301: `0.5 * (x + f(x))` becomes `x + 0.5 * f(x)` only with `--unsafe-fixes`, and says so."""
    block = (
        "import torch.nn as nn\n\n\n"
        "class Block(nn.Module):\n"
        "    def __init__(self, dim):\n"
        "        super().__init__()\n"
        "        self.body = nn.Linear(dim, dim)\n\n"
        "    def forward(self, x):\n"
        "        return 0.5 * (x + self.body(x))\n"
    )
    (tmp_path / "block.py").write_text(block, encoding="utf-8")
    report = run_cli("--no-cache", "block.py", cwd=tmp_path)
    assert " TL301 " in report.stdout and " TL301 [*]" not in report.stdout
    assert "(the block then computes a different function) (unsafe fix)" in report.stdout
    fixed = run_cli("--no-cache", "--fix", "block.py", cwd=tmp_path)
    assert (tmp_path / "block.py").read_text(encoding="utf-8") == block and fixed.returncode == 1
    run_cli("--no-cache", "--fix", "--unsafe-fixes", "block.py", cwd=tmp_path)
    assert (tmp_path / "block.py").read_text(encoding="utf-8") == block.replace(
        "0.5 * (x + self.body(x))", "x + 0.5 * self.body(x)"
    )
