"""Several processes (torchrun): each rank records, rank 0 reports every rank.

Ranks other than 0 write their record as JSON into a folder the ranks of one job share; rank 0
reads them, deletes them, and removes the folder when it made it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from trainlint.runtime.records import Record
from trainlint.runtime.report import HealthReport, format_number, summarize

_ENV_DIR = "TRAINLINT_RANK_DIR"


def launched_ranks() -> tuple[int, int]:
    """(rank, world size) given by a launcher such as torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _rank_dir() -> Path:
    """A folder the ranks of one torchrun job share (same node), and no other job does."""
    if _ENV_DIR in os.environ:
        return Path(os.environ[_ENV_DIR])
    job = "-".join(os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
    return Path(tempfile.gettempdir()) / f"trainlint-ranks-{job}-{os.getppid()}".replace(":", "_")


def share_with_rank_zero(record: Record, label: str) -> None:
    """Write this rank's record where rank 0 will read it."""
    rank, _ = launched_ranks()
    directory = _rank_dir()
    target = directory / f"{label}.rank{rank}.json"
    partial = target.with_suffix(".tmp")
    for _ in range(20):  # rank 0 may remove the (empty) folder just as we create it
        try:
            directory.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(record.to_json()))
            partial.replace(target)  # atomic: rank 0 never reads half a file
            return
        except FileNotFoundError:
            time.sleep(0.05)


def collect_other_ranks(label: str, timeout_s: float = 60.0) -> list[tuple[int, Record | None]]:
    """On rank 0: every other rank's record (None if it never came), read and deleted."""
    _, world = launched_ranks()
    directory = _rank_dir()
    deadline = time.monotonic() + timeout_s
    records: list[tuple[int, Record | None]] = []
    for rank in range(1, world):
        path = directory / f"{label}.rank{rank}.json"
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not path.exists():
            records.append((rank, None))
            continue
        records.append((rank, Record.from_json(json.loads(path.read_text()))))
        path.unlink()
    if _ENV_DIR not in os.environ:
        try:
            directory.rmdir()  # ours, and empty unless another label is on its way
        except OSError:
            pass
    return records


def add_ranks_to_report(report: HealthReport, others: list[tuple[int, Record | None]], timeout_s: float = 60.0) -> None:
    """Rank 0's report gains a line per rank; it is unhealthy if any rank is."""
    report.other_ranks.append(_rank_line(0, report))
    for rank, record in others:
        if record is None:
            report.other_ranks.append(f"rank {rank}: no record after {timeout_s:g} s")
            continue
        other = summarize(record)
        report.other_ranks.append(_rank_line(rank, other))
        if not other.healthy:
            report.reasons.append(f"rank {rank} is unhealthy: {'; '.join(other.reasons)}")
            report.verdict = "unhealthy"


def _rank_line(rank: int, report: HealthReport) -> str:
    return (
        f"rank {rank}: {report.verdict}, {report.steps_run} steps, "
        f"loss {format_number(report.loss_first)} -> {format_number(report.loss_last)}, "
        f"grad norm max {format_number(report.grad_norm['max'])}"
    )
