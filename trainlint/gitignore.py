"""``.gitignore`` patterns, matched in time linear in the pattern and the path.

Translating a whole pattern into one regular expression, as glob libraries do, makes a pattern such
as ``*a*a*a*a*a*a*a*a*b`` backtrack exponentially on a long file name: minutes of discovery for one
line of a checkout's ``.gitignore``. Here a pattern is matched one path segment at a time: within a
segment, ``fnmatch``'s translation commits to the first occurrence of each literal run between
stars (no backtracking into them); across segments, ``**`` is matched by the classic wildcard
algorithm, which backs up to the last ``**`` only. Both are at worst the product of the pattern's
and the path's lengths.

The semantics are git's (gitignore(5)): ``#`` comments, ``!`` negation (the last matching pattern
wins), a trailing ``/`` for directories only, a pattern with a ``/`` before its end anchored to
its ``.gitignore``'s directory and any other matched at every level, ``**`` for any number of
directories, ``\\`` escapes, and a path inside an ignored directory ignored with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import translate

_ANY_DIRECTORIES = "**"  # a whole segment: zero or more directories
_GLOB_CHARACTERS = frozenset("*?[\\")


@dataclass(frozen=True)
class _Rule:
    parts: tuple[str | re.Pattern[str], ...]  # segments and _ANY_DIRECTORIES
    negated: bool
    directory_only: bool

    def matches(self, segments: Sequence[str], is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        parts = self.parts
        if len(parts) == 2 and parts[0] == _ANY_DIRECTORIES:  # the common `*.pyc`, `build/`
            return _segment_matches(parts[1], segments[-1])
        return _match_parts(parts, segments)


class GitIgnore:
    """The patterns of one ``.gitignore`` file."""

    def __init__(self, rules: Sequence[_Rule]) -> None:
        self.rules = list(rules)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> GitIgnore:
        return cls([rule for rule in map(_parse_line, lines) if rule is not None])

    def verdict(self, relative: str, is_dir: bool) -> bool | None:
        """True when the path (relative to this file's directory, ``/``-separated) is ignored,
        False when a negated pattern re-includes it, None when no pattern speaks of it. A
        directory of the path that is ignored ignores the path (git cannot re-include a file
        inside an ignored directory)."""
        segments = relative.strip("/").split("/")
        for end in range(1, len(segments)):
            if self._last_match(segments[:end], True) is True:
                return True
        return self._last_match(segments, is_dir)

    def _last_match(self, segments: Sequence[str], is_dir: bool) -> bool | None:
        for rule in reversed(self.rules):
            if rule.matches(segments, is_dir):
                return not rule.negated
        return None


def _parse_line(line: str) -> _Rule | None:
    line = line.rstrip("\r\n")
    while line.endswith(" ") and not line.endswith("\\ "):  # trailing spaces, unless escaped
        line = line[:-1]
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    elif line.startswith(("\\#", "\\!")):
        line = line[1:]
    directory_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line  # a slash at the start or in the middle ties it to this directory
    names = [name for name in line.split("/") if name]
    if names and names[-1] == _ANY_DIRECTORIES and len(names) > 1:
        names[-1:] = ["*", _ANY_DIRECTORIES]  # `dir/**`: everything inside, not `dir` itself
    parts: list[str | re.Pattern[str]] = [] if anchored else [_ANY_DIRECTORIES]
    for name in names:
        if name == _ANY_DIRECTORIES:
            if not parts or parts[-1] != _ANY_DIRECTORIES:
                parts.append(_ANY_DIRECTORIES)
        else:
            parts.append(_compile_segment(name))
    return _Rule(tuple(parts), negated, directory_only)


def _compile_segment(name: str) -> str | re.Pattern[str]:
    """A literal name as itself; a glob as ``fnmatch``'s translation, whose stars do not
    backtrack. Git's ``\\`` escapes become one-character classes (``\\*`` -> ``[*]``), which
    ``fnmatch`` reads literally; ``[^...]`` is git's spelling of ``[!...]``."""
    if not _GLOB_CHARACTERS & set(name):
        return name
    glob = []
    index = 0
    in_class = False
    while index < len(name):
        character = name[index]
        if character == "\\" and index + 1 < len(name):
            escaped = name[index + 1]
            glob.append(escaped if in_class else f"[{escaped}]")
            index += 2
            continue
        if character == "[" and not in_class:
            in_class = True
            if name.startswith("[^", index):
                glob.append("[!")
                index += 2
                continue
        elif character == "]" and in_class and glob[-1] not in ("[", "[!"):
            in_class = False
        glob.append(character)
        index += 1
    return re.compile(translate("".join(glob)))


def _segment_matches(part: str | re.Pattern[str], name: str) -> bool:
    return part == name if isinstance(part, str) else part.match(name) is not None


def _match_parts(parts: Sequence[str | re.Pattern[str]], segments: Sequence[str]) -> bool:
    """Whether the path's segments match the pattern's parts, ``**`` standing for any number of
    segments: the wildcard algorithm that, on a mismatch, lets the last ``**`` take one more
    segment and retries from there (never an earlier one), so at worst parts x segments steps."""
    part = segment = 0
    star = -1  # index of the last ``**`` seen
    star_segment = 0  # the segment it was tried from
    while segment < len(segments):
        if part < len(parts) and parts[part] == _ANY_DIRECTORIES:
            star, star_segment = part, segment
            part += 1
        elif part < len(parts) and _segment_matches(parts[part], segments[segment]):
            part += 1
            segment += 1
        elif star >= 0:
            star_segment += 1
            part, segment = star + 1, star_segment
        else:
            return False
    while part < len(parts) and parts[part] == _ANY_DIRECTORIES:
        part += 1
    return part == len(parts)
