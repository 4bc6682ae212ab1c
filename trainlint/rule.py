"""The rule base class and registry: one rule, one module, registered by subclassing."""

from __future__ import annotations

import importlib
import pkgutil
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from trainlint.findings import Applicability, Finding, Level

if TYPE_CHECKING:
    from trainlint.context import FileContext


@dataclass(frozen=True)
class Example:
    """Code a rule must report, the findings it expects, and the code its fix must produce.

    ``expect`` lists ``(line, column)`` of each finding (1-based, as printed); ``fixed`` is the
    source after ``--fix`` (with ``--unsafe-fixes`` when ``unsafe`` is true), or None when the rule
    offers no fix for it.
    """

    code: str
    expect: Sequence[tuple[int, int]] = ()
    fixed: str | None = None
    unsafe: bool = False
    files: Mapping[str, str] = field(default_factory=dict)  # other modules of the example project

    @property
    def source(self) -> str:
        return textwrap.dedent(self.code).lstrip("\n")

    @property
    def fixed_source(self) -> str | None:
        return None if self.fixed is None else textwrap.dedent(self.fixed).lstrip("\n")


class Rule:
    """Base class. A subclass sets the class attributes below and implements ``check``.

    The docstring is the rule's documentation, in ruff's shape: ``## What it does``,
    ``## Why is this bad?`` and, where it has numbers, ``## Evidence``. The page adds the first
    example and its fix (``## Example``, ``## Use instead``), the fix's safety and the options.
    """

    code: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --list-rules
    level: ClassVar[Level] = "error"
    fix_applicability: ClassVar[Applicability | None] = None  # the fix it offers, if any
    default_enabled: ClassVar[bool] = True
    # A file that contains none of these substrings cannot give this rule a finding, so it is not
    # parsed for it; each must be a necessary condition (tests check every example holds one).
    # Empty means "always run".
    triggers: ClassVar[tuple[str, ...]] = ()
    default_options: ClassVar[Mapping[str, Any]] = {}
    # (low, high), both excluded, for a numeric option: a configured value outside is an error.
    option_bounds: ClassVar[Mapping[str, tuple[float, float]]] = {}
    examples: ClassVar[Sequence[Example]] = ()  # code the rule must report
    valid_examples: ClassVar[Sequence[str]] = ()  # look-alikes it must not report

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = {**self.default_options, **(options or {})}

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in _REGISTRY and _REGISTRY[cls.code] is not cls:
                raise RuntimeError(f"rule code {cls.code} is defined twice")
            _REGISTRY[cls.code] = cls


_REGISTRY: dict[str, type[Rule]] = {}
_LOADED = False


def all_rules() -> dict[str, type[Rule]]:
    """Every rule, by code, sorted; rule modules under ``trainlint.rules`` register on import."""
    global _LOADED
    if not _LOADED:
        import trainlint.rules as package

        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))
