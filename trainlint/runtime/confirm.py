"""Confirm fixes by running the code as written and as trainlint fixed it, side by side.

``confirm_script`` does it for a user's script (and the local modules it imports); the fixes are
applied in memory and the files on disk are never touched. Each fixed finding gets a verdict
from its rule's effects (``effects``). ``confirm_example`` does it for the rule examples under
``trainlint/runtime/examples``: each declares, in a module-level ``CONFIRM`` dict, what the
anti-pattern does when it bites (checks the original must pass, or the failure was not
reproduced on this device), what the fix must achieve (checks the fixed code must pass), and, for
a user's script, which effects show the fix working and what would reproduce them. An example of
a rule without an automatic fix declares the change the finding asks for (``by_hand``): the rule
must report the example, and that change is run as the fixed code.
"""

from __future__ import annotations

import ast
import datetime
import difflib
import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainlint.runtime.effects import CONFIRMED as EFFECT_CONFIRMED
from trainlint.runtime.effects import EFFECTS, NOT_REPRODUCED, judge_effects, worse_than
from trainlint.runtime.report import HealthReport, format_number, steps_done
from trainlint.runtime.smoke import SmokeRun, UsageError, device_description, run_script

EXAMPLES_DIR = Path(__file__).parent / "examples"

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
NO_FIX = "no fix produced"
NOT_REPORTED = "not reported"  # a rule without a fix did not report its own example


def not_reproduced(device: str) -> str:
    return f"not reproduced on {device}"


# --------------------------------------------------------------------------------------------
# Fixing, through the linter's public API (imported late: the linter may not be installed)


@dataclass
class AppliedFixes:
    sources: dict[Path, str]  # file -> fixed text, only files that changed
    fixed: list[Any]  # trainlint Findings that were fixed
    remaining: list[Any]


def fix_in_memory(script: Path, *, unsafe_fixes: bool, select: list[str] | None) -> AppliedFixes:
    """Lint the script and the local modules it imports; fix them in memory."""
    from trainlint.api import fix_script_in_memory

    results = fix_script_in_memory(script, unsafe_fixes=unsafe_fixes, select=select)
    return AppliedFixes(
        sources={Path(path).resolve(): result.text for path, result in results.items()},
        fixed=[f for result in results.values() for f in result.fixed],
        remaining=[f for result in results.values() for f in result.remaining],
    )


def fix_text(text: str, path: Path, *, unsafe_fixes: bool, select: list[str]) -> tuple[str, list[Any]]:
    """Apply the selected rules' fixes until none applies (one fix can enable the next)."""
    from trainlint.api import fix_source

    fixed: list[Any] = []
    for _ in range(10):
        result = fix_source(text, str(path), unsafe_fixes=unsafe_fixes, select=select)
        if result.text == text:
            break
        text = result.text
        fixed += list(result.fixed)
    return text, fixed


def registered_rules() -> set[str]:
    """Codes of the rules this trainlint has (the rules are written alongside the examples)."""
    from trainlint.rule import all_rules

    return set(all_rules())


def describe_finding(finding: Any) -> str:
    return f"{finding.path}:{finding.start.row}:{finding.start.column}: {finding.code} {finding.message}"


# --------------------------------------------------------------------------------------------
# Where a fixed finding is in the file on disk


@dataclass(frozen=True)
class DiskFinding:
    """A fixed finding at its line in the file on disk (the fixes ran on text in memory, in
    passes: a finding of a later pass was found in text an earlier pass had already changed)."""

    code: str
    name: str
    message: str
    path: Path
    row: int
    column: int
    on_disk: bool = True  # False: the finding exists only in code an earlier fix wrote

    @property
    def place(self) -> str:
        return f"{self.path.name}:{self.row}" + ("" if self.on_disk else " (in fixed code)")

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "message": self.message,
            "path": str(self.path),
            "row": self.row,
            "column": self.column,
            "on_disk": self.on_disk,
        }

    def __str__(self) -> str:
        where = f"{self.path}:{self.row}:{self.column}" + ("" if self.on_disk else " (in code another fix wrote)")
        return f"{where}: {self.code} {self.message}"


def findings_on_disk(script: Path, fixes: AppliedFixes, select: list[str] | None = None) -> list[DiskFinding]:
    """Each fixed finding at its line in the file on disk.

    A finding of the first pass is where the linter found it in the file; a later pass's is
    matched to the same rule's finding in the file on disk (same message, nearest line), or,
    when an earlier fix created it, placed by a line diff of the file and its fixed text.
    """
    linter = _script_linter(script, select)
    placed: list[DiskFinding] = []
    for path in sorted({Path(f.path).resolve() for f in fixes.fixed}):
        disk_text = path.read_text(encoding="utf-8")
        on_disk = linter.lint(disk_text, str(path), path)
        fixed_text = fixes.sources.get(path, disk_text)
        unclaimed = list(on_disk)
        for finding in (f for f in fixes.fixed if Path(f.path).resolve() == path):
            placed.append(_place(finding, path, unclaimed, disk_text, fixed_text))
    return sorted(placed, key=lambda d: (str(d.path), d.row, d.column, d.code))


def _script_linter(script: Path, select: list[str] | None) -> Any:
    """A linter set up as ``fix_script_in_memory`` sets up its own: the script's configuration
    and project, so that it finds on disk what the fixes were made for."""
    from trainlint.config import apply_cli_overrides, load_settings
    from trainlint.engine import Linter
    from trainlint.project import ProjectIndex, module_name_for

    settings = load_settings(None, script.resolve().parent)
    apply_cli_overrides(settings, select, None, None)
    return Linter(settings, ProjectIndex([module_name_for(script)[1]]))


def _place(finding: Any, path: Path, unclaimed: list[Any], disk_text: str, fixed_text: str) -> DiskFinding:
    exact = [d for d in unclaimed if (d.code, d.start, d.message) == (finding.code, finding.start, finding.message)]
    row = _disk_line(disk_text, fixed_text, finding.start.row)
    nearby = sorted(
        (d for d in unclaimed if d.code == finding.code and (d.message == finding.message or abs(d.start.row - row) <= 2)),
        key=lambda d: (d.message != finding.message, abs(d.start.row - row)),
    )
    match = (exact or nearby or [None])[0]
    if match is not None:
        unclaimed.remove(match)
        return DiskFinding(match.code, match.name, match.message, path, match.start.row, match.start.column)
    return DiskFinding(finding.code, finding.name, finding.message, path, row, finding.start.column, on_disk=False)


def _disk_line(disk_text: str, fixed_text: str, row: int) -> int:
    """The line of the file on disk that line ``row`` of the fixed text stands for (nearest)."""
    matcher = difflib.SequenceMatcher(None, disk_text.splitlines(), fixed_text.splitlines(), autojunk=False)
    for tag, disk_start, disk_end, fixed_start, fixed_end in matcher.get_opcodes():
        if fixed_start < row <= fixed_end or (fixed_start == fixed_end == row - 1):
            offset = row - 1 - fixed_start if tag == "equal" else 0
            return min(disk_start + offset, max(disk_end - 1, disk_start)) + 1
    return row


# --------------------------------------------------------------------------------------------
# A user's script


@dataclass
class FindingVerdict:
    """One rule's fixed findings, and what the two runs say about its fix."""

    code: str
    name: str
    findings: list[DiskFinding]
    status: str  # "confirmed", "not confirmed", "not reproduced in N steps on DEVICE", NO_CHECK
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != NOT_CONFIRMED

    def __str__(self) -> str:
        places = ", ".join(f.place for f in self.findings)
        return f"{self.code} {self.name} ({places}): {self.status}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "findings": [f.to_json() for f in self.findings],
        }


NO_CHECK = "no runtime check"


@dataclass
class ScriptConfirmation:
    original: SmokeRun
    fixed: SmokeRun | None  # None when there was nothing to fix
    fixes: AppliedFixes
    findings: list[DiskFinding] = field(default_factory=list)
    verdicts: list[FindingVerdict] = field(default_factory=list)
    worse: list[str] = field(default_factory=list)  # how the fixed run is worse, if it is

    @property
    def exit_code(self) -> int:
        """0 when every fixed finding is confirmed or honestly not reproduced and the fixed run
        is not worse; with nothing to fix, 0 when the run is healthy."""
        if self.fixed is None:
            return 0 if self.original.report.healthy else 1
        return 0 if all(v.ok for v in self.verdicts) and not self.worse else 1


def confirm_script(
    script: Path,
    args: Sequence[str] = (),
    *,
    steps: int | None,
    device: str,
    seed: int,
    threads: int | None,
    max_seconds: float | None = None,
    unsafe_fixes: bool = False,
    select: list[str] | None = None,
) -> ScriptConfirmation:
    fixes = fix_in_memory(script, unsafe_fixes=unsafe_fixes, select=select)
    common = dict(steps=steps, device=device, seed=seed, threads=threads, max_seconds=max_seconds)
    original = run_script(script, args, label="original", **common)  # type: ignore[arg-type]
    if not fixes.sources:
        return ScriptConfirmation(original=original, fixed=None, fixes=fixes)
    fixed = run_script(script, args, label="fixed", sources=fixes.sources, **common)  # type: ignore[arg-type]
    confirmation = ScriptConfirmation(original=original, fixed=fixed, fixes=fixes)
    confirmation.findings = findings_on_disk(script, fixes, select)
    judge_findings(confirmation)
    return confirmation


def judge_findings(confirmation: ScriptConfirmation) -> None:
    """A verdict per rule fixed, and whether the fixed run is worse (for the exit code)."""
    original, fixed = confirmation.original, confirmation.fixed
    assert fixed is not None
    effects = rule_effects()
    by_rule: dict[str, list[DiskFinding]] = {}
    for finding in confirmation.findings:
        by_rule.setdefault(finding.code, []).append(finding)
    for code, findings in sorted(by_rule.items()):
        spec = effects.get(code)
        if spec is None:
            verdict = FindingVerdict(code, findings[0].name, findings, NO_CHECK, "its example declares no effect to measure")
        else:
            verdict = _verdict(code, findings, spec, original, fixed)
        confirmation.verdicts.append(verdict)
    confirmation.worse = worse_than(original.report, fixed.report)


def _verdict(code: str, findings: list[DiskFinding], spec: ExampleSpec, original: SmokeRun, fixed: SmokeRun) -> FindingVerdict:
    judgement = judge_effects(spec.effects, original.report, fixed.report)
    status, detail = judgement.status, judgement.detail
    if status == NOT_REPRODUCED:
        steps = steps_done(original.record)
        span = f"{steps} steps" if steps else f"{original.record.backward_calls} backward passes"
        status = f"not reproduced in {span} on {original.device}"
        detail += f"; what would show it: {spec.shows_with or 'more steps (--steps)'}"
    elif status == EFFECT_CONFIRMED:
        status = CONFIRMED
    return FindingVerdict(code, findings[0].name, findings, status, detail)


@functools.lru_cache(maxsize=1)
def rule_effects() -> dict[str, ExampleSpec]:
    """Rule code -> the example that is about that rule alone and declares its effects."""
    found: dict[str, ExampleSpec] = {}
    for spec in example_specs():
        if len(spec.rules) == 1 and spec.effects and spec.rules[0] not in found:
            found[spec.rules[0]] = spec
    return found


# --------------------------------------------------------------------------------------------
# Checks: what "reproduced" and "confirmed" mean, measured


def measure(report: HealthReport) -> dict[str, Any]:
    """The numbers examples may check, by name."""
    iterations = report.iterations
    loss_ratio = math.nan
    if report.loss_first and report.loss_last is not None:
        loss_ratio = report.loss_last / report.loss_first
    return {
        "exception": report.exception,
        "healthy": report.healthy,
        "iterations": iterations,
        "steps_run": report.steps_run,
        "steps_applied": report.steps_applied,
        "steps_skipped": report.steps_skipped,
        "applied_fraction": report.steps_applied / iterations if iterations else 0.0,
        "skipped_fraction": report.steps_skipped / report.steps_run if report.steps_run else 0.0,
        "nonfinite_losses": report.nonfinite_losses,
        "nonfinite_weights": report.first_nonfinite_weights_step is not None,
        "grad_norm_median": _or_nan(report.grad_norm["p50"]),
        "grad_norm_max": _or_nan(report.grad_norm["max"]),
        "first_layer_grad": _or_nan(report.first_layer_grad),
        "first_layer_zero_grad": _or_nan(report.first_layer_zero_grad),
        "loss_first": _or_nan(report.loss_first),
        "loss_last": _or_nan(report.loss_last),
        "loss_ratio": loss_ratio,
        "loss_fell": report.loss_fell,
        "memory_growth_mb": _or_nan(report.memory_growth_mb),
        "ranks": 1 + len(report.other_ranks),
    }


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "is": operator.is_,
    "contains": lambda measured, text: measured is not None and text in measured,
}


@dataclass(frozen=True)
class Check:
    """``metric op value``; a value ``"Nx original"`` compares with N times the original's."""

    metric: str
    op: str
    value: Any

    def holds(self, measured: dict[str, Any], original: dict[str, Any] | None = None) -> bool:
        target = self.value
        if isinstance(target, str) and target.endswith("x original"):
            if original is None:
                raise ValueError(f"{self} compares with the original run, so it cannot check the original")
            target = float(target.removesuffix("x original")) * original[self.metric]
        value = measured[self.metric]
        if isinstance(value, float) and math.isnan(value):
            return False
        return bool(_OPERATORS[self.op](value, target))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value!r}"


@dataclass
class ExampleSpec:
    path: Path
    rules: list[str]  # the rules whose fixes are applied
    steps: int
    unsafe_fixes: bool
    original: list[Check]  # the anti-pattern bit: all hold for the original
    fixed: list[Check]  # the fix worked: all hold for the fixed code
    why: str = ""
    effects: list[str] = field(default_factory=list)  # names in effects.EFFECTS, for users' scripts
    shows_with: str = ""  # what reproduces the effect when a run does not show it
    # For a rule without an automatic fix: the change its finding asks for, made by hand, as
    # (text, replacement) pairs applied to the example once each.
    by_hand: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def load_spec(path: Path) -> ExampleSpec:
    """Read an example's ``CONFIRM`` dict without running the example."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONFIRM" for t in node.targets):
            data = ast.literal_eval(node.value)
            return ExampleSpec(
                path=path,
                rules=list(data["rules"]),
                steps=int(data["steps"]),
                unsafe_fixes=bool(data.get("unsafe_fixes", False)),
                original=[Check(*c) for c in data["original"]],
                fixed=[Check(*c) for c in data["fixed"]],
                why=data.get("why", ""),
                effects=_known_effects(path, data.get("effects", [])),
                shows_with=data.get("shows_with", ""),
                by_hand=[(str(old), str(new)) for old, new in data.get("by_hand", [])],
            )
    raise ValueError(f"{path}: no module-level CONFIRM = {{...}}")


def _known_effects(path: Path, effects: list[str]) -> list[str]:
    unknown = [e for e in effects if e not in EFFECTS]
    if unknown:
        raise ValueError(f"{path}: unknown effects {unknown}; known: {sorted(EFFECTS)}")
    return list(effects)


def example_specs(codes: Sequence[str] = ()) -> list[ExampleSpec]:
    """Every example, or those for the given rule codes (an example counts for each rule it fixes)."""
    wanted = {c.upper() for c in codes}
    specs = [load_spec(p) for p in sorted(EXAMPLES_DIR.glob("tl*.py"))]
    if wanted:
        specs = [s for s in specs if wanted & set(s.rules)]
        unknown = wanted - {r for s in specs for r in s.rules}
        if unknown:
            raise UsageError(f"no example for {', '.join(sorted(unknown))}")
    return specs


# --------------------------------------------------------------------------------------------
# Examples


@dataclass
class ExampleResult:
    spec: ExampleSpec
    status: str
    original: SmokeRun | None = None
    fixed: SmokeRun | None = None
    rules_fixed: list[str] = field(default_factory=list)
    fixed_text: str | None = None
    detail: str = ""  # why, when not confirmed
    by_hand: bool = False  # the fixed code is the change the finding asks for, made by hand

    @property
    def ok(self) -> bool:
        """Confirmed, or honestly not reproducible on this device; anything else fails CI."""
        return self.status == CONFIRMED or self.status.startswith("not reproduced on")


def confirm_example(spec: ExampleSpec, *, device: str, seed: int = 0, threads: int | None = 1) -> ExampleResult:
    original_text = spec.path.read_text()
    try:
        known = registered_rules()
    except ImportError as exc:
        return ExampleResult(spec, NO_FIX, detail=f"the linter is not importable: {exc}")
    rules = [code for code in spec.rules if code in known]
    unknown = [code for code in spec.rules if code not in known]
    if not rules:
        return ExampleResult(spec, NO_FIX, detail=f"{', '.join(unknown)}: no such rule in this trainlint yet")
    if spec.by_hand:
        return _confirm_by_hand(spec, original_text, rules, device=device, seed=seed, threads=threads)
    fixed_text, fixed_findings = fix_text(original_text, spec.path, unsafe_fixes=spec.unsafe_fixes, select=rules)
    rules_fixed = sorted({f.code for f in fixed_findings})
    if fixed_text == original_text:
        return ExampleResult(spec, NO_FIX, detail=f"{', '.join(spec.rules)} produced no fix for this example")
    common = dict(steps=spec.steps, device=device, seed=seed, threads=threads)
    original = run_script(spec.path, label="original", **common)  # type: ignore[arg-type]
    fixed = run_script(spec.path, label="fixed", sources={spec.path: fixed_text}, **common)  # type: ignore[arg-type]
    status, detail = judge(spec, original.report, fixed.report, original.device)
    missing = sorted(set(spec.rules) - set(rules_fixed))
    if missing:
        detail = (detail + "; " if detail else "") + f"no fix produced by {', '.join(missing)}"
    return ExampleResult(spec, status, original, fixed, rules_fixed, fixed_text, detail)


def _confirm_by_hand(
    spec: ExampleSpec, original_text: str, rules: list[str], *, device: str, seed: int, threads: int | None
) -> ExampleResult:
    """A rule without an automatic fix: the linter must report the example, and the change its
    finding asks for is the one the example declares, made by hand."""
    from trainlint.api import lint_source

    reported = sorted({f.code for f in lint_source(original_text, str(spec.path), select=rules)} & set(rules))
    if not reported:
        return ExampleResult(spec, NOT_REPORTED, detail=f"{', '.join(rules)} reported nothing in this example")
    fixed_text = original_text
    for old, new in spec.by_hand:
        if fixed_text.count(old) != 1:
            return ExampleResult(spec, NO_FIX, detail=f"the change by hand expects {old!r} once in the example")
        fixed_text = fixed_text.replace(old, new)
    common = dict(steps=spec.steps, device=device, seed=seed, threads=threads)
    original = run_script(spec.path, label="original", **common)  # type: ignore[arg-type]
    fixed = run_script(spec.path, label="fixed", sources={spec.path: fixed_text}, **common)  # type: ignore[arg-type]
    status, detail = judge(spec, original.report, fixed.report, original.device)
    return ExampleResult(spec, status, original, fixed, reported, fixed_text, detail, by_hand=True)


def judge(spec: ExampleSpec, original: HealthReport, fixed: HealthReport, device: str) -> tuple[str, str]:
    before, after = measure(original), measure(fixed)
    failed_original = [str(c) for c in spec.original if not c.holds(before)]
    if failed_original:
        return not_reproduced(device), "original did not show: " + ", ".join(failed_original)
    failed_fixed = [str(c) for c in spec.fixed if not c.holds(after, before)]
    if failed_fixed:
        return NOT_CONFIRMED, "fixed code did not reach: " + ", ".join(failed_fixed)
    return CONFIRMED, ""


def describe(report: HealthReport, checks: Sequence[Check]) -> str:
    """What a run did, in the terms of the checks that matter for the example."""
    m = measure(report)
    if report.exception:
        return report.exception
    parts: list[str] = []
    for metric in dict.fromkeys(c.metric for c in checks):
        text = _describe_metric(metric, m, report)
        if text and text not in parts:
            parts.append(text)
    return ", ".join(parts) or report.verdict


def _describe_metric(metric: str, m: dict[str, Any], report: HealthReport) -> str:
    if metric in ("steps_applied", "applied_fraction", "iterations"):
        return f"{m['steps_applied']}/{m['iterations']} steps applied"
    if metric in ("steps_skipped", "skipped_fraction"):
        return f"{m['steps_skipped']}/{m['steps_run']} steps skipped"
    if metric in ("grad_norm_median", "grad_norm_max"):
        return f"grad norm {format_number(m[metric])}" + (" (max)" if metric == "grad_norm_max" else "")
    if metric == "first_layer_grad":
        return f"first layer gradient {format_number(m[metric])}"
    if metric == "first_layer_zero_grad":
        return f"{m[metric]:.0%} of first-layer gradient entries exactly 0"
    if metric in ("loss_first", "loss_last", "loss_ratio", "loss_fell"):
        return f"loss {format_number(report.loss_first)} -> {format_number(report.loss_last)}"
    if metric == "nonfinite_losses":
        return f"non-finite loss {m[metric]}/{report.iterations}"
    if metric == "nonfinite_weights":
        step = report.first_nonfinite_weights_step
        return "weights finite" if step is None else f"weights NaN/Inf from step {step}"
    if metric == "memory_growth_mb":
        return f"memory +{format_number(m[metric] * 1024)} KiB per step"
    if metric in ("exception", "healthy", "steps_run"):
        return "" if metric != "steps_run" else f"{m['steps_run']} steps"
    return f"{metric} {m.get(metric)!r}"


def examples_table(results: Sequence[ExampleResult], markdown: bool = False) -> str:
    rows = [("rule", "example", "original", "fixed", "result")]
    for r in results:
        original = describe(r.original.report, r.spec.original) if r.original else "-"
        fixed = describe(r.fixed.report, r.spec.fixed) if r.fixed else "-"
        result = r.status
        if markdown and r.detail:
            result += f" ({r.detail})"
        if r.by_hand:
            fixed = "by hand: " + fixed
        rows.append(("+".join(r.spec.rules), r.spec.name, original, fixed, result))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    clipped = [tuple(_clip(c, 58) for c in row) for row in rows]
    widths = [max(len(row[c]) for row in clipped) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in clipped]
    lines.insert(1, "  ".join("-" * w for w in widths))
    details = [f"{r.spec.name}: {r.detail}" for r in results if r.detail]
    return "\n".join(lines + details)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def provenance(device: str) -> str:
    """Which machine and torch the table came from, for the rule pages."""
    return f"{device_description(device)}, torch {torch.__version__}, {datetime.date.today().isoformat()}"
