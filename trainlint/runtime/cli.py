"""``trainlint smoke`` and ``trainlint confirm``: argv in, report out, exit code 0 when healthy.

Options may come before or after the script; everything after a literal ``--`` goes to the
script untouched (use it when the script takes an option with one of these names).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USAGE = """\
usage: trainlint smoke SCRIPT [ARGS...] [--steps N] [--device auto|cpu|cuda] [--seed S]
                       [--threads T] [--json PATH] [--png PATH] [-- SCRIPT_ARGS...]
       trainlint confirm SCRIPT [ARGS...] [--steps N] [--device ...] [--seed S] [--threads T]
                       [--unsafe-fixes] [--select CODES] [--json PATH] [--png PATH]
       trainlint confirm --examples [CODES...] [--device ...] [--markdown PATH] [--json PATH]
                       [--evidence PATH]

smoke    run SCRIPT in this process under the monitor, stop after N optimizer steps (default 10)
         or when it ends, print its health report; exit 0 when healthy, 1 when not.
confirm  fix SCRIPT and the local modules it imports in memory (files on disk are not touched),
         smoke-run the original and the fixed code with the same seed, print both reports.
         With --examples: confirm each rule's example; exit 0 when every one is confirmed or
         not reproducible on this device. --evidence records each rule's row (device, torch,
         date) in a JSON file such as trainlint/rules/evidence.json, which the rule pages show.
--threads defaults to 1 (more threads on a busy machine made short runs 10-100x slower).
"""

_VALUE_OPTIONS = {
    "--steps", "--device", "--seed", "--threads", "--json", "--png", "--select", "--markdown", "--evidence",
}
_FLAG_OPTIONS = {"--unsafe-fixes", "--examples", "--help", "-h"}


@dataclass
class Options:
    command: str
    script: Path | None = None
    script_args: list[str] = field(default_factory=list)
    steps: int | None = None
    device: str = "auto"
    seed: int = 0
    threads: int = 1
    json_path: Path | None = None
    png_path: Path | None = None
    markdown_path: Path | None = None
    evidence_path: Path | None = None
    unsafe_fixes: bool = False
    select: list[str] | None = None
    examples: bool = False
    codes: list[str] = field(default_factory=list)
    help: bool = False


class _ArgError(Exception):
    pass


def parse(argv: Sequence[str]) -> Options:
    if not argv or argv[0] not in ("smoke", "confirm"):
        raise _ArgError("expected 'smoke' or 'confirm'")
    options = Options(command=argv[0])
    tokens = list(argv[1:])
    words: list[str] = []  # the script and its arguments, or rule codes with --examples
    while tokens:
        token = tokens.pop(0)
        if token == "--":
            words += tokens
            break
        name, has_value, inline = token.partition("=")
        if name in _VALUE_OPTIONS:
            _set(options, name, inline if has_value else _pop_value(tokens, name))
        elif token in _FLAG_OPTIONS:
            _set(options, token, "")
        else:
            words.append(token)
    if options.examples:
        options.codes = [code for word in words for code in word.split(",") if code]
    elif words:
        options.script, options.script_args = Path(words[0]), words[1:]
    return options


def _pop_value(tokens: list[str], name: str) -> str:
    if not tokens:
        raise _ArgError(f"{name} needs a value")
    return tokens.pop(0)


def _set(options: Options, name: str, value: str) -> None:
    try:
        if name == "--steps":
            options.steps = int(value)
        elif name == "--seed":
            options.seed = int(value)
        elif name == "--threads":
            options.threads = int(value)
        elif name == "--device":
            options.device = value
        elif name == "--json":
            options.json_path = Path(value)
        elif name == "--png":
            options.png_path = Path(value)
        elif name == "--markdown":
            options.markdown_path = Path(value)
        elif name == "--evidence":
            options.evidence_path = Path(value)
        elif name == "--select":
            options.select = [c.strip().upper() for c in value.split(",") if c.strip()]
        elif name == "--unsafe-fixes":
            options.unsafe_fixes = True
        elif name == "--examples":
            options.examples = True
        elif name in ("--help", "-h"):
            options.help = True
    except ValueError:
        raise _ArgError(f"{name}: not a number: {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``argv`` starts with the subcommand, e.g. ``["smoke", "train.py", "--steps", "5"]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse(argv)
    except _ArgError as exc:
        print(f"trainlint: {exc}\n\n{USAGE}", file=sys.stderr)
        return 2
    if options.help:
        print(USAGE)
        return 0
    problem = _usage_problem(options)
    if problem:  # before importing torch, which takes seconds
        print(f"trainlint: {problem}", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("trainlint: the runtime companion needs torch: pip install 'trainlint[runtime]'", file=sys.stderr)
        return 2
    from trainlint.runtime.smoke import UsageError

    try:
        if options.command == "smoke":
            return _smoke(options)
        if options.examples:
            return _confirm_examples(options)
        return _confirm(options)
    except UsageError as exc:
        print(f"trainlint: {exc}", file=sys.stderr)
        return 2


def _usage_problem(options: Options) -> str | None:
    if options.device not in ("auto", "cpu", "cuda"):
        return f"--device must be auto, cpu or cuda, not {options.device!r}"
    if options.examples:
        return None
    if options.script is None:
        return f"{options.command}: which script? (trainlint {options.command} SCRIPT ...)"
    if not options.script.is_file():
        return f"no such script: {options.script}"
    if options.steps is not None and options.steps < 1:
        return "--steps must be at least 1"
    return None


def _require_script(options: Options) -> Path:
    from trainlint.runtime.smoke import UsageError

    if options.script is None:
        raise UsageError(f"{options.command}: which script? (trainlint {options.command} SCRIPT ...)")
    return options.script


def _smoke(options: Options) -> int:
    from trainlint.runtime.report import format_report
    from trainlint.runtime.smoke import (
        DEFAULT_STEPS,
        collect_other_ranks,
        device_description,
        launched_ranks,
        run_script,
        share_with_rank_zero,
    )

    script = _require_script(options)
    run = run_script(
        script,
        options.script_args,
        steps=options.steps or DEFAULT_STEPS,
        device=options.device,
        seed=options.seed,
        threads=options.threads,
    )
    rank, world = launched_ranks()
    if world > 1:
        if rank != 0:  # each rank records, rank 0 reports
            share_with_rank_zero(run, "smoke")
            return 0 if run.report.healthy else 1
        collect_other_ranks(run, "smoke")
    _print_exception(run)
    title = f"{script} on {device_description(run.device)}" + (f", {world} ranks" if world > 1 else "")
    print(f"trainlint smoke: {title}")
    print(format_report(run.report, "smoke run"))
    _outputs(options, {"smoke": run})
    return 0 if run.report.healthy else 1


def _confirm(options: Options) -> int:
    from trainlint.runtime.confirm import confirm_script, describe_finding
    from trainlint.runtime.report import format_side_by_side
    from trainlint.runtime.smoke import DEFAULT_STEPS, device_description

    script = _require_script(options)
    try:
        result = confirm_script(
            script,
            options.script_args,
            steps=options.steps or DEFAULT_STEPS,
            device=options.device,
            seed=options.seed,
            threads=options.threads,
            unsafe_fixes=options.unsafe_fixes,
            select=options.select,
        )
    except ImportError as exc:
        print(f"trainlint: confirm needs the linter API (trainlint.api): {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ != "ConfigError":  # the linter's: a --select naming no rule, say
            raise
        print(f"trainlint: {exc}", file=sys.stderr)
        return 2
    print(f"trainlint confirm: {script} on {device_description(result.original.device)}, seed {options.seed}")
    if not result.fixes.fixed:
        print("nothing to fix: trainlint found no fixable problem; the original run:")
    else:
        print(f"fixed in memory ({len(result.fixes.fixed)}):")
        for finding in result.fixes.fixed:
            print(f"  {describe_finding(finding)}")
    unsafe = [f for f in result.fixes.remaining if getattr(f.fix, "applicability", None) == "unsafe"]
    if unsafe and not options.unsafe_fixes:
        print(f"not applied ({len(unsafe)} unsafe fixes; add --unsafe-fixes to confirm them too):")
        for finding in unsafe:
            print(f"  {describe_finding(finding)}")
    runs = {"original": result.original}
    if result.fixed:
        runs["fixed"] = result.fixed
    for run in runs.values():
        _print_exception(run)
    print(format_side_by_side([(name, run.report) for name, run in runs.items()]))
    _outputs(options, runs, extra={"fixed": [f.to_json() for f in result.fixes.fixed if hasattr(f, "to_json")]})
    return result.exit_code


def _confirm_examples(options: Options) -> int:
    from trainlint.runtime.confirm import confirm_example, example_specs, examples_table, provenance
    from trainlint.runtime.smoke import resolve_device

    device = resolve_device(options.device)
    specs = example_specs(options.codes)
    started = time.perf_counter()
    results = [confirm_example(spec, device=device, seed=options.seed, threads=options.threads) for spec in specs]
    elapsed = time.perf_counter() - started
    print(f"trainlint confirm --examples: {provenance(device)}")
    print(examples_table(results))
    print(f"{sum(r.ok for r in results)}/{len(results)} examples confirmed or not reproducible here, {elapsed:.1f} s")
    if options.markdown_path:
        header = f"Confirmed on {provenance(device)} with `trainlint confirm --examples`:\n\n"
        options.markdown_path.write_text(header + examples_table(results, markdown=True) + "\n")
    if options.json_path:
        options.json_path.write_text(json.dumps(_examples_json(results, device), indent=2) + "\n")
    if options.evidence_path:
        _record_evidence(options.evidence_path, results, device)
    return 0 if all(r.ok for r in results) else 1


def _record_evidence(path: Path, results: list[Any], device: str) -> None:
    """One row per rule and kind of device (cpu, cuda), replacing that device's earlier row."""
    import datetime

    import torch

    from trainlint.runtime.confirm import describe
    from trainlint.runtime.smoke import device_description

    try:
        evidence: dict[str, list[dict[str, str]]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        evidence = {}
    kind = device.split(":")[0]
    for result in results:
        row = {
            "kind": kind,
            "device": device_description(device),
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "example": result.spec.name,
            "original": describe(result.original.report, result.spec.original) if result.original else "-",
            "fixed": describe(result.fixed.report, result.spec.fixed) if result.fixed else "-",
            "confirmed": result.status + (f" ({result.detail})" if result.detail else ""),
        }
        for code in result.spec.rules:
            rows = [r for r in evidence.get(code, []) if r.get("kind") != kind or r.get("example") != row["example"]]
            evidence[code] = sorted([*rows, row], key=lambda r: (r["kind"], r["example"]))
    path.write_text(json.dumps(dict(sorted(evidence.items())), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _examples_json(results: list[Any], device: str) -> dict[str, Any]:
    from trainlint.runtime.confirm import describe, provenance

    return {
        "provenance": provenance(device),
        "examples": [
            {
                "example": r.spec.name,
                "rules": r.spec.rules,
                "rules_fixed": r.rules_fixed,
                "status": r.status,
                "detail": r.detail,
                "original": describe(r.original.report, r.spec.original) if r.original else None,
                "fixed": describe(r.fixed.report, r.spec.fixed) if r.fixed else None,
                "original_report": r.original.report.to_json() if r.original else None,
                "fixed_report": r.fixed.report.to_json() if r.fixed else None,
            }
            for r in results
        ],
    }


def _print_exception(run: Any) -> None:
    exc = run.record.exception
    if exc is not None:
        print(f"--- {run.label} run raised (traceback of the training code) ---", file=sys.stderr)
        print(exc.traceback.rstrip(), file=sys.stderr)


def _outputs(options: Options, runs: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from trainlint.runtime.report import plot_png, write_json

    if options.json_path:
        write_json(options.json_path, {name: (run.record, run.report) for name, run in runs.items()}, extra)
        print(f"wrote {options.json_path}")
    if options.png_path:
        why_not = plot_png(options.png_path, [(name, run.record) for name, run in runs.items()])
        print(f"PNG not written: {why_not}" if why_not else f"wrote {options.png_path}")
