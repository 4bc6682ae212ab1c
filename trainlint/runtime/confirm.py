"""Confirm fixes by running the code as written and as trainlint fixed it, side by side.

``confirm_script`` does it for a user's script (and the local modules it imports); the fixes are
applied in memory and the files on disk are never touched. ``confirm_examples`` does it for the
rule examples under ``trainlint/runtime/examples``: each declares, in a module-level ``CONFIRM``
dict, what the anti-pattern does when it bites (checks the original must pass, or the failure was
not reproduced on this device) and what the fix must achieve (checks the fixed code must pass).
"""

from __future__ import annotations

import ast
import datetime
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainlint.runtime.report import HealthReport, format_number
from trainlint.runtime.smoke import SmokeRun, UsageError, device_description, run_script

EXAMPLES_DIR = Path(__file__).parent / "examples"

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
NO_FIX = "no fix produced"


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
# A user's script


@dataclass
class ScriptConfirmation:
    original: SmokeRun
    fixed: SmokeRun | None  # None when there was nothing to fix
    fixes: AppliedFixes

    @property
    def exit_code(self) -> int:
        final = self.fixed or self.original
        return 0 if final.report.healthy else 1


def confirm_script(
    script: Path,
    args: Sequence[str] = (),
    *,
    steps: int | None,
    device: str,
    seed: int,
    threads: int | None,
    unsafe_fixes: bool = False,
    select: list[str] | None = None,
) -> ScriptConfirmation:
    fixes = fix_in_memory(script, unsafe_fixes=unsafe_fixes, select=select)
    common = dict(steps=steps, device=device, seed=seed, threads=threads)
    original = run_script(script, args, label="original", **common)  # type: ignore[arg-type]
    fixed = None
    if fixes.sources:
        fixed = run_script(script, args, label="fixed", sources=fixes.sources, **common)  # type: ignore[arg-type]
    return ScriptConfirmation(original=original, fixed=fixed, fixes=fixes)


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
        "loss_first": _or_nan(report.loss_first),
        "loss_last": _or_nan(report.loss_last),
        "loss_ratio": loss_ratio,
        "loss_fell": report.loss_fell,
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
            )
    raise ValueError(f"{path}: no module-level CONFIRM = {{...}}")


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
    if metric in ("loss_first", "loss_last", "loss_ratio", "loss_fell"):
        return f"loss {format_number(report.loss_first)} -> {format_number(report.loss_last)}"
    if metric == "nonfinite_losses":
        return f"non-finite loss {m[metric]}/{report.iterations}"
    if metric == "nonfinite_weights":
        step = report.first_nonfinite_weights_step
        return "weights finite" if step is None else f"weights NaN/Inf from step {step}"
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
