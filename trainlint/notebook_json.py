"""A notebook's raw JSON text: where each cell's ``source`` value sits in the file, how a new
source is written back in the file's own style (one string or a list of lines, laid out as
before, ASCII-escaped or not), and where a cell's line and column are in the file's own lines
(for SARIF viewers, which show the ``.ipynb`` as text). The text is known to be valid JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class NotebookError(Exception):
    """A file that is not a notebook trainlint can read; becomes a TL001 finding."""

    def __init__(self, message: str, row: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.column = column


def split_lines(text: str) -> list[str]:
    """Physical lines with their breaks, split as Python's tokenizer does (not on \\f or \\x1c)."""
    lines, start = [], 0
    for match in _LINE_BREAK.finditer(text):
        lines.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN|-?Infinity")
_Span = tuple[int, int]


def _skip_space(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]


def members(text: str, index: int) -> Iterator[tuple[str | int, int, int]]:
    """(key or position, value start, value end) of the object or array starting at ``index``;
    the text is known to be valid JSON."""
    closing = "}" if text[index] == "{" else "]"
    index = _skip_space(text, index + 1)
    position = 0
    while text[index] != closing:
        key: str | int = position
        if closing == "}":
            key, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
            index = _skip_space(text, _skip_space(text, index) + 1)  # past the colon
        end = _value_end(text, index)
        yield key, index, end
        position += 1
        index = _skip_space(text, end)
        if text[index] == ",":
            index = _skip_space(text, index + 1)


def _value_end(text: str, index: int) -> int:
    char = text[index]
    if char == '"':
        return json.decoder.scanstring(text, index + 1)[1]  # type: ignore[attr-defined]
    if char in "{[":
        end = index + 1
        for _, _, end in members(text, index):
            pass
        return _skip_space(text, end) + 1  # past the closing bracket (JSON has no trailing comma)
    match = _SCALAR.match(text, index)
    if match is None:
        raise NotebookError("invalid notebook: unexpected JSON")
    return match.end()


def source_spans(text: str) -> list[_Span | None]:
    """The span of each cell's ``source`` value in the file's text (the last one when a key is
    repeated, as ``json.loads`` reads it); None for a cell without one."""
    start = _skip_space(text, 0)
    cells_start = [s for key, s, _ in members(text, start) if key == "cells"][-1]
    spans: list[_Span | None] = []
    for _, cell_start, _ in members(text, cells_start):
        found = [(s, e) for key, s, e in members(text, cell_start) if key == "source"]
        spans.append(found[-1] if found else None)
    return spans


@dataclass(frozen=True)
class JsonStyle:
    ensure_ascii: bool

    @classmethod
    def of(cls, text: str) -> JsonStyle:
        # Jupyter writes non-ASCII text as is; a file that escapes it was written with ensure_ascii.
        escaped = re.search(r"\\u(?!00[0-7])[0-9a-fA-F]{4}", text) is not None
        return cls(ensure_ascii=escaped and text.isascii())

    def string(self, value: str) -> str:
        return json.dumps(value, ensure_ascii=self.ensure_ascii)

    def source_value(self, source: str, old: str) -> str:
        """``source`` as a JSON value shaped like the value it replaces: one string, or a list of
        lines (nbformat's ``splitlines(keepends=True)``) laid out as the old list was: the same
        breaks and indentation before the first line, between lines and before the ``]``."""
        if old.startswith('"'):
            return self.string(source)
        lines = source.splitlines(keepends=True)
        if not lines:
            return "[]"
        items = list(members(old, 0))
        if not items:  # an empty cell: fixes never add code to one, but stay valid if they did
            return "[" + ", ".join(self.string(line) for line in lines) + "]"
        opener = old[1 : items[0][1]]
        closer = old[items[-1][2] : len(old) - 1]
        separator = old[items[0][2] : items[1][1]] if len(items) > 1 else "," + opener
        return "[" + opener + separator.join(self.string(line) for line in lines) + closer + "]"


def file_position(text: str, cell: int, row: int, column: int) -> tuple[int, int] | None:
    """Where a cell's (row, column) sits in the notebook file's own text, as 1-based line and
    column: inside the JSON string that holds that line of the cell's source. SARIF viewers show
    the ``.ipynb`` file as text, so this is the region they can highlight. None when the file is
    not a notebook this can read or the position is past the cell's source."""
    try:
        span = source_spans(text)[cell - 1]
        if span is None:
            return None
        start, end = span
        pieces = [(s, e) for _, s, e in members(text, start)] if text[start] == "[" else [(start, end)]
    except (NotebookError, IndexError, ValueError, KeyError):
        return None
    lines_before = 0  # lines of the cell's source that end before the current piece
    for piece_start, piece_end in pieces:
        raw = text[piece_start:piece_end]
        decoded = json.loads(raw)
        lines = split_lines(decoded) or [""]
        if row <= lines_before + len(lines):
            within = sum(len(line) for line in lines[: row - lines_before - 1]) + column - 1
            offset = piece_start + _raw_index(raw, min(within, len(decoded)))
            line = text.count("\n", 0, offset) + 1
            return line, offset - (text.rfind("\n", 0, offset) + 1) + 1
        lines_before += sum(1 for line in lines if line.endswith(("\n", "\r")))
    return None


def _raw_index(raw: str, characters: int) -> int:
    """The index in a JSON string literal (quotes included) of its ``characters``-th decoded
    character: escapes (``\\n``, ``\\u00e9``, a surrogate pair) are one character each."""
    index, count = 1, 0
    while count < characters and index < len(raw) - 1:
        if raw[index] == "\\":
            pair = raw[index + 1] == "u" and raw[index + 6 : index + 8] == "\\u" and 0xD800 <= int(raw[index + 2 : index + 6], 16) < 0xDC00
            index += 12 if pair else 6 if raw[index + 1] == "u" else 2
        else:
            index += 1
        count += 1
    return index
