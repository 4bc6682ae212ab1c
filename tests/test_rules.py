"""Every rule's own examples, its fixture directory and its page, checked the same way.

Fixture layout, one directory per rule: ``tests/fixtures/rules/TL101/``
- ``pos_<style>.py``: code the rule must report; ``pos_<style>.expected`` lists the exact findings
  of that rule, one ``LINE:COLUMN`` per line; ``pos_<style>.fixed.py`` is the file after
  ``--fix --select CODE --unsafe-fixes`` (absent: the rule offers no fix there, the text must not change).
- ``neg_<style>.py``: a look-alike that must give no finding of that rule.
"""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from trainlint.config import Settings, apply_cli_overrides
from trainlint.docs import render_page
from trainlint.engine import Linter
from trainlint.project import ProjectIndex
from trainlint.rule import Example, all_rules

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
PAGES = Path(__file__).parent.parent / "rules"
CHECKED_RULES = {code: rule for code, rule in all_rules().items() if rule.examples or rule.valid_examples}


def linter_for(code: str, root: Path | None = None) -> Linter:
    settings = apply_cli_overrides(Settings(), [code], None, None)
    return Linter(settings, ProjectIndex([root] if root else []))


def positions(findings, code: str) -> list[tuple[int, int]]:
    return [(f.start.row, f.start.column) for f in findings if f.code == code]


def _example_project(tmp_path: Path, example: Example) -> Path:
    for name, text in example.files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    main = tmp_path / "train.py"
    main.write_text(example.source, encoding="utf-8")
    return main


@pytest.mark.parametrize(
    "code,index", [(c, i) for c, r in CHECKED_RULES.items() for i in range(len(r.examples))]
)
def test_rule_example_is_reported_and_fixed(code: str, index: int, tmp_path: Path) -> None:
    example = all_rules()[code].examples[index]
    main = _example_project(tmp_path, example)
    linter = linter_for(code, tmp_path)
    findings = linter.lint(example.source, "train.py", main)
    assert positions(findings, code) == list(example.expect)
    outcome = linter.fix(example.source, "train.py", main, unsafe_fixes=True)
    expected = example.fixed_source if example.fixed_source is not None else example.source
    assert outcome.text == expected
    cst.parse_module(outcome.text)
    assert linter.fix(outcome.text, "train.py", main, unsafe_fixes=True).text == outcome.text


@pytest.mark.parametrize(
    "code,index", [(c, i) for c, r in CHECKED_RULES.items() for i in range(len(r.valid_examples))]
)
def test_rule_valid_example_is_not_reported(code: str, index: int) -> None:
    import textwrap

    source = textwrap.dedent(all_rules()[code].valid_examples[index]).lstrip("\n")
    assert positions(linter_for(code).lint(source, "valid.py"), code) == []


@pytest.mark.parametrize("code", list(CHECKED_RULES))
def test_every_example_contains_a_trigger_word(code: str) -> None:
    """Trigger words decide which files are parsed: each must be necessary for a finding."""
    rule = all_rules()[code]
    sources = [e.source for e in rule.examples] + _fixture_sources(code, "pos_")
    for source in sources:
        assert not rule.triggers or any(t in source for t in rule.triggers)


def _fixture_sources(code: str, prefix: str) -> list[str]:
    directory = FIXTURES / code
    if not directory.is_dir():
        return []
    return [p.read_text(encoding="utf-8") for p in sorted(directory.glob(f"{prefix}*.py")) if not p.name.endswith(".fixed.py")]


def _fixture_cases(prefix: str) -> list[tuple[str, Path]]:
    return [
        (directory.name, path)
        for directory in sorted(FIXTURES.glob("TL*"))
        for path in sorted(directory.glob(f"{prefix}*.py"))
        if not path.name.endswith(".fixed.py")
    ]


@pytest.mark.parametrize("code,path", _fixture_cases("pos_"), ids=lambda v: getattr(v, "name", v))
def test_positive_fixture(code: str, path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    linter = linter_for(code, path.parent)
    expected = [tuple(map(int, line.split(":"))) for line in path.with_suffix(".expected").read_text().split()]
    assert positions(linter.lint(source, path.name, path), code) == expected
    fixed_path = path.with_name(path.stem + ".fixed.py")
    outcome = linter.fix(source, path.name, path, unsafe_fixes=True)
    assert outcome.text == (fixed_path.read_text(encoding="utf-8") if fixed_path.exists() else source)
    cst.parse_module(outcome.text)
    if fixed_path.exists():
        again = linter.fix(outcome.text, path.name, path, unsafe_fixes=True)
        assert again.text == outcome.text, "a second --fix must change nothing"
        assert all(f.fix is None for f in again.remaining if f.code == code)


@pytest.mark.parametrize("code,path", _fixture_cases("neg_"), ids=lambda v: getattr(v, "name", v))
def test_negative_fixture(code: str, path: Path) -> None:
    linter = linter_for(code, path.parent)
    assert positions(linter.lint(path.read_text(encoding="utf-8"), path.name, path), code) == []


@pytest.mark.parametrize("code", list(all_rules()))
def test_rule_page_matches_the_code(code: str) -> None:
    page = PAGES / f"{code}.md"
    assert page.exists(), f"rules/{code}.md is missing: run python -m trainlint.docs rules/"
    assert page.read_text(encoding="utf-8") == render_page(all_rules()[code]), (
        f"rules/{code}.md differs from the rule's code: run python -m trainlint.docs rules/"
    )


@pytest.mark.parametrize("code", list(all_rules()))
def test_rule_is_documented_in_ruff_shape(code: str) -> None:
    rule = all_rules()[code]
    assert rule.__doc__ and "## What it does" in rule.__doc__ and "## Why is this bad?" in rule.__doc__
    assert rule.code.startswith("TL") and len(rule.code) == 5 and rule.code[2:].isdigit()


def test_readme_lists_every_rule_as_the_code_does() -> None:
    from trainlint.docs import rule_table

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert rule_table() in readme, "README's rule table differs: paste trainlint.docs.rule_table()"


CLEAN = Path(__file__).parent / "fixtures" / "clean"


@pytest.mark.parametrize("path", sorted(CLEAN.glob("*.py")), ids=lambda p: p.name)
def test_clean_training_code_gives_no_finding_from_any_rule(path: Path) -> None:
    """Correct training code in the shapes real projects use: every rule must stay quiet."""
    linter = Linter(Settings(select=["ALL"]), ProjectIndex([path.parent]))
    assert linter.lint(path.read_text(encoding="utf-8"), path.name, path) == []


# -- fix safety: "a fix that could change what a trained model computes is unsafe" ---------------

# The review of every fix (README, "Which fixes are safe"): safe where the fixed code computes what
# the original already meant and differs only where the original failed.
FIX_SAFETY = {
    "TL101": "safe", "TL102": "safe", "TL103": "safe", "TL104": "safe", "TL105": "safe",
    "TL106": "safe",  # unsafe next to another scaled backward (its Fix safety section)
    "TL107": "safe", "TL108": "unsafe", "TL109": "safe", "TL111": "unsafe",
    "TL201": "safe",  # unsafe when an eps is dropped, and for the clamp
    "TL202": "safe", "TL203": "safe", "TL204": "safe", "TL205": "unsafe",
    "TL206": "unsafe",  # the loss and its gradients change on every batch, not only on broken ones
    "TL301": "unsafe", "TL302": "unsafe", "TL401": "unsafe", "TL402": "unsafe", "TL403": "safe",
    "TL404": "safe",  # the training mode the loop already trained in before the validation
    "TL405": "safe", "TL406": "safe",  # the same values, without the graph
    "TL407": "unsafe",  # a different step size, which a tuned learning rate may have compensated
    "TL408": "safe",  # set_epoch: the reshuffling DistributedSampler is documented to need
}


def test_every_fix_was_reviewed_for_safety() -> None:
    offered = {code: rule.fix_applicability for code, rule in all_rules().items() if rule.fix_applicability}
    assert offered == FIX_SAFETY


@pytest.mark.parametrize("code", sorted(FIX_SAFETY))
def test_rule_page_says_why_its_fix_is_safe_or_unsafe(code: str) -> None:
    page = render_page(all_rules()[code])
    section = page.split("## Fix safety\n", 1)[1].split("\n## ", 1)[0]
    assert section.strip().startswith(("Safe", "Unsafe")), section[:80]


@pytest.mark.parametrize(
    "code,index", [(c, i) for c, r in CHECKED_RULES.items() for i, e in enumerate(r.examples) if e.fixed is not None]
)
def test_example_fix_needs_unsafe_fixes_exactly_when_the_page_says_so(code: str, index: int, tmp_path: Path) -> None:
    """The page's "Use instead (`trainlint --fix` writes this)" is true, and so is `--unsafe-fixes`."""
    example = all_rules()[code].examples[index]
    main = _example_project(tmp_path, example)
    safe_only = linter_for(code, tmp_path).fix(example.source, "train.py", main, unsafe_fixes=False).text
    if example.unsafe:
        assert safe_only == example.source
    else:
        assert safe_only == example.fixed_source
