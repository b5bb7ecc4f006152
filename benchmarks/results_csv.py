"""The benchmarks' result files: one CSV row per run, appended so a run can be stopped and
resumed (a rerun skips the rows already there), shared by several processes (shards)."""

from __future__ import annotations

import csv
import fcntl
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def append_row(path: Path, row: dict, fields: Sequence[str]) -> None:
    """One row, appended under an exclusive file lock (shards append to the same file),
    flushed and fsynced before the lock is released; the header first in a new file. Floats
    are written with 6 significant digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())


def done_keys(path: Path, key: Callable[[dict], tuple]) -> set[tuple]:
    """``key(row)`` of every row already in ``path`` (empty when there is no file yet)."""
    if not path.is_file():
        return set()
    with path.open() as f:
        return {key(r) for r in csv.DictReader(f)}
