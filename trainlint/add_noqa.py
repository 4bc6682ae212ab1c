"""``--add-noqa``: silence what is reported today, so that only new findings fail from now on.

Every line with a finding gets ``# noqa: CODE`` (all its codes, sorted). A comment already on the
line is kept and the directive follows it; an existing ``# noqa: X`` gets the new codes merged in.
A line that cannot end with a comment (inside a multi-line string, before a backslash
continuation) is left alone, and so is a file whose result would not parse. Problems with the
input itself (TL001-TL003) and unused-noqa findings (TL004) are never silenced this way.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from trainlint.config import ALWAYS_ON
from trainlint.discovery import Target
from trainlint.findings import Finding
from trainlint.fixes import write_atomic
from trainlint.noqa import parse_noqa, with_codes
from trainlint.runner import RunResult
from trainlint.source import SourceError, SourceText, content_digest, python_ast

NEVER_SILENCED = ALWAYS_ON | {"TL004"}
_IPYTHON_PLACEHOLDER = re.compile(r"^[ \t]*pass  # trainlint: ipython line \d+$")


def add_noqa(result: RunResult, targets: Mapping[str, Target], stream: TextIO) -> int:
    """Add the directives to every file of the run; print how many were added. Exit status 0."""
    added = 0
    for file in result.files:
        findings = [f for f in file.findings if f.code not in NEVER_SILENCED]
        target = targets.get(file.display)
        if not findings or target is None:
            continue
        added += _add_to_file(target.path, file.digest, findings)
    stream.write(f"Added {added} noqa directive{'' if added == 1 else 's'}.\n")
    return 0


def _add_to_file(path: Path, digest: str | None, findings: list[Finding]) -> int:
    try:
        raw = path.read_bytes()
        if digest is not None and content_digest(raw) != digest:
            return 0  # edited since it was linted: the findings' lines may have moved
        source = SourceText.from_bytes(raw)
    except (OSError, SourceError):
        return 0
    if path.suffix == ".ipynb":
        new_text, count = _add_to_notebook(source.text, findings)
    else:
        new_text, count = add_to_text(source.text, _codes_by_row(findings))
    if count == 0 or new_text == source.text:
        return 0
    try:
        write_atomic(path, source.to_bytes(new_text))
    except (OSError, UnicodeEncodeError):
        return 0
    return count


def _codes_by_row(findings: list[Finding], row_offset: int = 0) -> dict[int, set[str]]:
    rows: dict[int, set[str]] = {}
    for finding in findings:
        rows.setdefault(finding.start.row + row_offset, set()).add(finding.code)
    return rows


def add_to_text(text: str, codes_by_row: Mapping[int, set[str]]) -> tuple[str, int]:
    """The text with the directives added, and how many lines got one; the text unchanged (and
    0) when the result would not parse while the original did."""
    source = SourceText(text)
    open_lines = _lines_that_can_take_a_comment(text)
    comments = parse_noqa(text)
    edits: list[tuple[int, int, str]] = []
    for row, codes in sorted(codes_by_row.items()):
        if row not in open_lines or row > len(source.line_starts):
            continue
        line = source.line_text(row)
        if _IPYTHON_PLACEHOLDER.match(line):
            continue  # a notebook's IPython line stands in for code that is not Python
        start = source.line_starts[row - 1]
        comment = comments.get(row)
        if comment is not None:
            if not comment.codes:
                continue  # a bare `# noqa` already silences every code
            new_line = with_codes(line, comment, codes)
        else:
            new_line = f"{line.rstrip()}  # noqa: {', '.join(sorted(codes))}"
        if new_line != line:
            edits.append((start, start + len(line), new_line))
    new_text = text
    for start, end, content in sorted(edits, reverse=True):
        new_text = new_text[:start] + content + new_text[end:]
    if edits and _parses(text) and not _parses(new_text):
        return text, 0
    return new_text, len(edits)


def _lines_that_can_take_a_comment(text: str) -> set[int]:
    """Lines whose end is the end of a logical or physical line in Python's tokenizer: not inside
    a multi-line string, not continued by a backslash."""
    rows: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.NEWLINE, tokenize.NL):
                rows.add(token.start[0])
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return set()
    return rows


def _parses(text: str) -> bool:
    try:
        python_ast(text, "<add-noqa>")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _add_to_notebook(text: str, findings: list[Finding]) -> tuple[str, int]:
    """The notebook's code cells as one program (as linting reads them), the directives added
    there, and the cells written back; unchanged when they cannot be."""
    from trainlint.notebook import Notebook, NotebookError, NotebookLinter, Program

    try:
        notebook = Notebook.parse(text)
    except NotebookError:
        return text, 0
    program = Program.of(notebook)
    marker_rows = {cell.number: cell.marker_row for cell in program.rows}
    codes_by_row: dict[int, set[str]] = {}
    for finding in findings:
        if finding.cell in marker_rows:
            codes_by_row.setdefault(marker_rows[finding.cell] + finding.start.row, set()).add(finding.code)
    new_program, count = add_to_text(program.text, codes_by_row)
    if count == 0:
        return text, 0
    new_text = NotebookLinter._rewrite(notebook, program, new_program)
    return (new_text, count) if new_text is not None else (text, 0)
