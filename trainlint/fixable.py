"""How many findings ``--fix`` (and ``--fix --unsafe-fixes``) would remove: the summary's counts.

Some fixes exist only once another has landed: TL103's clip and TL109's skip are fixable after
TL101's fix moves ``unscale_``, so those findings carry no fix when they are first reported. A
count of the findings that carry a safe fix would call them unfixable, and ``--fix`` would then
fix more than the summary promised. When such a finding is present, the fixes are run in memory
and the findings they remove are counted; otherwise the fixes the findings carry are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trainlint.catalog import rule_infos
from trainlint.findings import Finding

if TYPE_CHECKING:
    from trainlint.engine import FixOutcome


class _Fixer(Protocol):
    def fix(self, text: str, display: str, real_path: Path | None, unsafe_fixes: bool) -> FixOutcome: ...


@dataclass(frozen=True)
class FixCounts:
    safe: int = 0  # findings that `--fix` removes
    unsafe: int = 0  # more that `--fix --unsafe-fixes` removes


def _waits_for_another_fix(finding: Finding, fixing_rules: frozenset[str]) -> bool:
    return finding.fix is None and finding.code in fixing_rules


def count_fixable(
    fixer: _Fixer,
    text: str,
    display: str,
    real_path: Path | None,
    findings: Sequence[Finding],
    safe_fixes_applied: bool = False,
) -> FixCounts:
    """The counts for ``findings``, the findings of ``text``. After ``--fix`` has applied the safe
    fixes (``safe_fixes_applied``) only the unsafe ones that remain are counted."""
    if not any(f.fix is not None for f in findings):
        return FixCounts()  # nothing is fixable now, so nothing can become fixable
    fixing_rules = frozenset(code for code, info in rule_infos().items() if info.fix_applicability)
    if not any(_waits_for_another_fix(f, fixing_rules) for f in findings):
        safe = 0 if safe_fixes_applied else sum(1 for f in findings if f.fix and f.fix.applicability == "safe")
        unsafe = sum(1 for f in findings if f.fix and f.fix.applicability == "unsafe")
        return FixCounts(safe, unsafe)
    safe, remaining, safe_text = 0, list(findings), text
    if not safe_fixes_applied and any(f.fix is not None and f.fix.applicability == "safe" for f in findings):
        outcome = fixer.fix(text, display, real_path, unsafe_fixes=False)
        safe, remaining, safe_text = max(0, len(findings) - len(outcome.remaining)), outcome.remaining, outcome.text
    if not any(f.fix is not None for f in remaining):
        return FixCounts(safe, 0)
    outcome = fixer.fix(safe_text, display, real_path, unsafe_fixes=True)
    return FixCounts(safe, max(0, len(remaining) - len(outcome.remaining)))
