"""How fast trainlint lints a directory, against the floor set by LibCST's parser.

    python benchmarks/lint_speed.py DIRECTORY [--repeat N]

From one run it prints, for the Python files trainlint would lint under DIRECTORY:

- the time of a bare ``libcst.parse_module`` over every file (in this process, one core);
- trainlint cold (no cache) with every rule enabled (``--select ALL``), on one core
  (``--jobs 1``) and on all cores (``--jobs 0``), as the user runs it: the real command line in
  a subprocess, interpreter start-up included;
- trainlint with a warm cache (the second of two runs over the unchanged tree);

each as seconds, files per second and the ratio to the bare parse. Targets (issue 2): cold on one
core at most 2x the bare parse; warm under 10% of cold.

The cache goes to a temporary directory (through a temporary ``--config`` file), so the linted
directory is never written to. Only public tools are used: ``time.perf_counter`` and ``subprocess``.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libcst

from trainlint.config import Settings
from trainlint.discovery import discover
from trainlint.source import SourceError, SourceText


def python_files(directory: Path) -> list[Path]:
    """The files trainlint lints under the directory (its discovery, default excludes)."""
    return [t.path for t in discover([str(directory)], Settings(root=directory)) if not (t.missing or t.problem)]


def bare_parse_seconds(texts: list[str]) -> float:
    """libcst.parse_module over every text, as a plain caller would run it (GC on)."""
    gc.collect()
    started = time.perf_counter()
    for text in texts:
        try:
            libcst.parse_module(text)
        except Exception:  # a file LibCST rejects costs what it costs
            pass
    return time.perf_counter() - started


def read_texts(files: list[Path]) -> list[str]:
    texts = []
    for path in files:
        try:
            texts.append(SourceText.from_bytes(path.read_bytes()).text)
        except (OSError, SourceError):
            continue
    return texts


def run_trainlint(directory: Path, config: Path, *options: str) -> tuple[float, int]:
    command = [
        sys.executable, "-m", "trainlint", "--config", str(config), "--select", "ALL",
        "--exit-zero", "--quiet", "--output-format", "concise", *options, str(directory),
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"trainlint failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return seconds, len(completed.stdout.splitlines())


def row(label: str, seconds: float, files: int, parse_seconds: float, note: str = "") -> str:
    rate = files / seconds if seconds else float("inf")
    ratio = seconds / parse_seconds if parse_seconds else float("inf")
    return f"{label:<34} {seconds:8.2f} s {rate:9.0f} files/s {ratio:8.2f}x parse  {note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for each measurement")
    args = parser.parse_args(argv)
    directory = args.directory.resolve()
    if not directory.is_dir():
        parser.error(f"{args.directory}: not a directory")

    files = python_files(directory)
    texts = read_texts(files)
    size = sum(len(t) for t in texts) / 1e6
    print(f"{directory}: {len(files)} Python files, {size:.1f} M characters; {os.cpu_count()} cores")
    parse = min(bare_parse_seconds(texts) for _ in range(args.repeat))

    with tempfile.TemporaryDirectory(prefix="trainlint-bench-") as scratch:
        config = Path(scratch) / "trainlint.toml"
        config.write_text(f'cache-dir = "{Path(scratch, "cache").as_posix()}"\n', encoding="utf-8")
        cold_one = min(run_trainlint(directory, config, "--no-cache", "--jobs", "1") for _ in range(args.repeat))
        cold_all = min(run_trainlint(directory, config, "--no-cache", "--jobs", "0") for _ in range(args.repeat))
        run_trainlint(directory, config)  # fills the cache
        warm = min(run_trainlint(directory, config) for _ in range(args.repeat))

    print(row("bare libcst.parse_module (1 core)", parse, len(files), parse))
    print(row("trainlint cold, --jobs 1", cold_one[0], len(files), parse, f"{cold_one[1]} findings"))
    print(row("trainlint cold, all cores", cold_all[0], len(files), parse, f"{cold_all[1]} findings"))
    print(row("trainlint warm cache", warm[0], len(files), parse, f"{warm[1]} findings"))
    print(
        f"cold (1 job) / parse = {cold_one[0] / parse:.2f} (target <= 2); "
        f"warm / cold (1 job) = {warm[0] / cold_one[0]:.1%} (target < 10%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
