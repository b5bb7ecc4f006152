"""The sweep's MLflow writes, on their own thread, in order, with an outbox for outages.

Each Tune event becomes an *operation* (a JSON-safe dict naming the trial by id). One thread
applies them to MLflow in submission order, so Tune's loop never waits on MLflow, and tells the
:class:`~orchestrator.trial_table.TrialTable` what each one logged. When MLflow cannot be
reached the operation is appended to the :class:`~orchestrator.outbox.Outbox`; while it holds
anything, new operations queue behind it (a run is created before its metrics) and it is
replayed, compacted (``outbox.compact``), at most every ``RETRY_S`` seconds, at the end of the
sweep and by ``--resume``. A tracking failure never stops the sweep.

What an operation does in MLflow: :class:`~orchestrator.child_runs.ChildRuns`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from orchestrator import driver_output
from orchestrator.child_runs import ChildRuns
from orchestrator.outbox import Outbox, compact
from orchestrator.tracking import first_line
from orchestrator.trial_table import TrialTable


class TrackingWriter:
    """One thread applying operations in order; the outbox while MLflow is away."""

    RETRY_S = 10.0

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_dir: str,
        sweep_name: str,
        param_names: list[str],
        table: TrialTable,
        rebuild: Callable[..., object],
        *,
        adopted: bool,
    ) -> None:
        self.uri, self.parent_id, self.sweep_name = uri, parent_id, sweep_name
        self.param_names, self.table, self.rebuild = param_names, table, rebuild
        self.box = Outbox(sweep_dir)
        self.buffered = len(self.box.pending())  # read once; counted from here on
        self.held: list[dict] = []  # operations the outbox could not take (disk full)
        self.runs = ChildRuns(uri, parent_id, sweep_name, param_names, table, adopted=adopted)
        self.apply = self.runs.apply
        self.next_try = 0.0
        self.tick_queued = False
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the thread
    def submit(self, op: dict) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tracking", daemon=True)
            self._thread.start()
        self._queue.put(op)

    def wait(self) -> None:
        """Block until every submitted operation is applied to MLflow or buffered."""
        if self._thread is not None:
            done = threading.Event()
            self._queue.put(done)
            done.wait()

    def _loop(self) -> None:
        while True:
            op = self._queue.get()
            if isinstance(op, threading.Event):
                op.set()
                continue
            try:
                self._handle(op)
            except Exception as err:  # any error: the thread must outlive it
                driver_output.warn(f"tracking: {op.get('op')} not logged ({first_line(err)})")

    def _handle(self, op: dict) -> None:
        kind = op["op"]
        if kind == "replay":  # the retry timer (no new event needed), or a flush
            self.replay(force=op.get("force", True), warn=op.get("warn", False))
        elif kind == "tick":
            self.tick_queued = False
        elif kind == "rebuild":  # the end of the sweep: once more, if anything changed, with
            # every front mark left over (a bounded number per rebuild until now)
            if not self.buffered and (self.table.stale or not self.table.times):
                self.rebuild(final=True)
            return
        elif self.buffered:
            self._buffer(op)
            self.replay(force=False)
        else:
            try:
                self.apply(op)
            except Exception as err:  # any error: whatever MLflow raised: keep it for later
                self._buffer(op)
                self.next_try = time.monotonic() + self.RETRY_S
                driver_output.warn(
                    f"tracking: MLflow at {self.uri} failed ({first_line(err)}); buffering in "
                    f"{self.box.path}, replayed when it answers"
                )
        if not self.buffered and self.table.due():
            try:
                self.rebuild()
            except Exception:  # MLflow away between two operations: the next due one retries
                pass

    def _buffer(self, op: dict) -> None:
        """To the outbox; in memory, in order, while the disk refuses it (full): never lost
        without a word, and replayed all the same."""
        self.buffered += 1
        if not self.held:
            try:
                self.box.append(op)
                return
            except OSError as err:
                driver_output.warn(
                    f"tracking: cannot write {self.box.path} ({first_line(err)}); keeping "
                    "operations in memory until MLflow takes them"
                )
        self.held.append(op)

    def replay(self, force: bool = True, warn: bool | None = None) -> bool:
        """Replay the outbox, compacted, in order; on a failure keep what is left (the file
        is compacted to it). True when it is empty."""
        if not force and time.monotonic() < self.next_try:  # before reading the file: an
            return False  # operation buffered in an outage costs an append, not a read
        ops = self.box.pending() + self.held
        if not ops:
            self.buffered, self.next_try = 0, 0.0
            return True
        done: set[int] = set()
        try:
            for indices, op in compact(ops):
                self.apply(op)
                done.update(indices)
        except Exception as err:  # any error, on purpose
            left = [op for i, op in enumerate(ops) if i not in done]
            if done:  # compacted to what is left; nothing taken: the file stays as it is
                self._keep(left)
            self.buffered, self.next_try = len(left), time.monotonic() + self.RETRY_S
            if force if warn is None else warn:
                driver_output.warn(
                    f"tracking: MLflow at {self.uri} still failing ({first_line(err)}); "
                    f"{len(left)} operation(s) kept in {self.box.path}"
                )
            return False
        self._keep([])
        self.buffered, self.next_try = 0, 0.0
        driver_output.warn(
            f"tracking: MLflow at {self.uri} is back; replayed {len(ops)} buffered operation(s)"
        )
        return True

    def persist_held(self) -> int:
        """At the end: the operations held in memory (the disk refused them) go to the outbox
        once more, the file rewritten whole with them; the number still only in memory, which
        the driver's exit loses (the sweep reports it and exits non-zero)."""
        if self.held:
            self._keep(self.box.pending() + self.held)
        return len(self.held)

    def _keep(self, left: list[dict]) -> None:
        """The outbox compacted to ``left``; if the disk refuses, all of it stays as it was
        (a replayed operation applied twice changes nothing)."""
        try:
            self.box.replace(left)
            self.held = []
        except OSError:
            pass
