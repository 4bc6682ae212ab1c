"""Step-time overhead of trainlint's runtime monitor and of its CPU mapping, in one run.

    python benchmarks/monitor_overhead.py            # CPU, and the GPU when there is one
    python benchmarks/monitor_overhead.py --device cpu --blocks 7 --json out.json

Each workload runs in blocks of steps under each arrangement in turn: plain; under the monitor;
under the CPU mapping of CUDA code (the TorchFunctionMode that ``trainlint smoke --device cpu``
installs only for code that names CUDA devices); under both, as such a smoke run has them. The
order rotates every block, so a machine that speeds up or slows down during the run penalises
none of them, and the ratios of the median block times to the plain one are reported. A
monitored block includes starting the monitor and reading its record, so the batched host
synchronisation is paid inside the timing. The mapping is a CPU matter: on a GPU only the
monitor is measured.

Workloads are Transformer encoders trained with AdamW: on the CPU in float32 on one thread, a
small one (~0.5 M parameters) and a tiny one whose step is mostly Python, which exposes the
monitor's fixed cost per step; on a GPU a ~220 M parameter one with float16 autocast and a
GradScaler, the regime the <=1% target is about.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainlint.runtime import watch  # noqa: E402
from trainlint.runtime.cpu_mapping import CudaOnCpu  # noqa: E402

PLAIN, MONITOR, MAPPING, BOTH = "plain", "monitor", "mapping", "monitor+mapping"


@dataclass(frozen=True)
class Workload:
    name: str
    d_model: int
    layers: int
    seq: int
    batch: int
    vocab: int
    amp: bool


CPU_WORKLOAD = Workload("transformer-cpu", d_model=128, layers=2, seq=64, batch=8, vocab=1000, amp=False)
# So small that the step is mostly Python: shows the monitor's fixed cost per step, in ms.
TINY_WORKLOAD = Workload("tiny-cpu", d_model=32, layers=1, seq=8, batch=4, vocab=50, amp=False)
GPU_WORKLOAD = Workload("transformer-gpu", d_model=1024, layers=16, seq=512, batch=16, vocab=32000, amp=True)


class TinyLM(torch.nn.Module):
    def __init__(self, w: Workload) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(w.vocab, w.d_model)
        layer = torch.nn.TransformerEncoderLayer(w.d_model, nhead=8, dim_feedforward=4 * w.d_model, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, w.layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(w.d_model, w.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


def make_step(w: Workload, device: str) -> tuple[Callable[[], None], int]:
    """One training step of the workload, as a closure; and the model's parameter count."""
    torch.manual_seed(0)
    model = TinyLM(w).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=w.amp)
    tokens = torch.randint(0, w.vocab, (w.batch, w.seq), device=device)
    targets = torch.roll(tokens, -1, dims=1)

    def step() -> None:
        with torch.autocast(device, dtype=torch.float16, enabled=w.amp):
            logits = model(tokens)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, sum(p.numel() for p in model.parameters())


@contextmanager
def arrangement(name: str, steps: int) -> Iterator[None]:
    """The code around a block of steps: nothing, the monitor, the mapping, or both."""
    with ExitStack() as stack:
        if name in (MAPPING, BOTH):
            stack.enter_context(CudaOnCpu(map_devices=True))
        monitor = stack.enter_context(watch()) if name in (MONITOR, BOTH) else None
        yield
        if monitor is not None:
            assert len(monitor.record.steps) == steps  # reading the record is part of the cost


def time_block(step: Callable[[], None], steps: int, device: str, name: str) -> float:
    """Seconds per step over one block.

    On a GPU: wall time, the device synchronised only at the block's ends. On the CPU: this
    process's CPU time, which other processes competing for the cores do not inflate (measured
    on a shared 2-core machine, wall time varied by +-25% between identical blocks).
    """
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter if device == "cuda" else time.process_time
    synchronize()
    started = clock()
    with arrangement(name, steps):
        for _ in range(steps):
            step()
    synchronize()
    return (clock() - started) / steps


@dataclass
class Result:
    device: str
    device_name: str
    workload: str
    parameters: int
    steps_per_block: int
    blocks: int
    clock: str
    ms_per_step: dict[str, float] = field(default_factory=dict)  # arrangement -> median ms per step

    def ratio(self, name: str) -> float:
        return self.ms_per_step[name] / self.ms_per_step[PLAIN]


def measure(device: str, w: Workload, steps: int, blocks: int) -> Result:
    step, parameters = make_step(w, device)
    names = [PLAIN, MONITOR] if device == "cuda" else [PLAIN, MONITOR, MAPPING, BOTH]
    for _ in range(3):  # warm up: allocator, kernels, autotuning
        step()
    for name in names[1:]:
        time_block(step, 2, device, name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_block(step, steps, device, name))
    return Result(
        device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        workload=f"{w.name} ({'float16 autocast + GradScaler' if w.amp else 'float32'}, AdamW)",
        parameters=parameters,
        steps_per_block=steps,
        blocks=blocks,
        clock="wall" if device == "cuda" else "process cpu time",
        ms_per_step={name: statistics.median(t) * 1e3 for name, t in times.items()},
    )


def describe(result: Result) -> str:
    plain = result.ms_per_step[PLAIN]
    parts = [f"{plain:.3f} ms/step plain"]
    for name in list(result.ms_per_step)[1:]:
        ms = result.ms_per_step[name]
        parts.append(f"{name} {ms:.3f} ms/step, ratio {result.ratio(name):.4f} ({ms - plain:+.3f} ms/step)")
    return (
        f"{result.device_name}: {result.workload}, {result.parameters / 1e6:.2f} M parameters, "
        f"{result.blocks}x{result.steps_per_block} steps per arrangement, {result.clock}: " + "; ".join(parts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, and CUDA when available"
    )
    parser.add_argument("--blocks", type=int, default=6, help="blocks per arrangement (rotating)")
    parser.add_argument("--steps", type=int, default=0, help="steps per block (default: 10 on CPU, 50 on GPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [args.device] if args.device != "auto" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    runs = [(d, w) for d in devices for w in ([GPU_WORKLOAD] if d == "cuda" else [CPU_WORKLOAD, TINY_WORKLOAD])]
    for device, workload in runs:
        steps = args.steps or {"cuda": 50}.get(device, 20 if workload is CPU_WORKLOAD else 200)
        result = measure(device, workload, steps, args.blocks)
        results.append(result)
        print(describe(result))
    if args.json:
        meta = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
        args.json.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
