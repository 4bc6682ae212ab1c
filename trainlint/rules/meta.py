"""Findings about the input itself, made by the engine rather than by a check of the code."""

from __future__ import annotations

from collections.abc import Iterator

from trainlint.context import FileContext
from trainlint.findings import Finding
from trainlint.rule import Rule


class _EngineRule(Rule):
    triggers = ("\0never",)  # the engine reports these; the rule itself never runs

    def check(self, ctx: FileContext) -> Iterator[Finding]:
        return iter(())


class SyntaxErrorRule(_EngineRule):
    """## What it does
    Reports a file that trainlint cannot parse: a syntax error, a NUL byte, an encoding that does
    not decode. The message carries the parser's own message and position.

    ## Why is this bad?
    A file that does not parse cannot be checked, so every other rule is silent on it. It is
    reported whatever `select` says, and the other files are still linted. Files that contain none
    of the rules' trigger words (such as `torch`, `backward`, `log`) are not parsed at all, so a
    syntax error there is left to Python and to your general linter.
    """

    code = "TL001"
    name = "syntax-error"
    summary = "File cannot be parsed or decoded"


class IOErrorRule(_EngineRule):
    """## What it does
    Reports a file that cannot be read, found or written: a path named on the command line that
    does not exist, a file without read permission, a file that vanished during the run, or a
    read-only file that `--fix` would have changed (it is left untouched).

    ## Why is this bad?
    trainlint cannot check or fix what it cannot read or write; it says so and goes on with the
    other files. It is reported whatever `select` says.
    """

    code = "TL002"
    name = "io-error"
    summary = "File cannot be read or written"


class InternalErrorRule(_EngineRule):
    """## What it does
    Reports a file that trainlint could not check through no fault of the file: a rule that
    raised on it (naming the rule and the exception), an error while checking or fixing it, a
    process that crashed on it, or valid Python beyond the limits of trainlint's parser (LibCST):
    more than 3,000 string literals joined by juxtaposition, or an `and`/`or` chain nested more
    than 20,000 levels deep. Such a file is reported "not checked", never as a syntax error.

    ## Why is this bad?
    It is a bug or a limit of trainlint, not of your code: the other rules and files are still
    checked, and a file being fixed is left as it was. Please report it with the file (or a
    reduced copy) that triggers it.
    """

    code = "TL003"
    name = "internal-error"
    summary = "trainlint could not check this file (a trainlint bug or limit)"


class UnusedNoqaRule(_EngineRule):
    """## What it does
    Reports a `TL` code in a `# noqa` comment that suppresses nothing on its line, or that is not
    a trainlint code at all. Codes of other tools (`E501`, `F401`) are left alone. Off by default:
    enable it with `extend-select = ["TL004"]`.

    ## Why is this bad?
    A stale `noqa` hides the next real finding on that line, and an unknown code (a typo such as
    `TL1O1`) suppresses nothing while looking as if it did.
    """

    code = "TL004"
    name = "unused-noqa"
    summary = "Unused or unknown code in a `noqa` comment"
    level = "warning"
    default_enabled = False
