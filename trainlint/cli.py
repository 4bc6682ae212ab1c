"""The ``trainlint`` command line. Exit codes: 0 nothing remains, 1 findings remain, 2 usage or
configuration error (one line naming the bad option, key or code).

Start-up matters (a pre-commit hook runs this on every commit): the modules that import LibCST
(the engine and the rules) are imported only when a file has to be linted, so ``--version``,
``--list-rules``, ``--explain`` and a run whose files are all cached never load them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from trainlint import DISTRIBUTION, __version__

if TYPE_CHECKING:
    import argparse

    from trainlint.config import Settings
    from trainlint.discovery import Target
    from trainlint.runner import RunResult
    from trainlint.source import SourceText

VERSION = f"trainlint {__version__} ({DISTRIBUTION})"

SUBCOMMANDS = {"smoke", "confirm", "server"}
LINT_SUBCOMMAND = "check"  # `trainlint check PATH` is `trainlint PATH`, as in ruff
SIGPIPE_STATUS = 141  # what a shell reports for a program ended by a pipe closed early

USAGE = """trainlint [check] [options] [PATH ...]
       trainlint smoke SCRIPT [ARGS ...]
       trainlint confirm SCRIPT [ARGS ...]
       trainlint server"""

COMMANDS = """commands:
  check    lint, and with --fix fix, Python files and notebooks (the default command)
  smoke    run a training script for a few steps under the monitor and print a health report
           (needs the runtime extra; see: trainlint smoke --help)
  confirm  fix a script in memory and run the original and the fixed code side by side
           (needs the runtime extra; see: trainlint confirm --help)
  server   a language server over stdio, for editors (needs the lsp extra)

exit status: 0 nothing remains, 1 findings remain, 2 a usage or configuration error or an
internal error, 130/143 interrupted by Ctrl-C/SIGTERM, 141 output pipe closed"""


class UsageError(Exception):
    pass


def _codes(value: str) -> list[str]:
    return [code.strip() for code in value.split(",") if code.strip()]


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from trainlint import output

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    parser = _Parser(
        prog="trainlint",
        usage=USAGE,
        description="Lint and fix PyTorch training code.",
        epilog=COMMANDS,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=_help_width()),
    )
    parser.add_argument("paths", nargs="*", default=None, help="files or directories (default: .); - reads stdin")
    parser.add_argument("--fix", action="store_true", help="apply safe fixes")
    parser.add_argument("--unsafe-fixes", action="store_true", help="also apply unsafe fixes (with --fix or --diff)")
    parser.add_argument("--diff", action="store_true", help="print the fixes as a unified diff; change nothing")
    parser.add_argument("--show-fixes", action="store_true", help="list the fixes that were applied")
    parser.add_argument(
        "--add-noqa",
        action="store_true",
        help="append '# noqa: CODE' to every line with a finding, keeping existing comments",
    )
    parser.add_argument("--select", type=_codes, metavar="CODES", help="only these codes or prefixes (comma separated)")
    parser.add_argument("--ignore", type=_codes, metavar="CODES", help="skip these codes or prefixes")
    parser.add_argument("--extend-select", type=_codes, metavar="CODES", help="add these codes or prefixes")
    parser.add_argument("--output-format", choices=output.FORMATS, default="full")
    parser.add_argument("--output-file", "-o", type=Path, metavar="PATH", help="write the report to PATH")
    parser.add_argument("--statistics", action="store_true", help="count findings per rule (text or json)")
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even when findings remain")
    parser.add_argument("--exit-non-zero-on-fix", action="store_true", help="exit 1 when anything was fixed")
    parser.add_argument("--watch", "-w", action="store_true", help="lint again whenever a file changes, until Ctrl-C")
    parser.add_argument("--show-files", action="store_true", help="print the files that would be linted")
    parser.add_argument(
        "--show-settings", action="store_true", help="print the resolved settings and where each came from"
    )
    parser.add_argument("--list-rules", action="store_true", help="print the rules as a table")
    parser.add_argument("--explain", metavar="CODE", help="print a rule's documentation")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a pyproject.toml (its [tool.trainlint]) or trainlint TOML file")
    parser.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply the exclude settings also to files named on the command line (for pre-commit)",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write .trainlint_cache/")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="keep the cache there (the configuration's must be in the project)")
    parser.add_argument("--jobs", "-j", type=int, default=0, metavar="N", help="parallel processes (default: all cores)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print findings only, no summary")
    parser.add_argument("--stdin-filename", metavar="PATH", help="the path of the file read from stdin (for config and output)")
    parser.add_argument("--version", action="version", version=VERSION)
    return parser


def _help_width() -> int:
    """The width argparse would choose, without the shutil import it makes to find it (shutil
    pulls in the compression modules: a few percent of a cached run's start-up)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 80
    return max(columns - 2, 11)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        return _subcommand(arguments)
    if arguments and arguments[0] == LINT_SUBCOMMAND:
        arguments = arguments[1:]
    if "--version" in arguments:  # what argparse would print, without loading what parsing needs
        return _print_version()
    from trainlint import lifetime
    from trainlint.config import ConfigError
    from trainlint.output import tolerate_unencodable

    tolerate_unencodable(sys.stdout, sys.stderr)
    lifetime.stop_on_termination()
    try:
        try:
            return _lint(build_parser().parse_args(arguments))
        finally:
            sys.stdout.flush()  # here, so that a reader gone away is noticed inside the try
    except (UsageError, ConfigError) as exc:
        print(f"trainlint: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (lifetime.Interrupted)
        print(
            f"trainlint: interrupted by {lifetime.signal_name(exc)}: stopped before the report "
            "(a file is either fixed completely or left as it was)",
            file=sys.stderr,
        )
        if argv is None:  # the process is ours: skip interpreter shutdown, whose pool hooks may
            lifetime.leave(lifetime.exit_status(exc))  # meet pipes the stopped workers closed
        return lifetime.exit_status(exc)
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:  # a bug: exit 2 as for an error, with one line, not a traceback
        print(f"trainlint: error: {internal_error(exc)}", file=sys.stderr)
        return 2


def internal_error(exc: BaseException) -> str:
    """One line for an exception that escaped the run: what it was and where it was raised."""
    import traceback

    from trainlint.output import terminal_safe

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if f"{os.sep}trainlint{os.sep}" in frame.filename] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    detail = terminal_safe(str(exc).splitlines()[0] if str(exc) else "")
    return f"internal error (please report it): {type(exc).__name__}{': ' + detail if detail else ''}{where}"


def _print_version() -> int:
    try:
        print(VERSION, flush=True)
    except BrokenPipeError:
        return _reader_gone()
    return 0


def _reader_gone() -> int:
    """The reader of our output went away (``trainlint ... | head``): stop quietly, as tools that
    die of SIGPIPE do, and keep Python from complaining when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return SIGPIPE_STATUS


def _subcommand(arguments: list[str]) -> int:
    if arguments[0] == "server":
        from trainlint.lsp import main as serve

        return serve(arguments[1:])
    try:
        from trainlint.runtime.cli import main as runtime_main
    except ImportError as exc:
        print(f"trainlint: error: `trainlint {arguments[0]}` needs the runtime extra ({exc})", file=sys.stderr)
        return 2
    return runtime_main(arguments)


def _check_combinations(args: argparse.Namespace) -> None:
    if args.jobs < 0:
        raise UsageError("argument --jobs: must be 0 (all cores) or more")
    if args.statistics and args.output_format in ("sarif", "github"):
        raise UsageError("argument --statistics: works with --output-format full, concise or json")
    if args.add_noqa and (args.fix or args.diff):
        raise UsageError("argument --add-noqa: cannot be combined with --fix or --diff")
    if args.watch and (args.fix or args.diff or args.add_noqa):
        raise UsageError("argument --watch: lints only; it cannot be combined with --fix, --diff or --add-noqa")
    if (args.watch or args.add_noqa) and args.paths and "-" in args.paths:
        raise UsageError("'-' (stdin) cannot be combined with --watch or --add-noqa")


def _lint(args: argparse.Namespace) -> int:
    from trainlint.config import apply_cli_overrides, load_settings

    _check_combinations(args)
    if args.explain:
        return _explain(args.explain)
    paths = args.paths or ["."]
    start = Path(args.stdin_filename or (paths[0] if paths[0] != "-" else "."))
    settings = load_settings(args.config, _existing_ancestor(start))
    apply_cli_overrides(settings, args.select, args.extend_select, args.ignore)
    for warning in settings.warnings:
        print(f"trainlint: warning: {warning}", file=sys.stderr)
    if args.list_rules:
        return _list_rules(settings)
    unsafe = args.unsafe_fixes or settings.unsafe_fixes
    # unsafe fixes turned on by this command only: the hint must repeat the flag
    args.fix_command = "trainlint --fix --unsafe-fixes" if args.unsafe_fixes and not settings.unsafe_fixes else "trainlint --fix"
    if args.show_settings:
        from trainlint.settings_report import show_settings

        return show_settings(args, settings, paths, sys.stdout)
    if paths == ["-"]:
        return _lint_stdin(args, settings, unsafe)
    if "-" in paths:
        raise UsageError("'-' (stdin) cannot be combined with other paths")
    settings.force_exclude = settings.force_exclude or args.force_exclude
    if args.watch:
        return _watch(args, start, paths)
    return _lint_paths(args, settings, paths, unsafe)


def _watch(args: argparse.Namespace, start: Path, paths: Sequence[str]) -> int:
    """--watch: each run reads the configuration afresh, so an edit to it applies at once."""
    from trainlint.config import apply_cli_overrides, load_settings
    from trainlint.watch import watch

    def settings_for_run() -> Settings:
        settings = load_settings(args.config, _existing_ancestor(start))
        apply_cli_overrides(settings, args.select, args.extend_select, args.ignore)
        settings.force_exclude = settings.force_exclude or args.force_exclude
        return settings

    def lint_once() -> int:
        settings = settings_for_run()
        return _lint_paths(args, settings, paths, args.unsafe_fixes or settings.unsafe_fixes)

    return watch(lint_once, settings_for_run, paths)


def _lint_paths(args: argparse.Namespace, settings: Settings, paths: Sequence[str], unsafe: bool) -> int:
    from trainlint.discovery import discover
    from trainlint.runner import RunOptions, run

    if args.cache_dir is not None:
        settings.cache_dir = Path(os.path.abspath(args.cache_dir))
    targets = discover(paths, settings)
    if args.show_files:
        return _show_files(targets, sys.stdout)
    if not targets and not args.quiet:
        # pre-commit with no Python file staged, or a directory without Python: not an error
        print("trainlint: warning: no Python files found under the given paths", file=sys.stderr)
    options = RunOptions(
        fix=args.fix or args.diff,
        unsafe_fixes=unsafe,
        write=not args.diff,
        use_cache=not args.no_cache,
        jobs=args.jobs,
    )
    progress = _progress(args, len(targets))
    result = run(targets, settings, options, _project_roots(settings, paths), progress=progress)
    if progress is not None:
        progress.finish()
    if args.add_noqa:
        from trainlint.add_noqa import add_noqa

        return add_noqa(result, {t.display: t for t in targets}, sys.stderr)
    return _report(args, result, unsafe, {t.display: t for t in targets})


def _progress(args: argparse.Namespace, total: int):
    """Files done / total on stderr for a long run on a terminal (trainlint/progress.py decides)."""
    from trainlint import output

    if args.quiet or args.output_format in output.MACHINE_FORMATS or args.watch or not sys.stderr.isatty():
        return None
    from trainlint.progress import Progress

    return Progress.on_terminal(sys.stderr, total)


def _show_files(targets: Sequence[Target], stream: TextIO) -> int:
    from trainlint.output import terminal_safe

    for target in sorted(targets, key=lambda t: t.display):
        stream.write(f"{terminal_safe(target.display)}\n")
    return 0


def _existing_ancestor(path: Path) -> Path:
    """Where to look for the configuration: ``--stdin-filename`` may name a file that does not
    exist (an editor's unsaved buffer), whose directory's configuration still applies."""
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _project_roots(settings: Settings, paths: Sequence[str]) -> list[Path]:
    """Where local imports are looked up: the configuration's directory and each linted
    directory (a linted file's own directory is added per file, as ``sys.path[0]``)."""
    roots = [settings.root]
    for raw in paths:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            roots.append(path)
    return roots


def _explain(code: str) -> int:
    from trainlint.catalog import rule_page

    page = rule_page(code.strip().upper())
    if page is None:
        raise UsageError(f"argument --explain: unknown rule code {code!r}")
    sys.stdout.write(page)
    return 0


def _list_rules(settings: Settings) -> int:
    from trainlint.catalog import rule_infos
    from trainlint.config import ALWAYS_ON

    enabled = settings.enabled_codes()
    rules = rule_infos()
    width = max(len(r.name) for r in rules.values())
    print(f"{'code':<6} {'name':<{width}} {'fix':<6} {'on':<3} summary")
    for code, rule in rules.items():
        state = "yes" if code in enabled or code in ALWAYS_ON else "no"
        print(f"{code:<6} {rule.name:<{width}} {rule.fix_applicability or '-':<6} {state:<3} {rule.summary}")
    return 0


def _lint_stdin(args: argparse.Namespace, settings: Settings, unsafe: bool) -> int:
    from trainlint.engine import Linter
    from trainlint.fixable import count_fixable
    from trainlint.notebook import linter_for
    from trainlint.project import ProjectIndex
    from trainlint.runner import FileResult, RunResult
    from trainlint.source import SourceError, SourceText

    display = args.stdin_filename or "-"
    real = Path(display) if args.stdin_filename and Path(display).is_file() else None
    roots = [settings.root] + ([real.parent] if real else [])
    linter = linter_for(display, Linter(settings, ProjectIndex(roots)))  # --stdin-filename nb.ipynb
    raw = sys.stdin.buffer.read()
    try:
        source = SourceText.from_bytes(raw)
    except SourceError as exc:
        from trainlint.engine import meta_finding

        finding = meta_finding(exc.code, exc.message, display, exc.line, exc.column)
        result = RunResult([FileResult(display, findings=[finding])])
        return _report(args, result, unsafe, {})
    file_result = FileResult(display)
    fixing = args.fix or args.diff
    if fixing:
        outcome = linter.fix(source.text, display, real, unsafe)
        file_result.findings, file_result.fixed, file_result.found = outcome.remaining, outcome.fixed, outcome.found
        if outcome.text != source.text:
            file_result.original_text, file_result.fixed_text = source.text, outcome.text
    else:
        file_result.findings = linter.lint(source.text, display, real)
    if not (fixing and unsafe):
        text = file_result.fixed_text or source.text
        counts = count_fixable(linter, text, display, real, file_result.findings, safe_fixes_applied=fixing)
        file_result.fixable, file_result.unsafe_fixable = counts.safe, counts.unsafe
    if args.fix and not args.diff:
        # As ruff does: the fixed source goes to stdout, the report to stderr.
        sys.stdout.buffer.write(source.to_bytes(file_result.fixed_text or source.text))
        sys.stdout.flush()
        return _report(args, RunResult([file_result]), unsafe, {}, stream=sys.stderr, stdin_text=source)
    return _report(args, RunResult([file_result]), unsafe, {}, stdin_text=source)


def _report(
    args: argparse.Namespace,
    result: RunResult,
    unsafe: bool,
    targets: dict[str, Target],
    stream=None,
    stdin_text: SourceText | None = None,
) -> int:
    if args.diff:
        return _print_diff(result, stream or sys.stdout)
    if args.output_file is not None and stream is None:
        with _open_output_file(args.output_file) as file:
            return _write_report(args, result, unsafe, targets, file, stdin_text)
    return _write_report(args, result, unsafe, targets, stream or sys.stdout, stdin_text)


def _open_output_file(path: Path) -> TextIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise UsageError(f"argument --output-file: cannot write {path}: {exc.strerror or exc}") from None


def _write_report(
    args: argparse.Namespace,
    result: RunResult,
    unsafe: bool,
    targets: dict[str, Target],
    stream: TextIO,
    stdin_text: SourceText | None,
) -> int:
    from trainlint import output
    from trainlint.source import SourceError, SourceText

    findings = result.findings
    fixed = result.fixed

    read: dict[str, SourceText | None] = {
        file.display: SourceText(file.fixed_text) for file in result.files if file.fixed_text is not None
    }

    def sources(path: str) -> SourceText | None:
        """The text a finding's line is shown from: what was written by --fix, else the file."""
        if stdin_text is not None:
            return stdin_text
        if path not in read:
            target = targets.get(path)
            try:
                read[path] = SourceText.from_bytes(target.path.read_bytes()) if target else None
            except (OSError, SourceError):
                read[path] = None
        return read[path]

    machine = args.output_format in output.MACHINE_FORMATS
    if args.statistics and args.output_format == "json":
        import json

        stream.write(json.dumps(output.statistics_records(findings), indent=2) + "\n")
    elif args.statistics and not machine:
        output.statistics(findings, stream)  # instead of the findings, as ruff does
    else:
        output.write_findings(findings, args.output_format, stream, sources)
    if args.show_fixes and fixed and not machine:
        _print_fixes(fixed, stream)
    if not args.quiet and not machine:
        counts = output.SummaryCounts(
            fixed=fixed,
            found=result.found,
            fixable=result.fixable,
            unsafe_fixable=result.unsafe_fixable,
            fix_mode=args.fix,
            unsafe_fixes=unsafe,
            fix_command=getattr(args, "fix_command", "trainlint --fix"),
        )
        stream.write(output.summary(findings, counts) + "\n")
    stream.flush()
    if args.exit_non_zero_on_fix and fixed:
        return 1
    if args.exit_zero:
        return 0
    return 1 if findings else 0


def _print_fixes(fixed: Sequence, stream) -> None:
    from trainlint.output import terminal_safe

    stream.write(f"Applied {len(fixed)} fix{'es' if len(fixed) != 1 else ''}:\n")
    by_path: dict[str, list] = {}
    for finding in fixed:
        by_path.setdefault(finding.path, []).append(finding)
    for path, items in by_path.items():
        stream.write(f"- {terminal_safe(path)}:\n")
        counts: dict[tuple[str, str], int] = {}
        for f in items:
            counts[(f.code, f.name)] = counts.get((f.code, f.name), 0) + 1
        for (code, name), count in sorted(counts.items()):
            stream.write(f"    {count} × {code} ({name})\n")


def _print_diff(result: RunResult, stream) -> int:
    import difflib

    from trainlint.output import terminal_safe

    changed = 0
    for file in result.files:
        if file.fixed_text is None or file.original_text is None:
            continue
        changed += 1
        stream.writelines(
            difflib.unified_diff(
                file.original_text.splitlines(keepends=True),
                file.fixed_text.splitlines(keepends=True),
                fromfile=f"a/{terminal_safe(file.display)}",
                tofile=f"b/{terminal_safe(file.display)}",
            )
        )
    stream.flush()
    fixes = len(result.fixed)
    print(
        f"Would fix {fixes} error{'s' if fixes != 1 else ''} in {changed} file{'s' if changed != 1 else ''}."
        if changed
        else "No fixes available.",
        file=sys.stderr,
    )
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
