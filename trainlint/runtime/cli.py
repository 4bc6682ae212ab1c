"""``trainlint smoke`` and ``trainlint confirm``: argv in, report out, exit code 0 when healthy.

trainlint's options come before the script; everything after the script's name is the script's,
as with ``python SCRIPT ARGS`` or ``torchrun [OPTIONS] SCRIPT ARGS``: ``trainlint smoke
--steps 5 train.py --device cpu`` gives ``--device cpu`` to train.py. A ``--`` ends trainlint's
options (for a script whose name starts with ``-``). With ``--examples`` there is no script, and
options may come anywhere.
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
usage: trainlint smoke [--steps N] [--max-seconds S] [--device auto|cpu|cuda] [--seed S] [--threads T]
                       [--json PATH] [--png PATH] [--] SCRIPT [SCRIPT_ARGS...]
       trainlint confirm [--steps N] [--max-seconds S] [--device ...] [--seed S] [--threads T]
                       [--unsafe-fixes] [--select CODES] [--json PATH] [--png PATH] [--] SCRIPT [SCRIPT_ARGS...]
       trainlint confirm --examples [CODES...] [--device ...] [--markdown PATH] [--json PATH]
                       [--evidence PATH]

smoke    run SCRIPT in this process under the monitor, stop after N optimizer steps (default 10),
         S seconds, or when it ends, print its health report; exit 0 when healthy, 1 when not.
confirm  fix SCRIPT and the local modules it imports in memory (files on disk are not touched),
         smoke-run the original and the fixed code with the same seed, print both reports and a
         verdict per fixed finding; exit 0 when each is confirmed or not reproduced on this
         device and the fixed run is not worse.
         With --examples: confirm each rule's example; exit 0 when every one is confirmed or
         not reproducible on this device. --evidence records each rule's row (device, torch,
         date) in a JSON file such as trainlint/rules/evidence.json, which the rule pages show.
trainlint's options go before SCRIPT; everything after SCRIPT is passed to it.
--threads defaults to 1 (more threads on a busy machine made short runs 10-100x slower).
"""

_VALUE_OPTIONS = {
    "--steps", "--max-seconds", "--device", "--seed", "--threads", "--json", "--png", "--select", "--markdown",
    "--evidence",
}
_FLAG_OPTIONS = {"--unsafe-fixes", "--examples", "--help", "-h"}


@dataclass
class Options:
    command: str
    script: Path | None = None
    script_args: list[str] = field(default_factory=list)
    steps: int | None = None
    max_seconds: float | None = None
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
    ours = tokens[: tokens.index("--")] if "--" in tokens else tokens
    anywhere = "--examples" in ours  # no script: every word is trainlint's
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
        elif token.startswith("-") and token != "-":
            raise _ArgError(f"unknown option {token} (the script's options go after its name)")
        elif anywhere:
            words.append(token)
        else:  # the script: what follows is its own
            words += [token, *tokens]
            break
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
        elif name == "--max-seconds":
            options.max_seconds = float(value)
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
        return f"{options.command}: which script? (trainlint {options.command} [OPTIONS] SCRIPT [SCRIPT_ARGS])"
    if not options.script.is_file():
        return f"no such script: {options.script}"
    if options.steps is not None and options.steps < 1:
        return "--steps must be at least 1"
    if options.max_seconds is not None and not options.max_seconds > 0:
        return "--max-seconds must be more than 0"
    return None


def _require_script(options: Options) -> Path:
    from trainlint.runtime.smoke import UsageError

    if options.script is None:
        raise UsageError(f"{options.command}: which script? (trainlint {options.command} SCRIPT ...)")
    return options.script


def _run_options(options: Options) -> dict[str, Any]:
    from trainlint.runtime.smoke import DEFAULT_STEPS

    return dict(
        steps=options.steps or DEFAULT_STEPS,
        max_seconds=options.max_seconds,
        device=options.device,
        seed=options.seed,
        threads=options.threads,
    )


def _smoke(options: Options) -> int:
    from trainlint.runtime.report import format_report
    from trainlint.runtime.smoke import device_description, run_script

    script = _require_script(options)
    run = run_script(script, options.script_args, **_run_options(options))
    if not _gather_ranks(run, "smoke"):
        return 0 if run.report.healthy else 1
    _explain_misplaced_options(options, run)
    _print_exception(run)
    world = run.record.world_size
    title = f"{script} on {device_description(run.device)}" + (f", {world} ranks" if world > 1 else "")
    print(f"trainlint smoke: {title}")
    print(format_report(run.report, "smoke run"))
    _outputs(options, {"smoke": run})
    return 0 if run.report.healthy else 1


def _gather_ranks(run: Any, label: str) -> bool:
    """Under torchrun: a rank other than 0 hands its record over and says nothing (False);
    rank 0 gathers every other rank's into its report. Without torchrun: True."""
    from trainlint.runtime.ranks import add_ranks_to_report, collect_other_ranks, launched_ranks, share_with_rank_zero

    rank, world = launched_ranks()
    if world <= 1:
        return True
    if rank != 0:
        share_with_rank_zero(run.record, label)
        return False
    run.other_ranks = collect_other_ranks(label)
    add_ranks_to_report(run.report, run.other_ranks)
    return True


def _explain_misplaced_options(options: Options, run: Any) -> None:
    """A script that exits on an option trainlint has, given after the script's name."""
    exc = run.record.exception
    if exc is None or exc.type != "SystemExit":
        return
    misplaced = [a.partition("=")[0] for a in options.script_args if a.partition("=")[0] in _VALUE_OPTIONS | _FLAG_OPTIONS]
    if misplaced:
        run.report.notes.append(
            f"{', '.join(misplaced)} came after the script's name, so it went to the script; trainlint's own "
            f"options go before it: trainlint {options.command} {misplaced[0]} ... {options.script} ..."
        )


def _confirm(options: Options) -> int:
    from trainlint.runtime.confirm import confirm_script, describe_finding
    from trainlint.runtime.report import format_side_by_side
    from trainlint.runtime.smoke import device_description

    script = _require_script(options)
    try:
        result = confirm_script(
            script,
            options.script_args,
            **_run_options(options),
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
    runs = {"original": result.original, **({"fixed": result.fixed} if result.fixed else {})}
    if not all([_gather_ranks(run, name) for name, run in runs.items()]):
        return result.exit_code
    print(f"trainlint confirm: {script} on {device_description(result.original.device)}, seed {options.seed}")
    if not result.fixes.fixed:
        print("nothing to fix: trainlint found no fixable problem; the original run:")
    else:
        print(f"fixed in memory ({len(result.findings)}):")
        for finding in result.findings:
            print(f"  {finding}")
    unsafe = [f for f in result.fixes.remaining if getattr(f.fix, "applicability", None) == "unsafe"]
    if unsafe and not options.unsafe_fixes:
        print(f"not applied ({len(unsafe)} unsafe fixes; add --unsafe-fixes to confirm them too):")
        for finding in unsafe:
            print(f"  {describe_finding(finding)}")
    for run in runs.values():
        _explain_misplaced_options(options, run)
        _print_exception(run)
    print(format_side_by_side([(name, run.report) for name, run in runs.items()]))
    verdicts = [str(v) for v in result.verdicts] + [f"the fixed run is worse: {w}" for w in result.worse]
    if result.verdicts:
        print("per finding, what these runs show:")
    for line in verdicts:
        print(f"  {line}")
    extra = {
        "findings": [f.to_json() for f in result.findings],
        "verdicts": [v.to_json() for v in result.verdicts],
        "fixed_run_worse": result.worse,
        "exit_code": result.exit_code,
    }
    _outputs(options, runs, extra, verdicts)
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
            "fixed": ("by hand: " if result.by_hand else "") + (describe(result.fixed.report, result.spec.fixed) if result.fixed else "-"),
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
                "by_hand": r.by_hand,
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


def _about(options: Options, runs: dict[str, Any]) -> dict[str, Any]:
    """What the JSON says the numbers come from."""
    import torch

    from trainlint import __version__
    from trainlint.runtime.smoke import device_description

    first = next(iter(runs.values()))
    return {
        "command": options.command,
        "script": str(first.script),
        "args": list(options.script_args),
        "device": first.device,
        "device_name": device_description(first.device),
        "seed": options.seed,
        "steps": first.record.ending.steps_wanted,
        "max_seconds": options.max_seconds,
        "threads": options.threads,
        "world_size": first.record.world_size,
        "torch": torch.__version__,
        "trainlint": __version__,
    }


def _outputs(
    options: Options, runs: dict[str, Any], extra: dict[str, Any] | None = None, verdicts: Sequence[str] = ()
) -> None:
    from trainlint.runtime.plot import plot_png
    from trainlint.runtime.report import run_json, write_json

    if options.json_path:
        data = {name: run_json(run.record, run.report, run.ranks_for_json()) for name, run in runs.items()}
        write_json(options.json_path, data, {**_about(options, runs), **(extra or {})})
        print(f"wrote {options.json_path}")
    if options.png_path:
        why_not = plot_png(options.png_path, [(name, run.record, run.report) for name, run in runs.items()], verdicts)
        print(f"PNG not written: {why_not}" if why_not else f"wrote {options.png_path}")
