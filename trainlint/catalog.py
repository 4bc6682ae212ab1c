"""What the command line needs to know about the rules without importing them.

The rule modules import LibCST, which costs most of a second to load. Choosing rules, checking a
configuration, ``--list-rules``, ``--explain``, SARIF descriptors and a run whose files are all
cached need only each rule's metadata and page, so those come from ``rules/catalog.json`` and
``rules/pages.json``: files generated from the rule modules by ``python -m trainlint.docs rules/``
and checked against them by a test. Once the rule modules are imported (any real linting), the live registry answers
instead, so rules registered at run time (tests) are known too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).parent / "rules" / "catalog.json"
PAGES = Path(__file__).parent / "rules" / "pages.json"  # apart: most commands need no page


@dataclass(frozen=True)
class RuleInfo:
    code: str
    name: str
    summary: str
    level: str
    fix_applicability: str | None
    default_enabled: bool
    default_options: Mapping[str, Any] = field(default_factory=dict)
    option_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "level": self.level,
            "fix": self.fix_applicability,
            "default_enabled": self.default_enabled,
            "options": dict(self.default_options),
            "option_bounds": {key: list(bounds) for key, bounds in self.option_bounds.items()},
        }

    @classmethod
    def from_json(cls, code: str, data: Mapping[str, Any]) -> RuleInfo:
        return cls(
            code=code,
            name=data["name"],
            summary=data["summary"],
            level=data["level"],
            fix_applicability=data["fix"],
            default_enabled=data["default_enabled"],
            default_options=dict(data.get("options", {})),
            option_bounds={key: (low, high) for key, (low, high) in data.get("option_bounds", {}).items()},
        )


def _rules_loaded() -> bool:
    rule = sys.modules.get("trainlint.rule")  # not imported here: it is not needed until linting
    return rule is not None and rule._LOADED


def info_of(rule: Any) -> RuleInfo:
    """The metadata of a rule class."""
    return RuleInfo(
        code=rule.code,
        name=rule.name,
        summary=rule.summary,
        level=rule.level,
        fix_applicability=rule.fix_applicability,
        default_enabled=rule.default_enabled,
        default_options=dict(rule.default_options),
        option_bounds=dict(getattr(rule, "option_bounds", {})),
    )


@lru_cache(maxsize=2)
def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def rule_infos() -> dict[str, RuleInfo]:
    """Every rule's metadata by code, sorted: from the registry once the rules are imported,
    else from the catalog (and from the registry when the catalog is missing)."""
    catalog = _load(CATALOG)
    if _rules_loaded() or not catalog:
        from trainlint.rule import all_rules

        return {code: info_of(rule) for code, rule in all_rules().items()}
    return {code: RuleInfo.from_json(code, data) for code, data in sorted(catalog.items())}


def rule_page(code: str) -> str | None:
    """The rule's page (``--explain``, ``rules/CODE.md``, SARIF help), or None for no such rule."""
    pages = {} if _rules_loaded() else _load(PAGES)
    if code in pages:
        return pages[code]
    from trainlint.docs import render_page
    from trainlint.rule import all_rules

    rule = all_rules().get(code)
    return render_page(rule) if rule is not None else None


def catalog_texts() -> dict[Path, str]:
    """The catalog and the pages generated from the rule modules, by file (written by
    ``python -m trainlint.docs``)."""
    from trainlint.docs import render_page
    from trainlint.rule import all_rules

    rules = all_rules()
    documents = {
        CATALOG: {code: info_of(rule).to_json() for code, rule in rules.items()},
        PAGES: {code: render_page(rule) for code, rule in rules.items()},
    }
    return {path: json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n" for path, data in documents.items()}
