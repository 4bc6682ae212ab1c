"""Side-by-side speed on one directory, in one run: trainlint against its peers.

    python benchmarks/compare_speed.py PATH/TO/CHECKOUT [--repeat 3] [--peers-venv DIR]

Times, over the same Python files: trainlint cold (no cache) with 1 job and with all cores,
trainlint with a warm cache, bare ``libcst.parse_module`` of every file (in one process), TorchFix
(the closest LibCST-based PyTorch linter) and ruff (a native linter, for scale). Each figure is the
median wall time over ``--repeat`` runs, printed as files per second and as a ratio to trainlint's
cold all-cores time. Peers are installed into their own virtual environment (``--setup``), never
as project dependencies: ``python benchmarks/compare_speed.py --setup`` makes ``benchmarks/.peers``.
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
from collections.abc import Sequence
from pathlib import Path

from isolated import python_command, trainlint_command

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers"
# TorchFix 0.7.0 declares libcst<1.6 but runs on the libcst trainlint uses; pinning it to the same
# libcst keeps the parse cost equal, so the comparison is of the linters, not of the parsers.
PEER_PACKAGES = ["torchfix==0.7.0", "ruff==0.17.6", "flake8>=6", "PyYAML"]

PARSE_ONLY = """
import gc, sys, libcst
from pathlib import Path
files = [p for p in Path(sys.argv[1]).rglob("*.py") if p.is_file()]
for path in files:
    try:
        libcst.parse_module(path.read_bytes())
    except Exception:
        pass
"""


def setup_peers() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    pip = [str(PEERS / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "torchfix==0.7.0"], check=True)
    from importlib.metadata import version

    subprocess.run([*pip, f"libcst=={version('libcst')}", *PEER_PACKAGES[1:]], check=True)


def timed_together(commands: dict[str, Sequence[str]], cwd: Path, repeat: int) -> dict[str, float]:
    """The median wall time of each command over ``repeat`` rounds, each round running every
    command once in turn: a machine whose speed drifts during the run (a shared host, a CPU
    that heats up) shifts all of them alike, so their ratios hold better than with each command
    repeated back to back."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(found) for name, found in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--setup", action="store_true", help="install the peers into benchmarks/.peers")
    args = parser.parse_args()
    if args.setup:
        setup_peers()
        if args.directory is None:
            return 0
    if args.directory is None:
        parser.error("a directory to lint is required")
    with tempfile.TemporaryDirectory() as temporary:
        # A private copy: trainlint's cache and config lookups must not touch the checkout.
        work = Path(temporary) / "tree"
        shutil.copytree(args.directory, work, ignore=shutil.ignore_patterns(".git"))
        files = [p for p in work.rglob("*.py") if p.is_file()]
        lines = sum(len(p.read_bytes().splitlines()) for p in files)
        trainlint = [*trainlint_command(), "--quiet", "--exit-zero", "--output-format", "concise"]
        # The cold runs neither read nor write the cache; the warm ones read the one made here.
        subprocess.run([*trainlint, "."], cwd=work, stdout=subprocess.DEVNULL, check=False)
        commands: dict[str, Sequence[str]] = {
            "trainlint cold, all cores": [*trainlint, "--no-cache", "."],
            "trainlint cold, 1 job": [*trainlint, "--no-cache", "--jobs", "1", "."],
            "trainlint warm cache": [*trainlint, "."],
            "bare libcst.parse_module": [*python_command(), "-c", PARSE_ONLY, "."],
        }
        peer_bin = PEERS / "bin"
        if (peer_bin / "torchfix").exists():
            commands["TorchFix 0.7.0"] = [str(peer_bin / "torchfix"), "."]
        if (peer_bin / "ruff").exists():
            commands["ruff (all rules)"] = [str(peer_bin / "ruff"), "check", "--no-cache", "--select", "ALL", "--exit-zero", "."]
        figures = timed_together(commands, work, args.repeat)
    reference = figures["trainlint cold, all cores"]
    parse = figures["bare libcst.parse_module"]
    print(f"{len(files)} files, {lines} lines; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; median of {args.repeat} rounds, each running every command once")
    print("| tool | files/s | time / trainlint cold | time / bare parse |")
    print("|---|---|---|---|")
    for name, seconds in figures.items():
        print(f"| {name} | {len(files) / seconds:.0f} | {seconds / reference:.2f}x | {seconds / parse:.2f}x |")
    if not (peer_bin / "torchfix").exists():
        print("(TorchFix and ruff not measured: run with --setup first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
