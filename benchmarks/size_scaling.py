"""How linting time grows with one file's size, measured in one run.

    python benchmarks/size_scaling.py [--sizes 10000,50000,100000] [--with-items 1000,5000] [--profile]

Generates training files of about 10,000, 50,000 and 100,000 lines in realistic shapes (video
models with 3-D convolutions, factories, training loops under float16 autocast with a GradScaler,
evaluation code with probabilities) and one ``with`` statement of many autocast items, lints each
with the real command line (``trainlint --no-cache --jobs 1``, one fresh process per input) and
prints the wall time, the peak memory and the growth ratio for each step. Near-linear analyses give
a time ratio close to the size ratio (5x lines -> about 5x time); a quadratic one gives its square.
``--profile`` also prints, for the largest training file, the functions with the most time of
their own (cProfile, in this process).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from isolated import trainlint_command

HEADER = """import torch
import torch.nn as nn
import torch.nn.functional as F

loader = []
"""

# One section of a training script: a model (with 3-D convolutions in one section out of two, as
# in video code; 2-D in the others), its factory, a training loop under float16 autocast (a TL108
# finding in the 3-D sections), an evaluation with probabilities, and top-level script code that
# trains under autocast again.
SECTION = '''
class Net{i}(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv{dims}d(3, width, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm{dims}d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))
        return self.head(x.flatten(2).mean(dim=2))


def build_model_{i}(width):
    return Net{i}(width)


def train_{i}(loader, width, epochs):
    model = build_model_{i}(width).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.cuda.amp.GradScaler()
    for epoch in range(epochs):
        for clips, labels in loader:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                logits = model(clips)
                loss = F.cross_entropy(logits, labels)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    return model


def evaluate_{i}(model, loader):
    total = 0.0
    with torch.no_grad():
        for clips, labels in loader:
            probs = torch.softmax(model(clips), dim=1)
            total += torch.log(probs.clamp_min(1e-8)).mean().item()
    return total


# a script's top level: a run of its own
model_{i} = build_model_{i}(8).cuda()
optimizer_{i} = torch.optim.SGD(model_{i}.parameters(), lr=0.1)
for clips, labels in loader:
    with torch.autocast("cuda"):
        loss = F.cross_entropy(model_{i}(clips), labels)
    loss.backward()
    optimizer_{i}.step()
    optimizer_{i}.zero_grad()
'''


def training_file(lines: int) -> str:
    per_section = SECTION.count("\n")
    sections = max(1, (lines - HEADER.count("\n")) // per_section)
    return HEADER + "".join(SECTION.format(i=i, dims=3 if i % 2 == 0 else 2) for i in range(sections))


def autocast_with(items: int) -> str:
    """One ``with`` of many float16 autocast items around a Conv3d model's forward pass."""
    managers = ",\n".join(f'    torch.autocast("cuda") as region_{i}' for i in range(items))
    return (
        HEADER
        + SECTION.format(i=0, dims=3)
        + "\n\ndef train(loader):\n    model = build_model_0(8).cuda()\n    for clips, labels in loader:\n"
        + "        with (\n"
        + "\n".join("    " + line for line in managers.splitlines())
        + "\n        ):\n            loss = F.cross_entropy(model(clips), labels)\n        loss.backward()\n"
    )


def measure(path: Path, timeout: float) -> tuple[float, float, int, bool]:
    """Wall seconds, CPU seconds and peak memory (MiB) of one lint of one file, and whether it was
    stopped at ``timeout`` (its times are then lower bounds)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [*trainlint_command(), "--no-cache", "--jobs", "1", "--quiet", "--exit-zero", "--output-format", "concise", path.name],
        cwd=path.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stopped = False
    while True:
        pid, _, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout and not stopped:
            process.kill()
            stopped = True
        time.sleep(0.02)
    process.returncode = 0  # reaped above: Popen must not wait for it again
    wall = time.perf_counter() - start
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, stopped


def report(title: str, rows: list[tuple[str, int, float, float, int, bool]]) -> None:
    print(f"\n{title}")
    print("| input | size | wall s | CPU s | peak MiB | size ratio | time ratio |")
    print("|---|---|---|---|---|---|---|")
    previous: tuple[int, float] | None = None
    for name, size, wall, cpu, memory, stopped in rows:
        ratios = "| - | - |"
        if previous is not None:
            ratios = f"| {size / previous[0]:.1f}x | {'>' if stopped else ''}{cpu / previous[1]:.2f}x |"
        mark = ">" if stopped else ""
        print(f"| {name} | {size:,} | {mark}{wall:.2f} | {mark}{cpu:.2f} | {memory} {ratios}")
        previous = (size, cpu)
    sys.stdout.flush()


def profile(text: str) -> None:
    from trainlint.config import Settings
    from trainlint.deep_stack import call_with_deep_stack
    from trainlint.engine import Linter

    linter = Linter(Settings(root=Path.cwd()))
    profiler = cProfile.Profile()

    def lint() -> None:  # profiled in the thread that does the work (the linter's deep stack)
        profiler.enable()
        linter.lint(text, "generated.py")
        profiler.disable()

    call_with_deep_stack(lint)
    print("\nFunctions with the most time of their own (largest training file):")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000", help="lines of the training files")
    parser.add_argument("--with-items", default="1000,5000", help="items of the one `with` statement")
    parser.add_argument("--profile", action="store_true", help="profile the largest training file")
    parser.add_argument("--timeout", type=float, default=600, help="stop one lint after this many seconds")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    items = [int(s) for s in args.with_items.split(",")]
    directory = Path(tempfile.mkdtemp(prefix="trainlint-size-"))
    try:
        rows = []
        for size in sizes:
            path = directory / f"train_{size}.py"
            path.write_text(training_file(size), encoding="utf-8")
            lines = path.read_text(encoding="utf-8").count("\n")
            rows.append((path.name, lines, *measure(path, args.timeout)))
        report("Training files (time ratio: CPU seconds against the previous size)", rows)
        rows = []
        for count in items:
            path = directory / f"with_{count}.py"
            path.write_text(autocast_with(count), encoding="utf-8")
            rows.append((path.name, count, *measure(path, args.timeout)))
        report("One `with` of N autocast items (size: N)", rows)
        if args.profile:
            profile(training_file(max(sizes)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
