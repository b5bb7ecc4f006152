"""Tracking operations MLflow could not take, kept on disk and replayed in order.

A tracking server that goes away for a while (a restart, a network partition, the head's disk
full) must cost no trial and lose no record: the sweep goes on, and every operation the
driver could not log is appended here, in the sweep's storage directory, to be replayed when
the server answers again, at the end of the sweep, or by ``--resume`` (possibly days later,
from another process: hence disk, not memory).

The file is JSON lines, one operation each, and is only ever replaced whole (temporary file,
fsync, ``os.replace``), so a driver killed mid-write leaves the previous version, never a torn
one. Operations name trials by ``trial_id``, not by MLflow run id, because the child run may
not exist yet when the server is down; replay creates it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

OUTBOX = "tracking-outbox.jsonl"
# sweep.json and the outbox name the tracking server, the runs and the trials' settings: they
# are created readable by their owner only; the rest of a sweep folder follows the umask
PRIVATE = 0o600


def _plain(value: Any) -> Any:
    """JSON-safe scalars only (results also hold numpy values, dicts of configs, ...)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return None


def plain_dict(values: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {
        k: p
        for k, v in values.items()
        if (keys is None or k in keys) and (p := _plain(v)) is not None
    }


class Outbox:
    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / OUTBOX

    def pending(self) -> list[dict]:
        """The buffered operations; a line that does not parse (never written by us) is dropped."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        ops = []
        for line in text.splitlines():
            try:
                ops.append(json.loads(line))
            except ValueError:
                continue
        return ops

    def append(self, op: dict) -> None:
        self.replace(self.pending() + [op])

    def replace(self, ops: list[dict]) -> None:
        if not ops:
            self.path.unlink(missing_ok=True)
            return
        write_atomic(self.path, "".join(json.dumps(op) + "\n" for op in ops), mode=PRIVATE)


def write_atomic(path: str | Path, data: str | bytes, mode: int | None = None) -> None:
    """Write a whole file or nothing: temp name in the same directory, fsync, rename; with
    ``mode`` (e.g. :data:`PRIVATE`) the file never exists with another one, else the umask's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with open(fd, "wb") as f:
        if mode is not None:
            os.fchmod(fd, mode)  # a leftover temporary file keeps its old mode through O_CREAT
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
