"""Reliability on a real repository: lint and fix a temporary copy, and count what went wrong.

    python benchmarks/corpus_run.py PATH/TO/CHECKOUT [--json]

Reports, for the copy (the checkout itself is never touched):
- crashes: the process failing (exit 2 or a traceback) or an internal-error finding (TL003);
- fixes that do not re-parse: a file changed by ``--fix --unsafe-fixes`` that Python's own
  ``compile`` rejects while it accepted the original;
- non-idempotent fixes: files a second ``--fix --unsafe-fixes`` changes again;
- files changed without a finding: files the fix run changed though the lint run gave them no
  fixable finding.
Also prints findings per rule, to feed the precision table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from isolated import trainlint_command


def trainlint(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Never `python -m trainlint` in the copy: it would import modules from the checkout.
    return subprocess.run(
        [*trainlint_command(), "--no-cache", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.py"))
        if p.is_file() and not p.is_symlink()
    }


def compiles(path: Path) -> bool:
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def crashed(run: subprocess.CompletedProcess[str]) -> bool:
    return run.returncode not in (0, 1) or "Traceback (most recent call last)" in run.stderr


def corpus_run(checkout: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as temporary:
        copy = Path(temporary) / checkout.name
        shutil.copytree(checkout, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        lines = sum(len(p.read_text(errors="replace").splitlines()) for p in copy.rglob("*.py") if p.is_file())
        lint = trainlint("--output-format", "json", ".", cwd=copy)
        findings = json.loads(lint.stdout) if lint.stdout.strip().startswith("[") else []
        fixable_files = {str(Path(f["filename"]).relative_to(copy.resolve())) for f in findings if f["fix"]}
        before = digests(copy)
        first_fix = trainlint("--fix", "--unsafe-fixes", "--quiet", "--output-format", "concise", ".", cwd=copy)
        after = digests(copy)
        changed = sorted(p for p in after if before.get(p) != after[p])
        second_fix = trainlint("--fix", "--unsafe-fixes", "--quiet", "--output-format", "concise", ".", cwd=copy)
        again = digests(copy)
        return {
            "repository": checkout.name,
            "files": len(before),
            "lines": lines,  # before any fix
            "findings": len(findings),
            "by_rule": dict(sorted(Counter(f["code"] for f in findings).items())),
            "crashes": int(crashed(lint)) + int(crashed(first_fix)) + int(crashed(second_fix))
            + sum(1 for f in findings if f["code"] == "TL003"),
            "fixes_not_reparsing": [p for p in changed if not compiles(copy / p)],
            "non_idempotent": sorted(p for p in again if again[p] != after.get(p)),
            "changed_without_finding": [p for p in changed if p not in fixable_files],
            "files_fixed": len(changed),
            "findings_list": [
                f"{Path(f['filename']).relative_to(copy.resolve())}:{f['location']['row']}:{f['location']['column']}: "
                f"{f['code']} {f['message']}"
                for f in findings
            ],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--findings", action="store_true", help="list every finding")
    args = parser.parse_args()
    results = [corpus_run(c.resolve()) for c in args.checkouts]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| repository | files | lines | findings | crashes | fixes not re-parsing | non-idempotent | changed without finding | files fixed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['repository']} | {r['files']} | {r['lines']} | {r['findings']} | {r['crashes']} | "
            f"{len(r['fixes_not_reparsing'])} | {len(r['non_idempotent'])} | "
            f"{len(r['changed_without_finding'])} | {r['files_fixed']} |"
        )
    for r in results:
        print(f"\n{r['repository']}: findings per rule {r['by_rule']}")
        for key in ("fixes_not_reparsing", "non_idempotent", "changed_without_finding"):
            if r[key]:
                print(f"  {key}: {r[key]}")
        if args.findings:
            print("\n".join(f"  {line}" for line in r["findings_list"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
