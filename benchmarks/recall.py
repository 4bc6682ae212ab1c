"""Recall on real code: does trainlint find the anti-patterns it exists for, and stay quiet on look-alikes?

    python benchmarks/recall.py --checkouts DIR [--cases FILE] [--group GROUP] [--json]

The cases (``benchmarks/recall_cases.toml``) are references to public repositories, never their
code. Each ``[[case]]`` names ``repo`` (owner/name), the full ``commit`` it was checked at, a
``path`` in that repository, ``lines`` (``[first, last]``, or a list of such ranges) where the
finding must be reported, a ``shape`` (tags for the code shape: ``train-fn-params``, ``self-attr``,
``sequential-activation``, ...), a one-line ``why``, and either

- ``kind = "positive"`` with ``rule``: a real instance; it is *found* when a finding of that code
  starts on a line inside one of the ranges of that file;
- ``kind = "clean"`` with ``rules``: a real look-alike; it is *clean* when no finding of those
  codes starts inside its ranges.

``group`` separates the rules trainlint has (``existing-rules``) from the rules proposed in issue
17 (``new-rules``). A case whose rule trainlint does not list (``trainlint --list-rules``) is
scored as "not implemented", so the same file keeps working once the rule lands.

The script fetches nothing. ``DIR/owner+name/`` must hold each repository at the case's commit:
a git checkout (``git rev-parse HEAD`` is compared with the commit) or a plain directory with a
``COMMIT`` file holding the 40-hex commit. A missing checkout, a commit mismatch, a missing file or
a trainlint crash is reported as an error for the cases concerned (exit status 1).

trainlint runs as the installed console script (``trainlint`` next to this Python, else on PATH;
``--trainlint`` overrides), not as ``python -m trainlint``, since a checkout may hold a module that
shadows one of its dependencies. It runs once per repository, with the working directory at the
checkout's root so imports between the project's modules resolve, on the referenced files only:
``trainlint --select ALL --no-cache --exit-zero --output-format json FILE...``.

Making the checkouts from fetched mirrors
-----------------------------------------
A fetched snapshot is a git mirror (``MIRRORS/owner+name/repo``, bare or with a ``.git``
inside). Snapshots leave out files of 4 MiB and more, so check out around the missing blobs with
a sparse-checkout pattern::

    src=MIRRORS/owner+name/repo; [ -d "$src/.git" ] && src="$src/.git"
    git clone --quiet --no-checkout "$src" DIR/owner+name
    cd DIR/owner+name
    git ls-tree -r COMMIT | awk '$2 == "blob" {print $3 "\\t" $4}' |
      while IFS="$(printf '\\t')" read -r sha path; do
        git cat-file -e "$sha" 2>/dev/null || printf '!/%s\\n' "$path"; done > ../missing
    if [ -s ../missing ]; then
      git config core.sparseCheckout true
      { echo '/*'; cat ../missing; } > .git/info/sparse-checkout
    fi
    git checkout --quiet COMMIT

``--print-checkout-commands MIRRORS`` prints these commands for every repository of the cases.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CASES = Path(__file__).with_name("recall_cases.toml")
NOT_IMPLEMENTED = "not implemented"


@dataclass
class Case:
    id: str
    kind: str
    group: str
    repo: str
    commit: str
    path: str
    ranges: list[tuple[int, int]]
    rules: list[str]
    shapes: list[str]
    why: str
    status: str = ""  # found / missed / clean / dirty / not implemented / error
    detail: str = ""
    hits: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # the case's rules that trainlint implements


def load_cases(path: Path) -> list[Case]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    cases = []
    for raw in data["case"]:
        lines = raw["lines"]
        ranges = [tuple(lines)] if isinstance(lines[0], int) else [tuple(r) for r in lines]
        rules = [raw["rule"]] if raw["kind"] == "positive" else list(raw["rules"])
        shapes = raw["shape"] if isinstance(raw["shape"], list) else [raw["shape"]]
        cases.append(Case(raw["id"], raw["kind"], raw["group"], raw["repo"], raw["commit"], raw["path"],
                          ranges, rules, shapes, raw["why"]))
    return cases


def trainlint_command(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("trainlint")
    if beside.exists():
        return str(beside)
    found = shutil.which("trainlint")
    if found is None:
        raise SystemExit("recall.py: no `trainlint` console script next to this Python or on PATH")
    return found


def implemented_rules(trainlint: str) -> set[str]:
    listing = subprocess.run([trainlint, "--list-rules"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^(TL\d{3})\b", listing, flags=re.MULTILINE))


def checkout_commit(root: Path) -> str | None:
    if (root / ".git").exists():
        run = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else None
    marker = root / "COMMIT"
    return marker.read_text().strip() if marker.exists() else None


def repository_problem(root: Path, commit: str) -> str | None:
    if not root.is_dir():
        return f"no checkout at {root}"
    actual = checkout_commit(root)
    if actual is None:
        return f"{root} is neither a git checkout nor holds a COMMIT file"
    if actual != commit:
        return f"{root} is at {actual}, the cases need {commit}"
    return None


def lint(trainlint: str, root: Path, paths: list[str]) -> tuple[list[dict], str | None]:
    run = subprocess.run(
        [trainlint, "--select", "ALL", "--no-cache", "--exit-zero", "--output-format", "json", *paths],
        cwd=root, capture_output=True, text=True,
    )
    try:
        findings = json.loads(run.stdout)
    except json.JSONDecodeError:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"trainlint failed (exit {run.returncode}): {last}"
    return findings, None


def findings_by_file(findings: list[dict], root: Path) -> dict[str, list[tuple[str, int]]]:
    by_file: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for finding in findings:
        path = Path(finding["filename"])
        relative = path.resolve().relative_to(root.resolve()) if path.is_absolute() else path
        by_file[relative.as_posix()].append((finding["code"], finding["location"]["row"]))
    return by_file


def score_case(case: Case, findings: list[tuple[str, int]], implemented: set[str]) -> None:
    checked = case.checked = [rule for rule in case.rules if rule in implemented]
    if not checked:
        case.status = NOT_IMPLEMENTED
        return
    inside = [f"{code}:{row}" for code, row in findings
              if code in checked and any(first <= row <= last for first, last in case.ranges)]
    case.hits = inside
    if case.kind == "positive":
        case.status = "found" if inside else "missed"
    else:
        case.status = "dirty" if inside else "clean"
    unparsed = [f"TL001:{row}" for code, row in findings if code == "TL001"]
    if unparsed and case.status in ("missed", "clean"):
        case.detail = "file not parsed (" + ", ".join(unparsed) + ")"


def run_cases(cases: list[Case], checkouts: Path, trainlint: str) -> None:
    implemented = implemented_rules(trainlint)
    by_repo: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_repo[case.repo].append(case)
    for repo, repo_cases in sorted(by_repo.items()):
        root = checkouts / repo.replace("/", "+")
        problem = next((p for c in repo_cases if (p := repository_problem(root, c.commit))), None)
        paths = sorted({c.path for c in repo_cases})
        missing = [p for p in paths if not (root / p).is_file()] if problem is None else []
        if problem is None and missing:
            problem = "missing file(s): " + ", ".join(missing)
        findings, problem = ([], problem) if problem else lint(trainlint, root, paths)
        if problem:
            for case in repo_cases:
                case.status, case.detail = "error", problem
            continue
        by_file = findings_by_file(findings, root)
        for case in repo_cases:
            score_case(case, by_file.get(case.path, []), implemented)


def ratio(hit: int, total: int) -> str:
    return f"{hit}/{total} ({100 * hit / total:.0f}%)" if total else "0/0"


def tally(cases: list[Case], key) -> dict[str, list[int]]:
    """found/total (or clean/total) per key; a key function may return several keys."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for case in cases:
        for name in key(case):
            counts[name][0] += case.status in ("found", "clean")
            counts[name][1] += 1
    return dict(sorted(counts.items()))


def summary(cases: list[Case]) -> dict:
    scored = [c for c in cases if c.status in ("found", "missed", "clean", "dirty")]
    positives = [c for c in scored if c.kind == "positive"]
    cleans = [c for c in scored if c.kind == "clean"]
    return {
        "recall": tally(positives, lambda c: ["overall"])["overall"] if positives else [0, 0],
        "recall_per_rule": tally(positives, lambda c: c.rules),
        "recall_per_shape": tally(positives, lambda c: c.shapes),
        "recall_per_group": tally(positives, lambda c: [c.group]),
        "clean": tally(cleans, lambda c: ["overall"])["overall"] if cleans else [0, 0],
        "clean_per_rule": tally(cleans, lambda c: c.checked),
        "not_implemented": {
            kind: dict(sorted(Counter(c.rules[0] for c in cases if c.status == NOT_IMPLEMENTED and c.kind == kind).items()))
            for kind in ("positive", "clean")
        },
        "errors": sum(c.status == "error" for c in cases),
    }


def case_line(case: Case) -> str:
    where = ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in case.ranges)
    extra = f" [{case.detail}]" if case.detail else ""
    hits = f" reported {' '.join(case.hits)}" if case.hits else ""
    return (f"{case.status.upper():7} {'/'.join(case.rules)} {case.repo} {case.path}:{where} "
            f"({', '.join(case.shapes)}) {case.id}{hits}{extra}")


def print_report(cases: list[Case], result: dict) -> None:
    print(f"recall: {ratio(*result['recall'])}    clean look-alikes: {ratio(*result['clean'])}")
    for title, table in (("recall per rule", result["recall_per_rule"]),
                         ("recall per shape", result["recall_per_shape"]),
                         ("recall per group", result["recall_per_group"]),
                         ("clean look-alikes per rule", result["clean_per_rule"])):
        print(f"\n{title}:")
        for name, (hit, total) in table.items():
            print(f"  {name:24} {ratio(hit, total)}")
    for kind, counts in result["not_implemented"].items():
        if counts:
            listed = ", ".join(f"{rule} ({n})" for rule, n in counts.items())
            print(f"\nnot implemented, {kind} cases kept for later: {listed}")
    failures = [c for c in cases if c.status in ("missed", "dirty", "error")]
    if failures:
        print(f"\nmisses, dirty look-alikes and errors ({len(failures)}):")
        for case in failures:
            print("  " + case_line(case))


def checkout_commands(cases: list[Case], mirrors: Path) -> str:
    lines = ["set -e", 'DIR="${DIR:?set DIR to the checkouts directory}"']
    for repo, commit in sorted({(c.repo, c.commit) for c in cases}):
        name = repo.replace("/", "+")
        lines += [
            f"# {repo}",
            f'src="{mirrors}/{name}/repo"; [ -d "$src/.git" ] && src="$src/.git"',
            f'git clone --quiet --no-checkout "$src" "$DIR/{name}"',
            f"git -C \"$DIR/{name}\" ls-tree -r {commit} | awk '$2 == \"blob\" {{print $3 \"\\t\" $4}}' |",
            f"  while IFS=\"$(printf '\\t')\" read -r sha path; do git -C \"$DIR/{name}\" cat-file -e \"$sha\" "
            f"2>/dev/null || printf '!/%s\\n' \"$path\"; done > \"$DIR/{name}.missing\"",
            f'if [ -s "$DIR/{name}.missing" ]; then git -C "$DIR/{name}" config core.sparseCheckout true; '
            f'{{ echo "/*"; cat "$DIR/{name}.missing"; }} > "$DIR/{name}/.git/info/sparse-checkout"; fi',
            f'rm -f "$DIR/{name}.missing"; git -C "$DIR/{name}" checkout --quiet {commit}',
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", type=Path, help="directory holding owner+name/ checkouts")
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES, help="cases file (TOML)")
    parser.add_argument("--group", choices=["existing-rules", "new-rules"], help="score one group only")
    parser.add_argument("--trainlint", help="the trainlint console script to run")
    parser.add_argument("--json", action="store_true", help="print the summary and every case as JSON")
    parser.add_argument("--print-checkout-commands", type=Path, metavar="MIRRORS",
                        help="print the git commands that make the checkouts from fetched mirrors, and exit")
    args = parser.parse_args()
    cases = [c for c in load_cases(args.cases) if args.group in (None, c.group)]
    if args.print_checkout_commands:
        print(checkout_commands(cases, args.print_checkout_commands))
        return 0
    if args.checkouts is None or not args.checkouts.is_dir():
        parser.error("--checkouts must name a directory of owner+name/ checkouts")
    run_cases(cases, args.checkouts, trainlint_command(args.trainlint))
    result = summary(cases)
    if args.json:
        fields = ("id", "kind", "group", "repo", "commit", "path", "ranges", "rules", "shapes", "status", "detail", "hits")
        print(json.dumps({"summary": result, "cases": [{k: getattr(c, k) for k in fields} for c in cases]}, indent=2))
    else:
        print_report(cases, result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
