"""``# noqa`` comments: which findings they suppress, and which of their codes suppress nothing.

A bare ``# noqa`` suppresses every finding on its line; ``# noqa: TL101, TL103`` only those codes."""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field

_NOQA = re.compile(
    r"#\s*noqa(?::[\s]*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?",
    re.IGNORECASE,
)
_CODE = re.compile(r"[A-Z]+[0-9]+", re.IGNORECASE)
_SKIP_FILE = re.compile(r"#\s*trainlint:\s*skip-file\b")


@dataclass
class NoqaComment:
    line: int
    column: int  # 1-based column of the '#'
    codes: tuple[str, ...]  # empty when the comment names no code
    used: set[str] = field(default_factory=set)


def has_skip_file(text: str) -> bool:
    return "skip-file" in text and any(_SKIP_FILE.match(comment) for _, _, comment in _comments(text))


def _comments(text: str) -> list[tuple[int, int, str]]:
    """(line, 0-based column, text) of each comment. Callers check for their word first, so only
    files that mention it are tokenized."""
    comments = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                comments.append((token.start[0], token.start[1], token.string))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return comments


def parse_noqa(text: str) -> dict[int, NoqaComment]:
    by_line: dict[int, NoqaComment] = {}
    if "noqa" not in text and "noqa" not in text.lower():
        return by_line
    for line, column, comment in _comments(text):
        match = _NOQA.search(comment)
        if match is None:
            continue
        codes = tuple(c.upper() for c in _CODE.findall(match.group("codes") or ""))
        by_line[line] = NoqaComment(line, column + 1 + match.start(), codes)
    return by_line


def suppresses(comment: NoqaComment, code: str) -> bool:
    """Whether the comment suppresses ``code``: a bare ``# noqa`` suppresses every code on its
    line (as in ruff and flake8); records the code as used when it is named."""
    if not comment.codes:
        return True
    if code in comment.codes:
        comment.used.add(code)
        return True
    return False


def with_codes(line: str, comment: NoqaComment, codes: Iterable[str]) -> str:
    """``line`` with ``codes`` merged into its ``# noqa: ...`` directive (codes already there keep
    their order, new ones follow sorted); the rest of the comment is kept."""
    match = _NOQA.match(line, comment.column - 1)
    if match is None:
        return line
    merged = list(comment.codes) + sorted(set(codes) - set(comment.codes))
    return f"{line[: match.start()]}# noqa: {', '.join(merged)}{line[match.end():]}"
