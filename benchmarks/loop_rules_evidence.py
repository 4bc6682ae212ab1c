"""The numbers on the pages of the loop rules (TL206, TL404-TL408), measured on this machine's CPU.

    python benchmarks/loop_rules_evidence.py [TL404 ...]

Each measurement is a small reproduction of the rule's anti-pattern next to its fix, run in a
process of its own (so that one's memory does not count in another's), and prints one line per
number. It needs torch (the runtime extra); the linter never imports it.

- TL206: a double sigmoid (`BCEWithLogitsLoss(sigmoid(x))`) against the logits: final loss on a
  separable problem, and the gradient of a confidently wrong prediction.
- TL404: test accuracy of an MLP with batch norm and dropout whose epochs end with a validation
  that leaves it in eval mode, against `model.train()` at the top of each epoch (mean of 3 seeds).
- TL405: the autograd graph (nodes reachable from the total) and the process's resident memory
  per iteration with `total += loss`, against `total += loss.item()`; and with a second loss kept
  that is never backpropagated.
- TL406: resident memory per batch of an evaluation that keeps its outputs, with and without
  `torch.no_grad()`.
- TL407: the length of the first update with 8 micro-batches accumulated undivided and divided,
  relative to the update of the whole batch.
- TL408: two gloo processes: the share of rank 0's samples that rank 1 also sees in an epoch with
  a plain shuffling `DataLoader` and with a `DistributedSampler`; and whether epochs repeat their
  order without `set_epoch`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    """Resident memory of this process in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _graph_size(tensor) -> int:  # type: ignore[no-untyped-def]
    """Autograd nodes reachable from a tensor's grad_fn."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


# -- the measurements, each run in a child process -------------------------------------------------
def tl206() -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(2000, 20)
    y = (x @ torch.randn(20) > 0).float()
    results = {}
    for name, double in (("double_sigmoid", True), ("logits", False)):
        torch.manual_seed(1)
        model = torch.nn.Linear(20, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(300):
            logits = model(x).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(torch.sigmoid(logits) if double else logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            results[f"{name}_final_loss"] = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y).item()
    for name, double in (("double_sigmoid", True), ("logits", False)):
        logit = torch.tensor([-10.0], requires_grad=True)
        F.binary_cross_entropy_with_logits(torch.sigmoid(logit) if double else logit, torch.ones(1)).backward()
        results[f"{name}_grad_at_-10"] = logit.grad.item()  # type: ignore[union-attr]
    return results


def tl404() -> dict[str, float]:
    """Few noisy examples (512, 256 features of which 16 carry the class), where dropout and batch
    norm matter: an MLP of width 512 with both, SGD with momentum, 40 epochs of batches of 32."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)

    def data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        centers = torch.randn(10, 16, generator=torch.Generator().manual_seed(7))
        labels = torch.randint(0, 10, (n,), generator=generator)
        x = torch.randn(n, 256, generator=generator)
        x[:, :16] += centers[labels]
        return x, labels

    def run(seed: int, restore: bool) -> float:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        train_x, train_y = data(512, generator)
        test_x, test_y = data(4000, generator)
        model = nn.Sequential(
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for epoch in range(40):
            if restore:
                model.train()
            for batch in torch.randperm(512, generator=generator).split(32):
                optimizer.zero_grad()
                F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
                optimizer.step()
            model.eval()  # validate(model) at the end of the epoch
        with torch.no_grad():
            return (model(test_x).argmax(1) == test_y).float().mean().item()

    seeds = (0, 1, 2)
    left = [run(s, restore=False) for s in seeds]
    restored = [run(s, restore=True) for s in seeds]
    return {"eval_left_on_accuracy": sum(left) / 3, "train_restored_accuracy": sum(restored) / 3}


def _mlp(depth: int, width: int):  # type: ignore[no-untyped-def]
    import torch.nn as nn

    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def tl405(variant: str) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = _mlp(16, 256)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 256), torch.randn(128, 1)
    total: object = 0.0
    kept = []
    samples = []
    for step in range(300):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if variant == "graph":
            total = total + loss  # type: ignore[operator]
        elif variant == "item":
            total = total + loss.item()  # type: ignore[operator]
        else:  # a second loss kept for logging, never backpropagated
            kept.append(F.l1_loss(model(x), y))
        if step >= 100:
            samples.append(_rss())
    growth = (samples[-1] - samples[0]) / (len(samples) - 1)
    nodes = _graph_size(total) if isinstance(total, torch.Tensor) else 0
    return {"rss_bytes_per_iteration": growth, "graph_nodes_after_300": nodes}


def tl406(no_grad: bool) -> dict[str, float]:
    import contextlib

    import torch

    torch.manual_seed(0)
    model = _mlp(8, 1024)
    model.eval()
    outputs = []
    samples = []
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for _ in range(50):
            outputs.append(model(torch.randn(256, 1024)))
            samples.append(_rss())
    return {"rss_bytes_per_batch": (samples[-1] - samples[5]) / (len(samples) - 6)}


def tl407() -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, y = torch.randn(256, 16), torch.randn(256, 1)
    updates = {}
    for name, accumulate, divide in (("full_batch", False, False), ("undivided", True, False), ("divided", True, True)):
        torch.manual_seed(1)
        model = torch.nn.Linear(16, 1)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        optimizer.zero_grad()
        if accumulate:
            for xs, ys in zip(x.split(32), y.split(32)):
                loss = F.mse_loss(model(xs), ys)
                (loss / 8 if divide else loss).backward()
        else:
            F.mse_loss(model(x), y).backward()
        optimizer.step()
        updates[name] = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before))).item()
    return {
        "undivided_over_full_batch": updates["undivided"] / updates["full_batch"],
        "divided_over_full_batch": updates["divided"] / updates["full_batch"],
    }


def _tl408_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dataset = TensorDataset(torch.arange(1000))
    seen: dict[str, list[list[int]]] = {}
    for name in ("plain", "sampler", "sampler_no_set_epoch"):
        torch.manual_seed(0)  # the same seed on every rank, as scripts set it
        sampler = DistributedSampler(dataset) if name != "plain" else None
        loader = DataLoader(dataset, batch_size=50, shuffle=sampler is None, sampler=sampler)
        epochs = []
        for epoch in range(3):
            if name == "sampler":
                sampler.set_epoch(epoch)  # type: ignore[union-attr]
            epochs.append([int(i) for (batch,) in loader for i in batch])
        seen[name] = epochs
    with open(f"{out}.rank{rank}", "w") as handle:
        json.dump(seen, handle)
    dist.destroy_process_group()


def tl408() -> dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tempfile.mktemp(prefix="tl408-")
    mp.spawn(_tl408_rank, args=(2, port, out), nprocs=2, join=True)
    ranks = []
    for rank in (0, 1):
        with open(f"{out}.rank{rank}") as handle:
            ranks.append(json.load(handle))
        os.unlink(f"{out}.rank{rank}")
    results = {}
    for name in ("plain", "sampler"):
        first, second = ranks[0][name][0], ranks[1][name][0]
        results[f"{name}_shared_fraction"] = len(set(first) & set(second)) / len(set(first))
        results[f"{name}_same_order"] = float(first == second)
    for name in ("sampler", "sampler_no_set_epoch"):
        epochs = ranks[0][name]
        results[f"{name}_epochs_repeat"] = float(epochs[0] == epochs[1] == epochs[2])
    return results


MEASUREMENTS = {
    "TL206": [("", tl206)],
    "TL404": [("", tl404)],
    "TL405": [("total += loss", lambda: tl405("graph")), ("total += loss.item()", lambda: tl405("item")),
              ("second loss kept, not backpropagated", lambda: tl405("kept"))],
    "TL406": [("without no_grad", lambda: tl406(False)), ("with no_grad", lambda: tl406(True))],
    "TL407": [("", tl407)],
    "TL408": [("", tl408)],
}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        code, index = sys.argv[2], int(sys.argv[3])
        print(json.dumps(MEASUREMENTS[code][index][1]()))
        return
    codes = [c.upper() for c in sys.argv[1:]] or list(MEASUREMENTS)
    for code in codes:
        for index, (label, _) in enumerate(MEASUREMENTS[code]):
            run = subprocess.run([sys.executable, __file__, "--child", code, str(index)], capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{code} {label}: failed\n{run.stderr}")
                continue
            numbers = json.loads(run.stdout.strip().splitlines()[-1])
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in numbers.items())
            print(f"{code}{' ' + label if label else ''}: {shown}", flush=True)


if __name__ == "__main__":
    main()
