"""Jupyter notebooks: their Python cells linted as one program, findings mapped back to cells.

A notebook runs its cells top to bottom in one namespace, so the rules see the code cells joined
in cell order. Each cell is preceded by a marker comment line, which lets a finding's line be
mapped back to (cell, line in the cell) and lets the fixed program be cut back into cells. IPython
syntax that is not Python (``%magic``, ``!shell``, ``obj?``) is replaced line for line by a
``pass`` placeholder at the same indentation, so positions do not move and the placeholder can be
put back after fixing; cells run by another interpreter (``%%bash``) or written in another
language are left out.

``--fix`` rewrites only the ``source`` values of the cells whose text changed, spliced into the
file's own JSON text: outputs, metadata, execution counts, key order, indentation and the final
newline stay byte for byte as they were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlint.config import SYNTAX_ERROR
from trainlint.findings import Edit, Finding, Fix, Position
from trainlint.notebook_json import JsonStyle, NotebookError, source_spans, split_lines
from trainlint.source import SourceText

if TYPE_CHECKING:  # the engine imports LibCST: loaded only when a notebook is linted
    from trainlint.engine import FixOutcome, Linter

# Python's syntax errors name other rows of the joined program: "after 'with' statement on line 459"
_ON_LINE = re.compile(r"on line (\d+)")

NOTEBOOK_SUFFIX = ".ipynb"
_MARKER = "# trainlint: notebook cell {} (generated line)"
_MARKER_LINE = re.compile(r"^# trainlint: notebook cell (\d+) \(generated line\)\n", re.MULTILINE)
_PLACEHOLDER = "{indent}pass  # trainlint: ipython line {id}"
_PLACEHOLDER_LINE = re.compile(r"^[ \t]*pass  # trainlint: ipython line (\d+)(?=[\r\n]|\Z)", re.MULTILINE)

# Cell magics whose body is Python run by IPython itself; any other (%%bash, %%writefile,
# %%html, ...) hands the body to something else, so the cell is not linted.
PYTHON_CELL_MAGICS = frozenset({"capture", "debug", "prun", "time", "timeit"})
_LINE_MAGIC = re.compile(r"[ \t]*[%!]")
# Magics and shell aliases IPython runs without `%` when automagic is on (the default).
_AUTOMAGIC = re.compile(
    r"[ \t]*(?:pip|conda|mamba|cd|ls|ll|lf|lk|lx|ldir|env|set_env|cat|pwd|mkdir|rmdir|rm|cp|mv|less|more|man|"
    r"clear|history|reset|load_ext|reload_ext|unload_ext|matplotlib|timeit|time|run|load|pdb|debug|alias|"
    r"pushd|popd|dirs|dhist|config|store|autoreload|aimport|sx|system|bookmark|who|whos|xdel|tb|xmode)\b"
)
# What follows a name in Python and never starts a magic's arguments: `config = {`, `time.sleep(1)`,
# `run(...)`, `history[-1]`, `set_env += x` (IPython's own automagic makes the same distinction).
_PYTHON_AFTER_NAME = re.compile(r"\.[A-Za-z_]|[ \t]*(?:[=(\[,:)]|[-+*/%&|^<>!@]=|\*\*|//)")
_ASSIGNED_MAGIC = re.compile(r"[ \t]*[A-Za-z_][\w.]*(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*[ \t]*=[ \t]*[%!]")
_HELP = re.compile(r"[ \t]*(?:\?{1,2}[\w.*]+|[\w.*\[\]()]+\?{1,2})[ \t]*$")


# -- reading the notebook ----------------------------------------------------------------------
@dataclass
class Cell:
    number: int  # 1-based position among all the notebook's cells, as printed (`cell 4`)
    kind: str  # "code", "markdown", "raw"
    source: str
    language: str | None  # a per-cell language set by the editor (VS Code, Polyglot), if any


@dataclass
class Notebook:
    text: str
    cells: list[Cell]
    language: str | None  # the kernel's language, if the metadata names one

    @classmethod
    def parse(cls, text: str) -> Notebook:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            ending = " (the file ends early)" if exc.pos >= len(text.rstrip()) else ""
            raise NotebookError(f"invalid notebook: not valid JSON: {exc.msg}{ending}", exc.lineno, exc.colno) from None
        except RecursionError:
            raise NotebookError("invalid notebook: JSON nested too deeply") from None
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
            if isinstance(data, dict) and "worksheets" in data:
                raise NotebookError("unsupported notebook: nbformat 3; convert it with `jupyter nbconvert --to notebook`")
            raise NotebookError("invalid notebook: expected a JSON object with a `cells` list")
        cells = [_read_cell(number, cell) for number, cell in enumerate(data["cells"], start=1)]
        return cls(text, cells, _kernel_language(data.get("metadata")))

    @property
    def is_python(self) -> bool:
        return self.language is None or is_python_language(self.language)

    def with_sources(self, sources: dict[int, str]) -> str:
        """The file's text with the given cells' (by number) sources replaced, nothing else."""
        spans = source_spans(self.text)
        style = JsonStyle.of(self.text)
        text = self.text
        for number in sorted(sources, reverse=True):
            span = spans[number - 1]
            if span is None:
                raise NotebookError(f"cell {number} has no `source` to rewrite")
            start, end = span
            text = text[:start] + style.source_value(sources[number], text[start:end]) + text[end:]
        return text


def _read_cell(number: int, cell: Any) -> Cell:
    if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
        raise NotebookError(f"invalid notebook: cell {number} is not an object with a `cell_type`")
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise NotebookError(f"invalid notebook: the `source` of cell {number} is not text or a list of lines")
    if "source" not in cell and cell["cell_type"] == "code":
        raise NotebookError(f"invalid notebook: cell {number} has no `source`")
    return Cell(number, cell["cell_type"], source, _cell_language(cell.get("metadata")))


def is_python_language(name: str) -> bool:
    """``python``, ``python3``, ``ipython3``: the names kernels and editors give Python."""
    return re.fullmatch(r"i?python\d*", name.strip().lower()) is not None


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _kernel_language(metadata: Any) -> str | None:
    language = _get(metadata, "kernelspec", "language") or _get(metadata, "language_info", "name")
    return language if isinstance(language, str) else None


def _cell_language(metadata: Any) -> str | None:
    for keys in (("vscode", "languageId"), ("polyglot_notebook", "kernelName"), ("dotnet_interactive", "language")):
        language = _get(metadata, *keys)
        if isinstance(language, str):
            return language
    return None


# -- IPython syntax -> placeholders --------------------------------------------------------------
@dataclass
class _ScanState:
    """Where a line starts: inside brackets, a string or after a backslash continuation."""

    depth: int = 0
    string: str | None = None  # the open string's quote
    continued: bool = False

    @property
    def at_statement_start(self) -> bool:
        return self.depth == 0 and self.string is None and not self.continued


def _scan(line: str, state: _ScanState) -> None:
    """Advance the state over one physical line (with its line break)."""
    index, escaped_break, comment = 0, False, False
    while index < len(line):
        char = line[index]
        if state.string is not None:
            if char == "\\":
                escaped_break = line[index + 1 : index + 2] in ("\n", "\r")
                index += 2
            elif line.startswith(state.string, index):
                index += len(state.string)
                state.string = None
            else:
                index += 1
            continue
        if char == "#":
            comment = True
            break
        if char in "\"'":
            quote = line[index : index + 3] if line[index : index + 3] in ('"""', "'''") else char
            state.string = quote
            index += len(quote)
            continue
        if char in "([{":
            state.depth += 1
        elif char in ")]}":
            state.depth = max(0, state.depth - 1)
        index += 1
    if state.string in ('"', "'") and not escaped_break:
        state.string = None  # an unterminated one-line string: Python will say so
    state.continued = not comment and state.string is None and line.rstrip("\r\n").endswith("\\")


def _is_ipython_line(line: str) -> bool:
    return bool(
        _LINE_MAGIC.match(line) or _ASSIGNED_MAGIC.match(line) or _HELP.match(line.rstrip("\r\n"))
        or _is_automagic(line)
    )


def _is_automagic(line: str) -> bool:
    """``pip install -q torch``, ``ls ./data``, ``cat log.txt``: a known magic or shell alias
    written without ``%`` (IPython's automagic, on by default) on a line that is not Python."""
    match = _AUTOMAGIC.match(line)
    if not match or _PYTHON_AFTER_NAME.match(line, match.end()):
        return False
    try:
        compile(line.strip(), "<cell line>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return True
    return False  # `env` alone, `cd / data`: valid Python, linted as such (nothing to find there)


def _cell_magic(source: str) -> str | None:
    if not source.startswith("%%"):
        return None
    match = re.match(r"%%([\w.-]*)", source)
    return match.group(1) if match else ""


@dataclass
class _Placeholders:
    originals: dict[int, str] = field(default_factory=dict)  # id -> the original line, no break
    lines: dict[int, str] = field(default_factory=dict)  # id -> its placeholder line
    cell_of: dict[int, int] = field(default_factory=dict)  # id -> cell number

    def make(self, cell: int, original: str, indent: str) -> str:
        key = len(self.originals) + 1
        self.originals[key] = original
        self.lines[key] = _PLACEHOLDER.format(indent=indent, id=key)
        self.cell_of[key] = cell
        return self.lines[key]


def _python_view(cell: Cell, placeholders: _Placeholders) -> str | None:
    """The cell as Python with IPython lines replaced, or None when the cell is not Python."""
    magic = _cell_magic(cell.source)
    if magic is not None and magic not in PYTHON_CELL_MAGICS:
        return None
    view: list[str] = []
    state = _ScanState()
    in_magic, magic_indent = False, ""
    for index, line in enumerate(split_lines(cell.source)):
        body = line.rstrip("\r\n")
        brk = line[len(body) :]
        if in_magic or (state.at_statement_start and (_is_ipython_line(line) or (index == 0 and magic is not None))):
            if not in_magic:
                magic_indent = body[: len(body) - len(body.lstrip(" \t"))]
            view.append(placeholders.make(cell.number, body, magic_indent) + brk)
            in_magic = body.endswith("\\")  # a magic continues on the next line after a backslash
            continue
        _scan(line, state)
        view.append(line)
    return "".join(view)


# -- the joined program --------------------------------------------------------------------------
@dataclass
class _CellRows:
    number: int
    marker_row: int  # the program row of the cell's marker; its line 1 is the next row
    ends_with_break: bool  # whether the cell's own text ends with a line break


@dataclass
class Program:
    """The Python cells joined into one text, and the way back to cells."""

    text: str
    rows: list[_CellRows]
    placeholders: _Placeholders

    @classmethod
    def of(cls, notebook: Notebook) -> Program:
        parts: list[str] = []
        rows: list[_CellRows] = []
        placeholders = _Placeholders()
        row = 1
        for cell in notebook.cells:
            if cell.kind != "code" or (cell.language is not None and not is_python_language(cell.language)):
                continue
            view = _python_view(cell, placeholders)
            if view is None:
                continue
            ends_with_break = view.endswith(("\n", "\r"))
            body = view if ends_with_break or not view else view + "\n"
            parts.append(_MARKER.format(cell.number) + "\n" + body)
            rows.append(_CellRows(cell.number, row, ends_with_break))
            row += 1 + len(split_lines(body))
        return cls("".join(parts), rows, placeholders)

    def locate(self, row: int) -> tuple[int, int]:
        """(cell number, 1-based row in the cell) of a program row."""
        cell = self.rows[0]
        for candidate in self.rows:
            if candidate.marker_row > row:
                break
            cell = candidate
        return cell.number, max(1, row - cell.marker_row)

    def localize(self, finding: Finding) -> Finding:
        """The finding with cell-relative positions (its fix keeps program offsets)."""
        if not self.rows:
            return finding
        cell, row = self.locate(finding.start.row)
        end_cell, end_row = self.locate(finding.end.row)
        end = Position(end_row, finding.end.column) if end_cell == cell else Position(row, finding.start.column)
        message = self._localize_message(finding.message, cell) if finding.code == SYNTAX_ERROR else finding.message
        return replace(
            finding, start=Position(row, finding.start.column), end=end, cell=cell, message=message,
            fix=self._localize_fix(finding.fix),
        )

    def _localize_message(self, message: str, cell: int) -> str:
        """Python's "... after 'with' statement on line 459" names a row of the joined program:
        the line of the cell (and the cell, when another) is what the reader can find."""

        def local(match: re.Match[str]) -> str:
            other, line = self.locate(int(match.group(1)))
            return f"on line {line}" + ("" if other == cell else f" of cell {other}")

        return _ON_LINE.sub(local, message)

    def _localize_fix(self, fix: Fix | None) -> Fix | None:
        if fix is None:
            return None
        return replace(fix, edits=tuple(self._localize_edit(e) for e in fix.edits))

    def _localize_edit(self, edit: Edit) -> Edit:
        def local(position: Position | None) -> Position | None:
            return None if position is None else Position(self.locate(position.row)[1], position.column)

        return replace(edit, location=local(edit.location), end_location=local(edit.end_location))

    def split(self, text: str) -> dict[int, str] | None:
        """Each cell's new source (by cell number) from a fixed program text, or None when the
        fixes moved a marker or an IPython placeholder, so the cells cannot be told apart."""
        pieces = _MARKER_LINE.split(text)
        numbers = [int(n) for n in pieces[1::2]]
        if pieces[0] or numbers != [r.number for r in self.rows]:
            return None
        sources: dict[int, str] = {}
        seen: set[int] = set()
        for cell, view in zip(self.rows, pieces[2::2]):
            if not cell.ends_with_break and view.endswith("\n"):
                view = view[:-1]
            source = self._restore(cell.number, view, seen)
            if source is None:
                return None
            sources[cell.number] = source
        return sources if seen == set(self.placeholders.originals) else None

    def _restore(self, cell: int, view: str, seen: set[int]) -> str | None:
        broken = False

        def original(match: re.Match[str]) -> str:
            nonlocal broken
            key = int(match.group(1))
            if key in seen or self.placeholders.cell_of.get(key) != cell or self.placeholders.lines[key] != match.group(0):
                broken = True
                return match.group(0)
            seen.add(key)
            return self.placeholders.originals[key]

        restored = _PLACEHOLDER_LINE.sub(original, view)
        return None if broken else restored


# -- linting and fixing ----------------------------------------------------------------------------
class NotebookLinter:
    """Lints and fixes a notebook's JSON text with a Linter, as one program of its Python cells.
    Same interface as ``Linter.lint``/``Linter.fix``; findings carry their cell number."""

    def __init__(self, linter: Linter) -> None:
        self.linter = linter

    def lint(self, text: str, display: str, real_path: Path | None = None) -> list[Finding]:
        from trainlint.engine import meta_finding

        try:
            notebook = Notebook.parse(text)
        except NotebookError as exc:
            return [meta_finding(SYNTAX_ERROR, exc.message, display, exc.row, exc.column)]
        if not notebook.is_python:
            return []
        program = Program.of(notebook)
        return _sorted(program.localize(f) for f in self.linter.lint(program.text, display, real_path))

    def fix(self, text: str, display: str, real_path: Path | None, unsafe_fixes: bool) -> FixOutcome:
        from trainlint.engine import FixOutcome

        try:
            notebook = Notebook.parse(text)
        except NotebookError:
            return FixOutcome(text, remaining=self.lint(text, display, real_path))
        if not notebook.is_python:
            return FixOutcome(text)
        program = Program.of(notebook)
        outcome = self.linter.fix(program.text, display, real_path, unsafe_fixes)
        if outcome.text == program.text:
            return FixOutcome(text, remaining=_sorted(program.localize(f) for f in outcome.remaining))
        new_text = self._rewrite(notebook, program, outcome.text)
        if new_text is None:  # fixes that crossed cells or moved IPython lines: leave the file alone
            return FixOutcome(text, remaining=self.lint(text, display, real_path))
        fixed = _sorted(program.localize(f) for f in outcome.fixed)
        found = _sorted(program.localize(f) for f in outcome.found or ())
        new_program = Program.of(Notebook.parse(new_text))
        if new_program.text != outcome.text:  # cannot happen by construction; lint again to be sure
            return FixOutcome(new_text, fixed=fixed, remaining=self.lint(new_text, display, real_path), found=found)
        remaining = _sorted(new_program.localize(f) for f in outcome.remaining)
        return FixOutcome(new_text, fixed=fixed, remaining=remaining, found=found)

    @staticmethod
    def _rewrite(notebook: Notebook, program: Program, fixed_program: str) -> str | None:
        """The notebook's text with the fixed program's cells written back, or None."""
        sources = program.split(fixed_program)
        if sources is None:
            return None
        changed = {n: s for n, s in sources.items() if s != notebook.cells[n - 1].source}
        try:
            new_text = notebook.with_sources(changed)
            return new_text if _only_sources_changed(notebook.text, new_text, changed) else None
        except (NotebookError, ValueError, IndexError, KeyError, TypeError):
            return None


def _sorted(findings: Iterator[Finding] | Sequence[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: f.sort_key)


def _only_sources_changed(old: str, new: str, sources: dict[int, str]) -> bool:
    """The safety net of a rewrite: the new JSON is the old one with exactly these sources (same
    values and key order; compared as dumped text, so a NaN in the metadata equals itself)."""
    before, after = json.loads(old), json.loads(new)
    for number, source in sources.items():
        cell = after["cells"][number - 1]
        written = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if written != source:
            return False
        cell["source"] = before["cells"][number - 1]["source"]
    return json.dumps(before) == json.dumps(after)


def linter_for(path: str | Path, linter: Linter) -> Linter | NotebookLinter:
    """The linter for a path: notebooks are read through their cells, anything else as Python."""
    return NotebookLinter(linter) if str(path).endswith(NOTEBOOK_SUFFIX) else linter


@lru_cache(maxsize=32)
def _cell_sources(text: str) -> tuple[str, ...]:
    try:
        return tuple(cell.source for cell in Notebook.parse(text).cells)
    except NotebookError:
        return ()


def cell_source(notebook: SourceText, cell: int) -> SourceText | None:
    """One cell's text, for printing a finding's line (``cell`` is 1-based)."""
    sources = _cell_sources(notebook.text)
    return SourceText(sources[cell - 1]) if 0 < cell <= len(sources) else None
