"""Reading a source file exactly as it is, so a fix can write back every untouched byte."""

from __future__ import annotations

import bisect
import codecs
import gc
import io
import re
import tokenize
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ast

try:  # hashlib's own blake2b, without hashlib loading OpenSSL: a tenth of a cached run's start-up
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - another Python implementation
    from hashlib import blake2b

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def content_digest(data: bytes, size: int = 16) -> str:
    """The digest of a file's bytes. The cache keys files by it and compares it with what the
    project index recorded for each dependency, so both must use this one function."""
    return blake2b(data, digest_size=size).hexdigest()


def python_ast(source: str | bytes, filename: str) -> ast.Module:
    """Python's own parse of the source (``SyntaxError`` when it fails), without the warnings its
    compiler prints about the code it reads (``invalid escape sequence '\\d'`` is a SyntaxWarning
    from Python 3.12): they are about the user's file, and a linter must not echo them to stderr."""
    import ast  # here: only files that are parsed need it

    key = source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass")
    tree = _recent_trees.get(key)
    if tree is not None:  # a linted file's depth check, then its summary (text, then bytes)
        _recent_trees.move_to_end(key)
        return tree
    with paused_garbage_collector(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(source, filename=filename)
    _recent_trees[key] = tree
    if len(_recent_trees) > RECENT_TREES:
        _recent_trees.popitem(last=False)
    return tree


# Python's trees of the sources parsed last, by content: a file linted (its depth check reads the
# text) is often summarized soon after for another file's question (from its bytes). Measured on
# pytorch-image-models: 148 of 449 parses were repeats, 71 of them within 16 parses.
RECENT_TREES = 16
_recent_trees: OrderedDict[bytes, Any] = OrderedDict()


@contextmanager
def paused_garbage_collector() -> Iterator[None]:
    """Python's cyclic garbage collector off for a block that allocates millions of small objects
    that all stay alive (a parse, a tree's positions): collections would only scan them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class SourceError(Exception):
    """A file that cannot be read or decoded; becomes a finding, never a traceback."""

    def __init__(self, code: str, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line  # 1-based, where the problem is (the first bad byte)
        self.column = column


def _position_of_byte(raw: bytes, index: int) -> tuple[int, int]:
    """1-based line and column (counted in bytes) of ``raw[index]``."""
    line_start = max(raw.rfind(b"\n", 0, index), raw.rfind(b"\r", 0, index)) + 1
    line = raw.count(b"\n", 0, index) + 1 if b"\n" in raw else raw.count(b"\r", 0, index) + 1
    return line, index - line_start + 1


@dataclass
class SourceText:
    """Decoded text plus what is needed to encode it back byte for byte."""

    text: str
    encoding: str = "utf-8"
    bom: bool = False
    _line_starts: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SourceText:
        if b"\x00" in raw:
            raise SourceError("TL001", "source contains a NUL byte", *_position_of_byte(raw, raw.index(b"\x00")))
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        except SyntaxError as exc:
            raise SourceError("TL001", f"cannot detect the encoding: {exc}") from None
        bom = raw.startswith(codecs.BOM_UTF8)
        if encoding == "utf-8-sig":
            encoding = "utf-8"
        body = raw[len(codecs.BOM_UTF8) :] if bom else raw
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError as exc:
            offset = exc.start + (len(codecs.BOM_UTF8) if bom else 0)
            line, column = _position_of_byte(raw, offset)
            message = f"cannot decode: byte 0x{raw[offset]:02x} is not valid {encoding}"
            raise SourceError("TL001", message, line, column) from None
        except LookupError:
            raise SourceError("TL001", f"cannot decode: unknown encoding {encoding!r}") from None
        return cls(text=text, encoding=encoding, bom=bom)

    def to_bytes(self, text: str | None = None) -> bytes:
        data = (self.text if text is None else text).encode(self.encoding)
        return codecs.BOM_UTF8 + data if self.bom else data

    @property
    def newline(self) -> str:
        """The file's first line ending; inserted lines use it."""
        index = self.text.find("\n")
        if index > 0 and self.text[index - 1] == "\r":
            return "\r\n"
        if index < 0 and "\r" in self.text:
            return "\r"
        return "\n"

    @property
    def line_starts(self) -> list[int]:
        if not self._line_starts:
            self._line_starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
        return self._line_starts

    def offset(self, line: int, column: int) -> int:
        """Character offset of a 1-based line and 0-based column (LibCST's convention)."""
        starts = self.line_starts
        if line - 1 >= len(starts):
            return len(self.text)
        return starts[line - 1] + column

    def line_column(self, offset: int) -> tuple[int, int]:
        """1-based line and 1-based column of a character offset (ruff's and flake8's convention)."""
        line_index = bisect.bisect_right(self.line_starts, offset) - 1
        return line_index + 1, offset - self.line_starts[line_index] + 1

    def line_text(self, line: int) -> str:
        starts = self.line_starts
        start = starts[line - 1]
        end = starts[line] if line < len(starts) else len(self.text)
        return self.text[start:end].rstrip("\r\n")

    def line_end_offset(self, line: int) -> int:
        """Offset just past the line's terminator (start of the next line)."""
        starts = self.line_starts
        return starts[line] if line < len(starts) else len(self.text)
