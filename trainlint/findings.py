"""What a rule reports: a finding with its range and, where possible, a fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Applicability = Literal["safe", "unsafe"]
# "info": worth knowing, not a bug (a cost, a redundancy); SARIF calls it "note".
Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Position:
    """1-based line and 1-based column, as ruff and flake8 print them."""

    row: int
    column: int


@dataclass(frozen=True, order=True)
class Edit:
    """Replace ``text[start:end]`` (character offsets) with ``content``; ``start == end`` inserts.
    ``location``/``end_location`` are the same range as printed positions (for JSON and SARIF)."""

    start: int
    end: int
    content: str
    location: Position | None = field(default=None, compare=False)
    end_location: Position | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fix:
    edits: tuple[Edit, ...]
    applicability: Applicability
    message: str

    @property
    def span(self) -> tuple[int, int]:
        return min(e.start for e in self.edits), max(e.end for e in self.edits)


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    message: str
    path: str
    start: Position
    end: Position
    level: Level = "error"
    fix: Fix | None = None
    # Offsets into the source the finding was made on; fixes use them, output does not.
    offset: int = field(default=0, compare=False)
    # In a notebook: the 1-based cell, and start/end are the line and column within that cell.
    cell: int | None = None

    @property
    def sort_key(self) -> tuple[str, int, int, int, str]:
        return (self.path, self.cell or 0, self.start.row, self.start.column, self.code)

    def with_path(self, path: str) -> Finding:
        return replace(self, path=path)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.fix is not None:
            data["fix"]["edits"] = [asdict(e) for e in self.fix.edits]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        fix = data.get("fix")
        return cls(
            code=data["code"],
            name=data["name"],
            message=data["message"],
            path=data["path"],
            start=Position(**data["start"]),
            end=Position(**data["end"]),
            level=data["level"],
            fix=Fix(
                edits=tuple(_edit_from_json(e) for e in fix["edits"]),
                applicability=fix["applicability"],
                message=fix["message"],
            )
            if fix
            else None,
            offset=data.get("offset", 0),
            cell=data.get("cell"),
        )


def is_fix_allowed(fix: Fix | None, unsafe_fixes: bool) -> bool:
    return fix is not None and (fix.applicability == "safe" or unsafe_fixes)


def _edit_from_json(data: dict[str, Any]) -> Edit:
    location, end_location = data.get("location"), data.get("end_location")
    return Edit(
        data["start"],
        data["end"],
        data["content"],
        Position(**location) if location else None,
        Position(**end_location) if end_location else None,
    )
