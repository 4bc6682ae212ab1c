"""The linting engine: one file's text -> findings, and the fix loop on top of it.

Data flows one way: text -> parsed module -> shared analyses -> rule findings -> suppression and
selection -> fixes. Each file is parsed once per pass; rules share one walk of the tree.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import libcst as cst

from trainlint import noqa
from trainlint.config import INTERNAL_ERROR, SYNTAX_ERROR, Settings
from trainlint.context import FileContext
from trainlint.deep_stack import call_with_deep_stack, deep_recursion, nesting_limit
from trainlint.findings import Finding, Position, is_fix_allowed
from trainlint.fixes import apply_fixes, non_overlapping
from trainlint.project import ProjectIndex, module_name_for
from trainlint.rule import Rule, all_rules
from trainlint.source import SourceText, paused_garbage_collector, python_ast

MAX_FIX_PASSES = 10
UNUSED_NOQA = "TL004"


def meta_finding(code: str, message: str, path: str, row: int = 1, column: int = 1) -> Finding:
    rule = all_rules()[code]
    return Finding(
        code=code,
        name=rule.name,
        message=message,
        path=path,
        start=Position(row, column),
        end=Position(row, column),
        level=rule.level,
    )


def parse(text: str) -> cst.Module:
    """LibCST parse with the cyclic GC paused: the parser allocates millions of small objects that
    the GC would scan for nothing (measured: the parse takes 0.73x the time)."""
    with paused_garbage_collector():
        return cst.parse_module(text)


def parse_for_analysis(text: str, display: str) -> cst.Module | None:
    """Another module of the project, parsed for the value-flow engine: None when it cannot be
    parsed (its own lint run reports why)."""
    if _too_deep_for_libcst(text, display) is not None:
        return None
    try:
        return parse(text)
    except Exception:  # a syntax error, or the native parser's limits
        return None


@lru_cache(maxsize=4096)
def _module_name(path: Path) -> str:
    return module_name_for(path)[0]


@dataclass
class FixOutcome:
    text: str
    fixed: list[Finding] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)
    # The findings before any fix. One fix can remove several findings (TL101's `unscale_` also
    # answers a TL103 clip), so "N found, F fixed, R remaining" counts from these.
    found: list[Finding] | None = None


class Linter:
    """Lints text with a fixed set of rules; one per process (it holds the project index)."""

    def __init__(self, settings: Settings, project: ProjectIndex | None = None) -> None:
        self.settings = settings
        self.rules: list[Rule] = settings.make_rules()
        self.project = project or ProjectIndex([settings.root])
        # Tests are not training: their calls are no evidence of what the project's code receives.
        self.project.is_test_path = settings.is_test_path
        self.report_unused_noqa = UNUSED_NOQA in settings.enabled_codes()

    def rules_for(self, text: str) -> list[Rule]:
        """Rules that can fire on this text: those with no trigger word or one present."""
        return [r for r in self.rules if not r.triggers or any(t in text for t in r.triggers)]

    def lint(self, text: str, display: str, real_path: Path | None = None) -> list[Finding]:
        """Findings that survive per-file ignores and ``noqa``, sorted, for one file's text."""
        found = self.unsuppressed(text, display, real_path, skip=self.settings.ignored_for(display))
        return sorted(self._suppress(found, text, display), key=lambda f: f.sort_key)

    def unsuppressed(
        self, text: str, display: str, real_path: Path | None = None, skip: frozenset[str] = frozenset()
    ) -> list[Finding]:
        """Findings before ``noqa`` and per-file ignores (the flake8 plugin applies flake8's own);
        a ``# trainlint: skip-file`` file has none. Rules in ``skip`` (ignored for this file) do
        not run."""
        if noqa.has_skip_file(text):
            return []
        rules = [rule for rule in self.rules_for(text) if rule.code not in skip]
        # A file that names torch is always parsed, so its syntax errors are always reported;
        # any other file is parsed only when some rule's trigger word occurs in it.
        return self._check(text, display, real_path, rules) if rules or "torch" in text else []

    def _check(self, text: str, display: str, real_path: Path | None, rules: Sequence[Rule]) -> list[Finding]:
        # LibCST and the analyses recurse once per level of nesting: on the main thread's stack,
        # valid code such as a 10,000-operand `and` chain would crash the process (SIGSEGV).
        return call_with_deep_stack(self._check_on_deep_stack, text, display, real_path, rules)

    def _check_on_deep_stack(
        self, text: str, display: str, real_path: Path | None, rules: Sequence[Rule]
    ) -> list[Finding]:
        ctx = self.project.parsed(real_path, text) if real_path is not None else None
        if ctx is not None:
            ctx.path = display  # parsed already for another file's question: reuse it
        elif not (real_path is not None and self.project.known_to_parse(real_path, text) and not _may_chain_deeply(text)):
            too_deep = _too_deep_for_libcst(text, display)
            if too_deep is not None:
                return [too_deep]
        with deep_recursion():
            return self._parse_and_run(ctx, text, display, real_path, rules)

    def _parse_and_run(
        self, ctx: FileContext | None, text: str, display: str, real_path: Path | None, rules: Sequence[Rule]
    ) -> list[Finding]:
        if ctx is None:
            try:
                module = parse(text)
            except cst.ParserSyntaxError as exc:
                return [_syntax_error(text, display, exc)]
            except (RecursionError, MemoryError, Exception) as exc:  # the native parser's own limits
                return [meta_finding(SYNTAX_ERROR, f"cannot parse: {type(exc).__name__}: {exc}", display)]
            ctx = FileContext(
                path=display,
                source=SourceText(text),
                module=module,
                project=self.project,
                module_name=_module_name(real_path) if real_path else None,
                real_path=real_path,
            )
        self.project.register(ctx)
        found: list[Finding] = []
        for rule in rules:
            try:
                found.extend(rule.check(ctx))
            except Exception as exc:  # one broken rule must not stop the run
                found.append(
                    meta_finding(
                        INTERNAL_ERROR,
                        f"internal error in rule {rule.code} ({rule.name}) on this file: "
                        f"{type(exc).__name__}: {exc}",
                        display,
                    )
                )
        return found

    def _suppress(self, found: list[Finding], text: str, display: str) -> list[Finding]:
        ignored = self.settings.ignored_for(display)
        # Reading the comments tokenizes the file (7% of a parse): only when there is something
        # to suppress, or unused `noqa` codes to report.
        comments = noqa.parse_noqa(text) if found or self.report_unused_noqa else {}
        kept = []
        for finding in found:
            if finding.code in ignored:
                continue
            comment = comments.get(finding.start.row)
            if comment is not None and noqa.suppresses(comment, finding.code):
                continue
            kept.append(finding)
        if self.report_unused_noqa and UNUSED_NOQA not in ignored:
            kept.extend(self._unused_noqa(comments, display))
        return kept

    def _unused_noqa(self, comments: dict[int, noqa.NoqaComment], display: str) -> list[Finding]:
        known = all_rules()
        unused = []
        for comment in comments.values():
            for code in comment.codes:
                if not code.startswith("TL") or code in comment.used:
                    continue
                reason = "unused" if code in known else "unknown"
                unused.append(
                    meta_finding(
                        UNUSED_NOQA, f"{reason} code {code} in `noqa` comment", display, comment.line, comment.column
                    )
                )
        return unused

    def fix(self, text: str, display: str, real_path: Path | None, unsafe_fixes: bool) -> FixOutcome:
        """Apply fixes until none applies (at most MAX_FIX_PASSES passes). A pass whose result
        does not parse is rolled back and its fixes are tried one at a time."""
        outcome = FixOutcome(text)
        findings = self.lint(text, display, real_path)
        outcome.found = list(findings)
        for _ in range(MAX_FIX_PASSES):
            comments = noqa.parse_noqa(outcome.text)
            source = SourceText(outcome.text)
            fixable = [
                f for f in findings
                if is_fix_allowed(f.fix, unsafe_fixes) and not edits_a_suppressed_line(f, source, comments)
            ]
            if not fixable:
                break
            chosen = non_overlapping(fixable)
            new_text = self._apply_parsable(outcome.text, chosen)
            if new_text is None or new_text == outcome.text:
                break  # nothing that parses, or fixes that change nothing: counting them would lie
            outcome.text = new_text
            outcome.fixed.extend(chosen)
            findings = self.lint(new_text, display, real_path)
        outcome.remaining = findings
        return outcome

    def _apply_parsable(self, text: str, chosen: list[Finding]) -> str | None:
        candidate = apply_fixes(text, [f.fix for f in chosen])  # type: ignore[misc]
        if _parses(candidate):
            return candidate
        for finding in chosen:  # keep only the fixes that parse on their own
            single = apply_fixes(text, [finding.fix])  # type: ignore[list-item]
            if _parses(single):
                chosen[:] = [finding]
                return single
        return None


def edits_a_suppressed_line(finding: Finding, source: SourceText, comments: dict[int, noqa.NoqaComment]) -> bool:
    """True when the finding's fix would change a line whose ``# noqa`` suppresses the finding's
    code (or every code): the person who wrote the comment asked trainlint to leave that line
    alone. Inserting whole lines before a line does not change it."""
    if finding.fix is None or not comments:
        return False
    for edit in finding.fix.edits:
        first, column = source.line_column(edit.start)
        if edit.start == edit.end and column == 1:
            continue
        last = source.line_column(max(edit.start, edit.end - 1))[0]
        for line in range(first, last + 1):
            comment = comments.get(line)
            if comment is not None and (not comment.codes or finding.code in comment.codes):
                return True
    return False


_NESTING_MESSAGES = ("too many nested", "too complex", "too many statically nested")


def _too_deep_for_libcst(text: str, display: str) -> Finding | None:
    """A finding for code nested too deeply to parse, before LibCST sees it. TL001 where Python's
    own parser gives up too (200 brackets, about 3000 levels, a `+` chain of a few thousand
    terms): LibCST's native parser would overflow its stack on such input, or take minutes on a
    long operator chain. TL003 for valid Python that LibCST nests deeper than trainlint can walk:
    an `and`/`or` chain is one flat node for Python but one level per operand for LibCST. Costs
    about a tenth of the LibCST parse."""
    try:
        tree = python_ast(text, display)  # with the garbage collector paused, as for the parse
    except SyntaxError as error:
        if error.msg and error.msg.startswith(_NESTING_MESSAGES):
            return meta_finding(SYNTAX_ERROR, f"syntax error: {error.msg}", display, error.lineno or 1, max(1, error.offset or 1))
        return None
    except (RecursionError, MemoryError):
        return meta_finding(SYNTAX_ERROR, "cannot parse: the code is nested too deeply for Python's parser", display)
    except Exception:  # ValueError and the like: LibCST reports them
        return None
    deepest = _deepest_boolean_chain(tree, text, nesting_limit())
    if deepest is None:
        return None
    message = (
        f"not checked: an `and`/`or` chain of {deepest.values_count:,} operands nests deeper than trainlint's "
        f"parser can follow ({nesting_limit():,} levels); the code is valid Python"
    )
    return meta_finding(INTERNAL_ERROR, message, display, deepest.lineno, deepest.col_offset + 1)


def _may_chain_deeply(text: str) -> bool:
    """A file with fewer `and`/`or` than the nesting limit cannot hold a chain past it, which
    spares almost every file the walk."""
    return text.count("and") + text.count("or") >= nesting_limit()


def _deepest_boolean_chain(tree: ast.Module, text: str, limit: int) -> _Chain | None:
    """The boolean chain at which LibCST's tree would be deeper than ``limit``, if any. Each
    operand of a chain is one level in LibCST; other nodes nest alike in both trees."""
    if not _may_chain_deeply(text):
        return None
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.BoolOp):
            depth += len(node.values) - 1
            if depth > limit:
                return _Chain(len(node.values), node.lineno, node.col_offset)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


@dataclass(frozen=True)
class _Chain:
    values_count: int
    lineno: int
    col_offset: int


def _syntax_error(text: str, display: str, exc: cst.ParserSyntaxError) -> Finding:
    """TL001 with Python's own message and position ("'(' was never closed" at the bracket)
    when Python's parser also rejects the text; TL003 "not checked" when Python accepts it."""
    try:
        python_ast(text, display)
    except SyntaxError as error:
        if error.lineno:
            column = max(1, error.offset or 1)
            return meta_finding(SYNTAX_ERROR, f"syntax error: {error.msg}", display, error.lineno, column)
    except Exception:  # RecursionError, MemoryError, ValueError: fall back to LibCST's report
        pass
    else:
        # Python accepts the code: a limit of LibCST's grammar (such as more than 3,000 string
        # literals joined by juxtaposition), not an error in the file.
        reason = str(exc.message).splitlines()[0] if exc.message else "invalid syntax"
        message = f"not checked: trainlint's parser cannot read this valid Python ({reason})"
        return meta_finding(INTERNAL_ERROR, message, display, exc.editor_line, exc.editor_column)
    message = str(exc.message).splitlines()[0] if exc.message else "invalid syntax"
    return meta_finding(SYNTAX_ERROR, f"syntax error: {message}", display, exc.editor_line, exc.editor_column)


def _parses(text: str) -> bool:
    return call_with_deep_stack(_parses_on_deep_stack, text)


def _parses_on_deep_stack(text: str) -> bool:
    with deep_recursion():
        try:
            parse(text)
        except Exception:
            return False
    return True
