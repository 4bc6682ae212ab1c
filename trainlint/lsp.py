"""``trainlint server``: the Language Server Protocol over stdio, for editors.

Diagnostics are published when a Python document is opened, changed and saved; code actions offer
each finding's fix (safe fixes are preferred; unsafe ones are titled as such and never preferred)
and a ``source.fixAll.trainlint`` action that applies every safe fix. Each document is linted with
the configuration of the nearest ``pyproject.toml`` with a ``[tool.trainlint]`` table, as the
command line does. Needs the ``lsp`` extra (``pip install 'trainlint[lsp]'``, which brings pygls).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainlint import __version__
from trainlint.config import ConfigError, Settings, find_config, load_settings
from trainlint.engine import Linter
from trainlint.findings import Edit, Finding, Position
from trainlint.project import ProjectIndex
from trainlint.source import SourceText

try:
    from lsprotocol import types as lsp
    from pygls.server import LanguageServer
    from pygls.workspace import TextDocument
except ImportError as exc:  # the optional extra is not installed; main() says so
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

FIX_ALL_KIND = "source.fixAll.trainlint"
PYTHON_SUFFIXES = (".py", ".pyi")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlint server", description="The Language Server Protocol over stdio, for editors."
    )
    parser.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default and only transport)")
    parser.parse_args(list(argv))
    if _MISSING is not None:
        print(
            f"trainlint: error: `trainlint server` needs the lsp extra: pip install 'trainlint[lsp]' ({_MISSING})",
            file=sys.stderr,
        )
        return 2
    create_server().start_io()
    return 0


# -- positions: trainlint counts characters, LSP counts code units of the negotiated encoding ------
def _units(text: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    if encoding == "utf-32":
        return len(text)
    return len(text.encode("utf-16-le")) // 2


@dataclass
class _Document:
    """A document's text with conversions between character offsets and LSP positions."""

    source: SourceText
    encoding: str

    def position(self, offset: int) -> lsp.Position:
        offset = min(max(offset, 0), len(self.source.text))
        row, column = self.source.line_column(offset)
        start = self.source.line_starts[row - 1]
        return lsp.Position(line=row - 1, character=_units(self.source.text[start : start + column - 1], self.encoding))

    def offset_of(self, position: Position) -> int:
        """The character offset of a finding's 1-based line and column, clamped to its line."""
        starts = self.source.line_starts
        if position.row > len(starts):
            return len(self.source.text)
        line_end = starts[position.row - 1] + len(self.source.line_text(position.row))
        return min(starts[position.row - 1] + position.column - 1, line_end)

    def range_of(self, finding: Finding) -> lsp.Range:
        start = self.offset_of(finding.start)
        end = max(start, self.offset_of(finding.end))
        return lsp.Range(start=self.position(start), end=self.position(end))

    def text_edit(self, edit: Edit) -> lsp.TextEdit:
        return lsp.TextEdit(range=lsp.Range(start=self.position(edit.start), end=self.position(edit.end)), new_text=edit.content)

    def replacement(self, new_text: str) -> lsp.TextEdit:
        """One edit that turns the text into ``new_text``, spanning only what differs."""
        old = self.source.text
        prefix = 0
        limit = min(len(old), len(new_text))
        while prefix < limit and old[prefix] == new_text[prefix]:
            prefix += 1
        suffix = 0
        while suffix < limit - prefix and old[len(old) - 1 - suffix] == new_text[len(new_text) - 1 - suffix]:
            suffix += 1
        return self.text_edit(Edit(prefix, len(old) - suffix, new_text[prefix : len(new_text) - suffix]))


# -- linting documents ------------------------------------------------------------------------------
class Linters:
    """One Linter per configuration file, rebuilt when the file changes."""

    def __init__(self) -> None:
        self._by_config: dict[Path | None, tuple[float, Linter]] = {}

    def for_directory(self, directory: Path) -> Linter:
        config = find_config(directory)
        stamp = config.stat().st_mtime if config is not None else 0.0
        cached = self._by_config.get(config)
        if cached is None or cached[0] != stamp:
            settings = load_settings(config, directory) if config is not None else Settings(root=directory)
            cached = (stamp, Linter(settings, ProjectIndex([settings.root])))
            self._by_config[config] = cached
        return cached[1]

    def forget_project_files(self) -> None:
        """After a save, other modules may have changed: re-read them on the next lint."""
        for _, linter in self._by_config.values():
            linter.project = ProjectIndex(linter.project.roots)


def _real_path(document: TextDocument) -> Path | None:
    return Path(document.path) if document.uri.startswith("file:") else None


def _display(path: Path | None, linter: Linter, uri: str) -> str:
    if path is None:
        return uri
    try:
        return path.resolve().relative_to(linter.settings.root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def is_python(document: TextDocument) -> bool:
    return document.language_id == "python" or document.uri.endswith(PYTHON_SUFFIXES)


def _wanted(kind: str, only: Sequence[str] | None) -> bool:
    """Whether a code action kind was asked for (kinds are hierarchical: ``source`` covers
    ``source.fixAll.trainlint``)."""
    return not only or any(kind == k or kind.startswith(f"{k}.") for k in only)


def _touches(a: lsp.Range, b: lsp.Range) -> bool:
    def key(p: lsp.Position) -> tuple[int, int]:
        return (p.line, p.character)

    return key(a.start) <= key(b.end) and key(b.start) <= key(a.end)


class TrainlintServer:
    """The server's state and handlers, kept apart from pygls' wiring for clarity."""

    def __init__(self, server: LanguageServer) -> None:
        self.server = server
        self.linters = Linters()
        self.results: dict[str, tuple[int | None, Linter, list[Finding]]] = {}

    @property
    def encoding(self) -> str:
        return str(self.server.workspace.position_encoding or "utf-16")

    def _lint(self, uri: str) -> tuple[Linter, list[Finding]] | None:
        document = self.server.workspace.get_text_document(uri)
        if not is_python(document):
            return None
        cached = self.results.get(uri)
        if cached is not None and cached[0] == document.version and document.version is not None:
            return cached[1], cached[2]
        path = _real_path(document)
        try:
            linter = self.linters.for_directory(path.parent if path else Path.cwd())
        except ConfigError as exc:
            self.server.show_message(f"trainlint: {exc}", lsp.MessageType.Error)
            return None
        findings = linter.lint(document.source, _display(path, linter, uri), path)
        self.results[uri] = (document.version, linter, findings)
        return linter, findings

    def publish(self, uri: str) -> None:
        linted = self._lint(uri)
        if linted is None:
            return
        document = self.server.workspace.get_text_document(uri)
        view = _Document(SourceText(document.source), self.encoding)
        diagnostics = [self._diagnostic(view, f) for f in linted[1]]
        self.server.publish_diagnostics(uri, diagnostics, version=document.version)

    def _diagnostic(self, view: _Document, finding: Finding) -> lsp.Diagnostic:
        severities = {"error": lsp.DiagnosticSeverity.Error, "info": lsp.DiagnosticSeverity.Information}
        severity = severities.get(finding.level, lsp.DiagnosticSeverity.Warning)
        return lsp.Diagnostic(
            range=view.range_of(finding),
            message=finding.message,
            severity=severity,
            code=finding.code,
            source="trainlint",
            data={"fix": finding.fix.applicability if finding.fix else None},
        )

    def close(self, uri: str) -> None:
        self.results.pop(uri, None)
        self.server.publish_diagnostics(uri, [])

    def saved(self, uri: str) -> None:
        self.linters.forget_project_files()
        self.results.pop(uri, None)
        self.publish(uri)

    def code_actions(self, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        uri = params.text_document.uri
        linted = self._lint(uri)
        if linted is None:
            return []
        linter, findings = linted
        document = self.server.workspace.get_text_document(uri)
        view = _Document(SourceText(document.source), self.encoding)
        only = params.context.only
        actions: list[lsp.CodeAction] = []
        if _wanted(lsp.CodeActionKind.QuickFix, only):
            for finding in findings:
                if finding.fix is not None and _touches(view.range_of(finding), params.range):
                    actions.append(self._quick_fix(uri, view, finding))
        if _wanted(FIX_ALL_KIND, only) and any(f.fix and f.fix.applicability == "safe" for f in findings):
            action = self._fix_all(uri, view, linter, document)
            if action is not None:
                actions.append(action)
        return actions

    def _quick_fix(self, uri: str, view: _Document, finding: Finding) -> lsp.CodeAction:
        fix = finding.fix
        assert fix is not None
        unsafe = fix.applicability == "unsafe"
        title = f"trainlint {finding.code}: {fix.message}" + (" (unsafe fix: review it)" if unsafe else "")
        return lsp.CodeAction(
            title=title,
            kind=lsp.CodeActionKind.QuickFix,
            diagnostics=[self._diagnostic(view, finding)],
            is_preferred=not unsafe,
            edit=lsp.WorkspaceEdit(changes={uri: [view.text_edit(e) for e in sorted(fix.edits)]}),
        )

    def _fix_all(self, uri: str, view: _Document, linter: Linter, document: TextDocument) -> lsp.CodeAction | None:
        path = _real_path(document)
        outcome = linter.fix(view.source.text, _display(path, linter, uri), path, unsafe_fixes=False)
        if outcome.text == view.source.text:
            return None
        return lsp.CodeAction(
            title="trainlint: fix all safe problems",
            kind=FIX_ALL_KIND,
            edit=lsp.WorkspaceEdit(changes={uri: [view.replacement(outcome.text)]}),
        )


def create_server() -> LanguageServer:
    server = LanguageServer("trainlint", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
    state = TrainlintServer(server)

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
        state.publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
        state.publish(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
        state.saved(params.text_document.uri)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
        state.close(params.text_document.uri)

    @server.feature(
        lsp.TEXT_DOCUMENT_CODE_ACTION,
        lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix, FIX_ALL_KIND]),
    )
    def code_action(ls: LanguageServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        return state.code_actions(params)

    return server


__all__ = ["FIX_ALL_KIND", "TrainlintServer", "create_server", "main"]
