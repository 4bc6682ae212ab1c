"""Printing findings: full, concise, json (ruff's shape), sarif (2.1.0) and github annotations."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainlint import DOCS_URL, __version__
from trainlint.catalog import rule_infos, rule_page
from trainlint.findings import Finding, Position
from trainlint.source import SourceText

FORMATS = ("full", "concise", "json", "sarif", "github")
MACHINE_FORMATS = frozenset({"json", "sarif", "github"})


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


class _Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text


def doc_url(code: str) -> str | None:
    """The address of the rule's page, or None while the pages have no public address (a path
    inside the repository is not a URL a reader could open)."""
    return f"{DOCS_URL.rstrip('/')}/{code}.md" if DOCS_URL else None


def _marker(finding: Finding) -> str:
    return "[*] " if finding.fix is not None and finding.fix.applicability == "safe" else ""


def location(f: Finding) -> str:
    """``path:row:column``, or ``nb.ipynb:cell 4:row:column`` for a notebook's cell (as ruff)."""
    cell = f"cell {f.cell}:" if f.cell is not None else ""
    return f"{terminal_safe(f.path)}:{cell}{f.start.row}:{f.start.column}"


def concise(findings: Sequence[Finding], stream: TextIO) -> None:
    style = _Style(use_colour(stream))
    for f in findings:
        where = location(f) + ":"
        stream.write(f"{style(where, '1')} {style(f.code, '1;31')} {_marker(f)}{terminal_safe(f.message)}\n")


def full(findings: Sequence[Finding], stream: TextIO, sources: Callable[[str], SourceText | None]) -> None:
    style = _Style(use_colour(stream))
    for f in findings:
        where = location(f) + ":"
        stream.write(f"{style(where, '1')} {style(f.code, '1;31')} {_marker(f)}{terminal_safe(f.message)}\n")
        source = sources(f.path)
        if source is not None and f.cell is not None:
            from trainlint.notebook import cell_source  # only for notebooks: it reads their JSON

            source = cell_source(source, f.cell)
        if source is not None and f.start.row <= len(source.line_starts):
            shown, column, width = excerpt(source, f)
            gutter = " " * len(str(f.start.row))
            caret = " " * (column - 1) + style("^" * width, "1;31")
            stream.write(f"{gutter} |\n{f.start.row} | {shown}\n{gutter} | {caret}\n")
            if f.fix is not None:
                hint = terminal_safe(f.fix.message) + ("" if f.fix.applicability == "safe" else " (unsafe fix)")
                stream.write(f"{gutter} = {style('help', '1;36')}: {hint}\n")
            stream.write("\n")


def _location(position: Position | None) -> dict[str, int] | None:
    return None if position is None else {"column": position.column, "row": position.row}


def json_records(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """ruff's JSON shape, so tools that read ruff can read trainlint."""
    records = []
    for f in findings:
        fix = None
        if f.fix is not None:
            fix = {
                "applicability": f.fix.applicability,
                "edits": [
                    {"content": e.content, "end_location": _location(e.end_location), "location": _location(e.location)}
                    for e in f.fix.edits
                ],
                "message": f.fix.message,
            }
        records.append(
            {
                "cell": f.cell,
                "code": f.code,
                "end_location": _location(f.end),
                "filename": valid_unicode(str(Path(f.path).resolve())) if f.path != "-" else "-",
                "fix": fix,
                "level": f.level,
                "location": _location(f.start),
                "message": f.message,
                "name": f.name,
                "noqa_row": f.start.row,
                "url": doc_url(f.code),
            }
        )
    return records


def _artifact_uri(path: str) -> str:
    """A SARIF artifact URI: relative paths stay relative (code scanning resolves them against the
    repository), absolute ones become ``file://`` URIs; both percent-encode the name's bytes, so
    a file name that is not UTF-8 keeps its exact bytes."""
    from urllib.parse import quote

    posix = Path(path).as_posix()
    if Path(path).is_absolute():
        return Path(path).as_uri()
    return quote(os.fsencode(posix), safe="/")


def _region(start: tuple[int, int], end: tuple[int, int]) -> dict[str, int]:
    return {"startLine": start[0], "startColumn": start[1], "endLine": end[0], "endColumn": end[1]}


def _notebook_location(f: Finding, uri: str, sources: Callable[[str], SourceText | None] | None) -> dict[str, Any]:
    """A notebook finding's SARIF location: the region of the ``.ipynb`` file's text that holds the
    cell's line (what a viewer of the file can highlight), or the file alone when that cannot be
    read; the cell and its own line and column are in the result's properties."""
    from trainlint.notebook_json import file_position

    physical: dict[str, Any] = {"artifactLocation": {"uri": uri}}
    notebook = sources(f.path) if sources is not None else None
    start = file_position(notebook.text, f.cell, f.start.row, f.start.column) if notebook and f.cell else None
    if start is not None:
        end = file_position(notebook.text, f.cell, f.end.row, f.end.column)  # type: ignore[arg-type]
        physical["region"] = _region(start, end if end is not None and end[0] == start[0] else (start[0], start[1] + 1))
    return {"physicalLocation": physical}


def sarif(findings: Sequence[Finding], sources: Callable[[str], SourceText | None] | None = None) -> dict[str, Any]:
    rules = rule_infos()
    codes = sorted({f.code for f in findings} | set(rules))
    index = {code: i for i, code in enumerate(codes)}
    descriptors = []
    for code in codes:
        descriptor: dict[str, Any] = {
            "id": code,
            "name": rules[code].name,
            "shortDescription": {"text": rules[code].summary},
            "help": {"text": rules[code].summary, "markdown": rule_page(code) or rules[code].summary},
            "defaultConfiguration": {"level": sarif_level(rules[code].level)},
            "properties": {"fix": rules[code].fix_applicability or "none"},
        }
        if doc_url(code):
            descriptor["helpUri"] = doc_url(code)
        descriptors.append(descriptor)
    results = []
    for f in findings:
        uri = _artifact_uri(f.path)
        result: dict[str, Any] = {
            "ruleId": f.code,
            "ruleIndex": index[f.code],
            "level": sarif_level(f.level),
            "message": {"text": f.message},
        }
        if f.cell is not None:
            result["locations"] = [_notebook_location(f, uri, sources)]
            result["properties"] = {
                "cell": f.cell,
                "cellRegion": _region((f.start.row, f.start.column), (f.end.row, f.end.column)),
            }
            results.append(result)  # a fix's positions are the cell's, not the file's: none is given
            continue
        result["locations"] = [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": uri},
                    "region": _region((f.start.row, f.start.column), (f.end.row, f.end.column)),
                }
            }
        ]
        if f.fix is not None and all(e.location and e.end_location for e in f.fix.edits):
            result["fixes"] = [
                {
                    "description": {"text": f.fix.message},
                    "artifactChanges": [
                        {
                            "artifactLocation": {"uri": uri},
                            "replacements": [
                                {
                                    "deletedRegion": {
                                        "startLine": e.location.row,  # type: ignore[union-attr]
                                        "startColumn": e.location.column,  # type: ignore[union-attr]
                                        "endLine": e.end_location.row,  # type: ignore[union-attr]
                                        "endColumn": e.end_location.column,  # type: ignore[union-attr]
                                    },
                                    "insertedContent": {"text": e.content},
                                }
                                for e in f.fix.edits
                            ],
                        }
                    ],
                }
            ]
        results.append(result)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "trainlint", "version": __version__, "rules": descriptors}}, "results": results}],
    }


def _escape_annotation(value: str, property_value: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if property_value else value


def sarif_level(level: str) -> str:
    """SARIF's name for a level: ``error``, ``warning``, and ``note`` for info."""
    return "note" if level == "info" else level


_GITHUB_COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def github(findings: Sequence[Finding], stream: TextIO) -> None:
    for f in findings:
        kind = _GITHUB_COMMANDS.get(f.level, "warning")
        properties = [
            f"title={_escape_annotation(f'trainlint ({f.code})', True)}",
            f"file={_escape_annotation(terminal_safe(f.path), True)}",
        ]
        if f.cell is None:  # a notebook cell's lines are not lines of the file: annotate the file
            properties += [f"line={f.start.row}", f"col={f.start.column}", f"endLine={f.end.row}", f"endColumn={f.end.column}"]
        text = f"{location(f)}: {f.code} {terminal_safe(f.message, line_breaks=True)}"
        stream.write(f"::{kind} {','.join(properties)}::{_escape_annotation(text)}\n")


def write_findings(
    findings: Sequence[Finding],
    output_format: str,
    stream: TextIO,
    sources: Callable[[str], SourceText | None],
) -> None:
    if output_format == "json":
        stream.write(json.dumps(json_records(findings), indent=2) + "\n")
    elif output_format == "sarif":
        stream.write(json.dumps(sarif(findings, sources), indent=2) + "\n")
    elif output_format == "github":
        github(findings, stream)
    elif output_format == "concise":
        concise(findings, stream)
    else:
        full(findings, stream, sources)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _found(findings: Sequence[Finding]) -> str:
    """``3 errors``, ``1 warning``, ``3 errors and 1 warning``, ``1 error, 1 warning and 2 info
    findings``: each finding by its level."""
    warnings = sum(1 for f in findings if f.level == "warning")
    infos = sum(1 for f in findings if f.level == "info")
    errors = len(findings) - warnings - infos
    parts = [_plural(errors, "error")] if errors or not (warnings or infos) else []
    if warnings:
        parts.append(_plural(warnings, "warning"))
    if infos:
        parts.append(_plural(infos, "info finding"))
    return " and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}"


@dataclass(frozen=True)
class SummaryCounts:
    """What the last line of a run says about fixes."""

    fixed: Sequence[Finding] = ()  # the findings whose fixes were applied
    found: Sequence[Finding] | None = None  # with --fix: the findings before fixing
    fixable: int = 0  # remaining findings `--fix` would remove (also those fixable after others)
    unsafe_fixable: int = 0  # and how many more `--fix --unsafe-fixes` would
    fix_mode: bool = False  # --fix (or --diff) ran
    unsafe_fixes: bool = False  # unsafe fixes are on (command line or configuration)
    fix_command: str = "trainlint --fix"  # what turns on every fix counted as fixable


def summary(remaining: Sequence[Finding], counts: SummaryCounts) -> str:
    if counts.fix_mode and counts.fixed:
        before = counts.found if counts.found is not None else [*counts.fixed, *remaining]
        fixed = max(0, len(before) - len(remaining))  # a fix can remove more than its own finding
        found = f"Found {_found(before)} ({fixed} fixed, {len(remaining)} remaining)."
    elif not remaining:
        return "All checks passed!"
    else:
        found = f"Found {_found(remaining)}."
    parts = [found]
    hidden = counts.unsafe_fixable
    if counts.fix_mode:
        if hidden and not counts.unsafe_fixes:
            parts.append(f"{hidden} hidden fix{'' if hidden == 1 else 'es'} can be enabled with `--unsafe-fixes`.")
        return " ".join(parts)
    if counts.unsafe_fixes:
        total = counts.fixable + hidden
        if total:
            parts.append(f"[*] {total} fixable with `{counts.fix_command}`.")
        return " ".join(parts)
    if counts.fixable:
        parts.append(f"[*] {counts.fixable} fixable with `{counts.fix_command}`.")
    if hidden:
        parts.append(f"{hidden} more fixable with `--fix --unsafe-fixes`.")
    return " ".join(parts)


def statistics_records(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """``--statistics --output-format json``: ruff's shape, one record per code, most frequent
    first; ``fixable_count`` counts the findings that carry a safe fix."""
    counts = Counter(f.code for f in findings)
    names = {f.code: f.name for f in findings}
    fixable = Counter(f.code for f in findings if f.fix is not None and f.fix.applicability == "safe")
    return [
        {"code": code, "name": names[code], "count": count, "fixable": fixable[code] > 0, "fixable_count": fixable[code]}
        for code, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def statistics(findings: Sequence[Finding], stream: TextIO) -> None:
    counts = Counter(f.code for f in findings)
    names = {f.code: f.name for f in findings}
    fixable = {f.code for f in findings if f.fix is not None and f.fix.applicability == "safe"}
    width = max((len(str(c)) for c in counts.values()), default=1)
    for code, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        marker = "[*]" if code in fixable else "   "
        stream.write(f"{count:>{width}}\t{code}\t{marker} {names[code]}\n")


# -- what reaches a terminal ------------------------------------------------------------------------
EXCERPT_WIDTH = 160  # characters of a source line shown under a finding
_EXCERPT_LEAD = 40  # of them, before the finding's column on a line that is cut

_REPLACEMENT = 0xFFFD
# One character for one, so that a caret under the line stays aligned: C0 controls become their
# Unicode pictures (ESC is shown as U+241B), DEL too; C1 controls (0x9b is a one-byte CSI), the
# bidirectional overrides of "Trojan Source" and lone surrogates (undecodable bytes of a file
# name) become the replacement character.
_TERMINAL_TABLE = {
    **{code: 0x2400 + code for code in range(0x20) if code != 0x09},
    0x7F: 0x2421,
    **{code: _REPLACEMENT for code in range(0x80, 0xA0)},
    **{code: _REPLACEMENT for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))},
    **{code: _REPLACEMENT for code in range(0xD800, 0xE000)},
}


_KEEPING_LINE_BREAKS = {code: value for code, value in _TERMINAL_TABLE.items() if code not in (0x0A, 0x0D)}


def terminal_safe(text: str, line_breaks: bool = False) -> str:
    """Text from a linted file (a line, a message quoting it, a file name) as it may be written
    to a terminal: no escape sequence, undecodable byte or (unless kept for a format that escapes
    them itself) line break gets through."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_KEEPING_LINE_BREAKS if line_breaks else _TERMINAL_TABLE)


_SURROGATES = {code: _REPLACEMENT for code in range(0xD800, 0xE000)}


def valid_unicode(text: str) -> str:
    """``text`` with the lone surrogates of an undecodable file name replaced (for JSON)."""
    return text if text.isascii() else text.translate(_SURROGATES)


def excerpt(source: SourceText, finding: Finding) -> tuple[str, int, int]:
    """The part of the finding's line shown under it, with the finding's column and caret width
    in it: a line longer than EXCERPT_WIDTH (a minified or generated megabyte line) is cut around
    the finding, with ``…`` where text was left out, so each finding prints a bounded amount (and
    costs no more than that: the line is never copied whole)."""
    text, row, column = source.text, finding.start.row, finding.start.column
    line_start = source.line_starts[row - 1]
    line_end = source.line_starts[row] if row < len(source.line_starts) else len(text)
    while line_end > line_start and text[line_end - 1] in "\r\n":
        line_end -= 1
    length = line_end - line_start
    end_column = finding.end.column if finding.end.row == row else length + 1
    width = max(1, end_column - column)
    start = 0 if length <= EXCERPT_WIDTH else max(0, min(column - 1 - _EXCERPT_LEAD, length - EXCERPT_WIDTH))
    end = min(length, start + EXCERPT_WIDTH)
    prefix, suffix = ("…" if start > 0 else ""), ("…" if end < length else "")
    shown = terminal_safe(text[line_start + start : line_start + end])  # one character for one
    if not prefix and not suffix:
        return shown, column, width
    return prefix + shown + suffix, column - start + len(prefix), max(1, min(width, end - (column - 1)))


def tolerate_unencodable(*streams: object) -> None:
    """Print what a stream's encoding cannot hold as escapes rather than fail (a strict ASCII or
    latin-1 stdout, PYTHONIOENCODING=...:strict): a linter's report must always come out."""
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
