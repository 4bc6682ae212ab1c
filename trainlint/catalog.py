"""What the command line needs to know about the rules without importing them.

The rule modules import LibCST, which costs most of a second to load. Choosing rules, checking a
configuration, ``--list-rules``, ``--explain``, SARIF descriptors and a run whose files are all
cached need only each rule's metadata and page, so those come from ``rules/catalog.json``: a
file generated from the rule modules by ``python -m trainlint.docs rules/`` and checked against
them by a test. Once the rule modules are imported (any real linting), the live registry answers
instead, so rules registered at run time (tests) are known too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).parent / "rules" / "catalog.json"


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
    from trainlint import rule

    return rule._LOADED


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


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any]:
    try:
        return json.loads(CATALOG.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def rule_infos() -> dict[str, RuleInfo]:
    """Every rule's metadata by code, sorted: from the registry once the rules are imported,
    else from the catalog (and from the registry when the catalog is missing)."""
    catalog = _catalog()
    if _rules_loaded() or not catalog.get("rules"):
        from trainlint.rule import all_rules

        return {code: info_of(rule) for code, rule in all_rules().items()}
    return {code: RuleInfo.from_json(code, data) for code, data in sorted(catalog["rules"].items())}


def rule_page(code: str) -> str | None:
    """The rule's page (``--explain``, ``rules/CODE.md``, SARIF help), or None for no such rule."""
    pages = _catalog().get("pages", {})
    if not _rules_loaded() and code in pages:
        return pages[code]
    from trainlint.docs import render_page
    from trainlint.rule import all_rules

    rule = all_rules().get(code)
    return render_page(rule) if rule is not None else None


def build_catalog() -> dict[str, Any]:
    """The catalog generated from the rule modules (written by ``python -m trainlint.docs``)."""
    from trainlint.docs import render_page
    from trainlint.rule import all_rules

    rules = all_rules()
    return {
        "rules": {code: info_of(rule).to_json() for code, rule in rules.items()},
        "pages": {code: render_page(rule) for code, rule in rules.items()},
    }


def catalog_text() -> str:
    return json.dumps(build_catalog(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
