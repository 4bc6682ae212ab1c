"""Start-up: how long the commands that parse nothing take, against a bare Python, in one run.

    python benchmarks/startup.py [--repeat 21]

Times whole processes (what a person at a terminal or a pre-commit hook waits for): `python -c
pass` as the baseline, then `trainlint --version`, `--list-rules`, `--explain TL101`, and the
run a pre-commit hook makes on a commit of 5 files already linted: a git repository with a
.gitignore and a pyproject.toml with [tool.trainlint], `trainlint --force-exclude FILE...`, all 5
files (with findings) in the cache. The same run without the cache is shown for scale. The
commands run in turn, round after round, so that a noisy machine slows them alike; each figure is
the median over `--repeat` rounds, with its ratio to the baseline. Bytecode is written and used
(PYTHONDONTWRITEBYTECODE is dropped for the children), as on a user's machine.
Targets (issue 15): `--version` within 2x of `python -c pass`, the warm 5-file run within 3x.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"trainlint --version": 2.0, "warm run, 5 cached files": 3.0}


def trainlint_command() -> list[str]:
    """The console script installed next to this Python (what users run), else `-m trainlint`."""
    script = Path(sys.executable).parent / "trainlint"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainlint"]


def pre_commit_project(directory: Path) -> list[str]:
    """A repository as pre-commit sees it, and the 5 staged files it names."""
    subprocess.run(["git", "init", "-q", str(directory)], check=False)
    (directory / ".gitignore").write_text("*.log\n__pycache__/\n", encoding="utf-8")
    (directory / "pyproject.toml").write_text(
        '[project]\nname = "bench"\n\n[tool.trainlint]\nextend-exclude = ["legacy"]\n', encoding="utf-8"
    )
    sources = sorted((ROOT / "examples").rglob("*.py")) + sorted((ROOT / "tests" / "fixtures" / "cli").glob("*.py"))
    names = []
    for index, source in enumerate((sources * 5)[:5]):
        target = directory / f"m{index}_{source.name}"
        shutil.copy(source, target)
        names.append(target.name)
    return names


def run(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    trainlint = trainlint_command()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["NO_COLOR"] = "1"
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        files = pre_commit_project(directory)
        cache = directory / ".trainlint_cache"
        hook = [*trainlint, "--force-exclude"]
        subprocess.run([*hook, *files], cwd=directory, env=env, stdout=subprocess.DEVNULL, check=False)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "trainlint --version": [*trainlint, "--version"],
            "trainlint --list-rules": [*trainlint, "--list-rules"],
            "trainlint --explain TL101": [*trainlint, "--explain", "TL101"],
            "warm run, 5 cached files": [*hook, *files],
            "cold run, 5 files (no cache)": [*hook, "--no-cache", *files],
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                samples[name].append(run(command, directory, env))
        if not cache.exists():
            print("the warm run found no cache: the figures below are not a warm run", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["python -c pass"]
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
          f"median of {args.repeat} rounds, commands in turn")
    print(f"{'command':<32} {'median':>9} {'ratio':>7}  target")
    for name, value in medians.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:.0f}x {'met' if value / base <= target else 'MISSED'}"
        print(f"{name:<32} {value * 1000:>7.1f}ms {value / base:>6.2f}x  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
