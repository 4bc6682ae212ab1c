"""The ``trainlint`` command line. Exit codes: 0 nothing remains, 1 findings remain, 2 usage or
configuration error (one line naming the bad option, key or code)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from trainlint import __version__, lifetime, output
from trainlint.config import ALWAYS_ON, ConfigError, Settings, apply_cli_overrides, load_settings
from trainlint.discovery import Target, discover
from trainlint.engine import Linter
from trainlint.notebook import linter_for
from trainlint.project import ProjectIndex
from trainlint.rule import all_rules
from trainlint.runner import FileResult, RunOptions, RunResult, run
from trainlint.source import SourceError, SourceText

SUBCOMMANDS = {"smoke", "confirm", "server"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _codes(value: str) -> list[str]:
    return [code.strip() for code in value.split(",") if code.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trainlint",
        description="Lint and fix PyTorch training code. `trainlint smoke|confirm SCRIPT` run it.",
    )
    parser.add_argument("paths", nargs="*", default=None, help="files or directories (default: .); - reads stdin")
    parser.add_argument("--fix", action="store_true", help="apply safe fixes")
    parser.add_argument("--unsafe-fixes", action="store_true", help="also apply unsafe fixes (with --fix or --diff)")
    parser.add_argument("--diff", action="store_true", help="print the fixes as a unified diff; change nothing")
    parser.add_argument("--show-fixes", action="store_true", help="list the fixes that were applied")
    parser.add_argument("--select", type=_codes, help="only these codes or prefixes (comma separated)")
    parser.add_argument("--ignore", type=_codes, help="skip these codes or prefixes")
    parser.add_argument("--extend-select", type=_codes, help="add these codes or prefixes")
    parser.add_argument("--output-format", choices=output.FORMATS, default="full")
    parser.add_argument("--statistics", action="store_true", help="count findings per rule")
    parser.add_argument("--exit-zero", action="store_true", help="exit 0 even when findings remain")
    parser.add_argument("--exit-non-zero-on-fix", action="store_true", help="exit 1 when anything was fixed")
    parser.add_argument("--list-rules", action="store_true", help="print the rules as a table")
    parser.add_argument("--explain", metavar="CODE", help="print a rule's documentation")
    parser.add_argument("--config", type=Path, help="a pyproject.toml (its [tool.trainlint]) or trainlint TOML file")
    parser.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply the exclude settings also to files named on the command line (for pre-commit)",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write .trainlint_cache/")
    parser.add_argument("--cache-dir", type=Path, help="keep the cache there (the configuration's must be in the project)")
    parser.add_argument("--jobs", "-j", type=int, default=0, help="parallel processes (default: all cores)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print findings only, no summary")
    parser.add_argument("--stdin-filename", help="the path of the file read from stdin (for config and output)")
    parser.add_argument("--version", action="version", version=f"trainlint {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        return _subcommand(arguments)
    output.tolerate_unencodable(sys.stdout, sys.stderr)
    lifetime.stop_on_termination()
    try:
        return _lint(build_parser().parse_args(arguments))
    except (UsageError, ConfigError) as exc:
        print(f"trainlint: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (lifetime.Interrupted)
        print(
            f"trainlint: interrupted by {lifetime.signal_name(exc)}: stopped before the report "
            "(a file is either fixed completely or left as it was)",
            file=sys.stderr,
        )
        return lifetime.exit_status(exc)
    except BrokenPipeError:  # `trainlint . | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer stopped by a closed pipe
    except Exception as exc:  # a bug: exit 2 as for an error, with one line, not a traceback
        print(f"trainlint: error: {internal_error(exc)}", file=sys.stderr)
        return 2


def internal_error(exc: BaseException) -> str:
    """One line for an exception that escaped the run: what it was and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if f"{os.sep}trainlint{os.sep}" in frame.filename] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    detail = output.terminal_safe(str(exc).splitlines()[0] if str(exc) else "")
    return f"internal error (please report it): {type(exc).__name__}{': ' + detail if detail else ''}{where}"


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


def _lint(args: argparse.Namespace) -> int:
    if args.jobs < 0:
        raise UsageError("argument --jobs: must be 0 (all cores) or more")
    if args.explain:
        return _explain(args.explain)
    paths = args.paths or ["."]
    start = Path(args.stdin_filename or (paths[0] if paths[0] != "-" else "."))
    settings = load_settings(args.config, _existing_ancestor(start))
    apply_cli_overrides(settings, args.select, args.extend_select, args.ignore)
    if args.list_rules:
        return _list_rules(settings)
    unsafe = args.unsafe_fixes or settings.unsafe_fixes
    if paths == ["-"]:
        return _lint_stdin(args, settings, unsafe)
    if "-" in paths:
        raise UsageError("'-' (stdin) cannot be combined with other paths")
    settings.force_exclude = settings.force_exclude or args.force_exclude
    if args.cache_dir is not None:
        settings.cache_dir = Path(os.path.abspath(args.cache_dir))
    targets = discover(paths, settings)
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
    result = run(targets, settings, options, _project_roots(settings, paths))
    return _report(args, result, unsafe, {t.display: t for t in targets})


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
    from trainlint.docs import render_page

    rule = all_rules().get(code.strip().upper())
    if rule is None:
        raise UsageError(f"argument --explain: unknown rule code {code!r}")
    sys.stdout.write(render_page(rule))
    return 0


def _list_rules(settings: Settings) -> int:
    enabled = settings.enabled_codes()
    rules = all_rules()
    width = max(len(r.name) for r in rules.values())
    print(f"{'code':<6} {'name':<{width}} {'fix':<6} {'on':<3} summary")
    for code, rule in rules.items():
        state = "yes" if code in enabled or code in ALWAYS_ON else "no"
        print(f"{code:<6} {rule.name:<{width}} {rule.fix_applicability or '-':<6} {state:<3} {rule.summary}")
    return 0


def _lint_stdin(args: argparse.Namespace, settings: Settings, unsafe: bool) -> int:
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
    if args.fix or args.diff:
        outcome = linter.fix(source.text, display, real, unsafe)
        file_result.findings, file_result.fixed = outcome.remaining, outcome.fixed
        if outcome.text != source.text:
            file_result.original_text, file_result.fixed_text = source.text, outcome.text
        if args.fix and not args.diff:
            # As ruff does: the fixed source goes to stdout, the report to stderr.
            sys.stdout.buffer.write(source.to_bytes(outcome.text))
            sys.stdout.flush()
            return _report(args, RunResult([file_result]), unsafe, {}, stream=sys.stderr, stdin_text=source)
    else:
        file_result.findings = linter.lint(source.text, display, real)
    return _report(args, RunResult([file_result]), unsafe, {}, stdin_text=source)


def _report(
    args: argparse.Namespace,
    result: RunResult,
    unsafe: bool,
    targets: dict[str, Target],
    stream=None,
    stdin_text: SourceText | None = None,
) -> int:
    stream = stream or sys.stdout
    if args.diff:
        return _print_diff(result, stream)
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
    if args.statistics and not machine:
        output.statistics(findings, stream)  # instead of the findings, as ruff does
    else:
        output.write_findings(findings, args.output_format, stream, sources)
    if args.show_fixes and fixed and not machine:
        _print_fixes(fixed, stream)
    if not args.quiet and not machine:
        stream.write(output.summary(findings, len(fixed), args.fix, unsafe) + "\n")
    stream.flush()
    if args.exit_non_zero_on_fix and fixed:
        return 1
    if args.exit_zero:
        return 0
    return 1 if findings else 0


def _print_fixes(fixed: Sequence, stream) -> None:
    stream.write(f"Fixed {len(fixed)} error{'s' if len(fixed) != 1 else ''}:\n")
    by_path: dict[str, list] = {}
    for finding in fixed:
        by_path.setdefault(finding.path, []).append(finding)
    for path, items in by_path.items():
        stream.write(f"- {output.terminal_safe(path)}:\n")
        counts: dict[tuple[str, str], int] = {}
        for f in items:
            counts[(f.code, f.name)] = counts.get((f.code, f.name), 0) + 1
        for (code, name), count in sorted(counts.items()):
            stream.write(f"    {count} × {code} ({name})\n")


def _print_diff(result: RunResult, stream) -> int:
    changed = 0
    for file in result.files:
        if file.fixed_text is None or file.original_text is None:
            continue
        changed += 1
        stream.writelines(
            difflib.unified_diff(
                file.original_text.splitlines(keepends=True),
                file.fixed_text.splitlines(keepends=True),
                fromfile=f"a/{output.terminal_safe(file.display)}",
                tofile=f"b/{output.terminal_safe(file.display)}",
            )
        )
    fixes = len(result.fixed)
    print(
        f"Would fix {fixes} error{'s' if fixes != 1 else ''} in {changed} file{'s' if changed != 1 else ''}."
        if changed
        else "No fixes available.",
        file=sys.stderr,
    )
    stream.flush()
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
