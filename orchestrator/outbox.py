"""Tracking operations MLflow could not take, kept on disk and replayed in order.

A tracking server that goes away for a while (a restart, a network partition, the head's disk
full) must cost no trial and lose no record: the sweep goes on, and every operation the
driver could not log is appended here, in the sweep's storage directory, to be replayed when
the server answers again, at the end of the sweep, or by ``--resume`` (possibly days later,
from another process: hence disk, not memory).

The file is JSON lines, one operation each, **appended** (``O_APPEND``, one ``write`` and an
fsync per operation: constant cost, however long the outage; rewriting it whole per operation
made a 10,000-operation outage cost an hour). A driver killed mid-append leaves a torn last line:
it is never parsed as an operation, and the next append starts on a line of its own. Replay
reads the file once, and :meth:`Outbox.replace` compacts it: the operations still to replay
are written whole, atomically (``atomic_write``), or the file is removed. It is created
readable by its owner only (:data:`PRIVATE`). Operations name trials by ``trial_id``, not by
MLflow run id, because the child run may not exist yet when the server is down; replay
creates it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from orchestrator._atomic import atomic_write

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
        """The buffered operations; a line that does not parse (torn by a kill) is dropped."""
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
        """One more operation, on disk (fsynced) when this returns."""
        line = (json.dumps(op) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, PRIVATE)
        try:
            os.fchmod(fd, PRIVATE)  # an outbox of an older driver may have the umask's mode
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line: end it first
                line = b"\n" + line
            while line:  # one write for a regular file; the loop only for a short one
                line = line[os.write(fd, line) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, ops: list[dict]) -> None:
        """Compact: the file becomes ``ops`` (atomically), or goes when there are none."""
        if not ops:
            self.path.unlink(missing_ok=True)
            return
        atomic_write(self.path, "".join(json.dumps(op) + "\n" for op in ops), mode=PRIVATE)


def compact(ops: list[dict]) -> list[tuple[list[int], dict]]:
    """The operations to replay, fewer: ``(indices in ops, operation)``. A trial's operations
    (start, results, its end) become one, emitted where its end was (or before the next
    operation on the whole sweep, or last): one MLflow batch for its params, every epoch's
    metrics and its end tags, instead of a call per operation. Each trial's own order and
    every trial's place before the teacher, lost trials and the parent's end are kept; the
    tables' rebuild requests of an older driver become one, at the end."""
    out: list[tuple[list[int], dict]] = []
    held: dict[str, tuple[list[int], dict]] = {}  # trial -> its operations so far, merged
    refresh: list[int] = []

    def emit(trial: str) -> None:
        if trial in held:
            out.append(held.pop(trial))

    for i, op in enumerate(ops):
        trial = op.get("trial")
        if op["op"] == "refresh":
            refresh.append(i)
            continue
        if trial is None:  # the teacher, lost trials, the parent's end: after everything before
            for t in list(held):
                emit(t)
            out.append(([i], op))
            continue
        indices, merged = held.setdefault(
            trial, ([], {"op": "start", "trial": trial, "config": {}, "results": []})
        )
        indices.append(i)
        merged["config"] = op.get("config") or merged["config"]
        if op["op"] == "result":
            merged["results"].append(op["result"])
        elif op["op"] in ("complete", "error"):
            merged.update({k: v for k, v in op.items() if k not in ("config", "trial")})
            emit(trial)
    for t in list(held):
        emit(t)
    if refresh:
        out.append((refresh, {"op": "refresh"}))
    return out
