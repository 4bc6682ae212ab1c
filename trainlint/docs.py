"""Rule pages, generated from each rule's module so that the docs never drift from the code.

``trainlint --explain CODE`` prints a page; ``python -m trainlint.docs rules/ [CODE ...]`` writes them,
and a test fails when a page under ``rules/`` differs from what the code generates. The same
command writes ``trainlint/rules/catalog.json`` and ``pages.json`` (the rules' metadata and
pages, read by the command line without importing the rule modules; see ``trainlint/catalog.py``).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

from trainlint.rule import Rule, all_rules

EVIDENCE = Path(__file__).parent / "rules" / "evidence.json"

_FIX_TEXT = {
    "safe": "safe: applied by `--fix` (see *Fix safety* below).",
    "unsafe": "unsafe: it can change what the model learns, so it is applied only with `--fix --unsafe-fixes` "
    "(see *Fix safety* below).",
    None: "none: the finding says what to change.",
}


def _evidence_rows(code: str) -> list[dict[str, str]]:
    try:
        return json.loads(EVIDENCE.read_text(encoding="utf-8")).get(code, [])
    except (OSError, ValueError):
        return []


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_page(rule: type[Rule]) -> str:
    enabled = "yes" if rule.default_enabled else "no (enable with `extend-select`)"
    lines = [
        f"# {rule.code}: {rule.name}",
        "",
        rule.summary,
        "",
        f"- Level: {rule.level}",
        f"- Fix: {_FIX_TEXT[rule.fix_applicability]}",
        f"- Enabled by default: {enabled}",
        "",
        inspect.cleandoc(rule.__doc__ or "").strip(),
        "",
    ]
    if rule.examples:
        example = rule.examples[0]
        lines += ["## Example", "", "```python", example.source.rstrip("\n"), "```", ""]
        if example.fixed_source is not None:
            flag = "`trainlint --fix --unsafe-fixes`" if example.unsafe else "`trainlint --fix`"
            lines += [f"## Use instead ({flag} writes this)", "", "```python", example.fixed_source.rstrip("\n"), "```", ""]
    if rule.default_options:
        lines += ["## Options", "", f"Set under `[tool.trainlint.rules.{rule.code}]` in pyproject.toml:", ""]
        lines += [f"- `{key}` (default `{value!r}`)" for key, value in rule.default_options.items()]
        lines.append("")
    rows = _evidence_rows(rule.code)
    if rows:
        fixed_by = "as fixed by trainlint" if rule.fix_applicability else "with the change its finding asks for, made by hand"
        lines += [
            "## Confirmed at runtime",
            "",
            "`trainlint confirm --examples " + rule.code + "` ran the example as written and " + fixed_by + ","
            " with the same seed and data:",
            "",
            "| device | torch | date | example | original | fixed | result |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            "| " + " | ".join(_cell(r[key]) for key in ("device", "torch", "date", "example", "original", "fixed", "confirmed")) + " |"
            for r in rows
        ]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def rule_table() -> str:
    rows = ["| code | name | fix | default | summary |", "|---|---|---|---|---|"]
    for code, rule in all_rules().items():
        fix = rule.fix_applicability or "-"
        rows.append(f"| {code} | {rule.name} | {fix} | {'on' if rule.default_enabled else 'off'} | {rule.summary} |")
    return "\n".join(rows) + "\n"


def write_pages(directory: Path, codes: list[str] | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for code, rule in all_rules().items():
        if codes and code not in codes:
            continue
        page = directory / f"{code}.md"
        page.write_text(render_page(rule), encoding="utf-8")
        written.append(page)
    return written


def write_catalog() -> list[Path]:
    from trainlint.catalog import catalog_texts

    written = []
    for path, text in catalog_texts().items():
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    arguments = sys.argv[1:] or ["rules"]
    for path in write_pages(Path(arguments[0]), arguments[1:]):
        print(path)
    for path in write_catalog():
        print(path)
