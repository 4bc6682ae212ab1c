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


def timed(command: Sequence[str], cwd: Path, repeat: int, before=None) -> float:
    samples = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


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
        cache = work / ".trainlint_cache"

        def clear_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        figures: dict[str, float] = {}
        figures["trainlint cold, all cores"] = timed([*trainlint, "--no-cache", "."], work, args.repeat)
        figures["trainlint cold, 1 job"] = timed([*trainlint, "--no-cache", "--jobs", "1", "."], work, args.repeat)
        subprocess.run([*trainlint, "."], cwd=work, stdout=subprocess.DEVNULL, check=False)
        figures["trainlint warm cache"] = timed([*trainlint, "."], work, args.repeat)
        figures["bare libcst.parse_module"] = timed([*python_command(), "-c", PARSE_ONLY, "."], work, args.repeat)
        clear_cache()
        peer_bin = PEERS / "bin"
        if (peer_bin / "torchfix").exists():
            figures["TorchFix 0.7.0"] = timed([str(peer_bin / "torchfix"), "."], work, args.repeat)
        if (peer_bin / "ruff").exists():
            figures["ruff (all rules)"] = timed(
                [str(peer_bin / "ruff"), "check", "--no-cache", "--select", "ALL", "--exit-zero", "."], work, args.repeat
            )
    reference = figures["trainlint cold, all cores"]
    parse = figures["bare libcst.parse_module"]
    print(f"{len(files)} files, {lines} lines; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; median of {args.repeat} runs each")
    print("| tool | files/s | time / trainlint cold | time / bare parse |")
    print("|---|---|---|---|")
    for name, seconds in figures.items():
        print(f"| {name} | {len(files) / seconds:.0f} | {seconds / reference:.2f}x | {seconds / parse:.2f}x |")
    if not (peer_bin / "torchfix").exists():
        print("(TorchFix and ruff not measured: run with --setup first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
