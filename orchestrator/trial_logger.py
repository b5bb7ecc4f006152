"""The Tune callback that logs every trial to MLflow, from the driver (``TrialLogger``).

Three parts, one job each: :mod:`~orchestrator.tracking_writer` applies the operations to
MLflow on its own thread (with the outbox for outages), :mod:`~orchestrator.trial_table` keeps
the trials table and the front in memory and writes them at most every
``sweep.refresh_every_s`` seconds, and :mod:`~orchestrator.trial_artifacts` logs a finished
trial's files. This callback turns Tune's events into operations and ends the sweep (the
importances and the closing front: :mod:`~orchestrator.sweep_end`).

``Tuner.restore`` reuses the *pickled* callbacks: a logger pickles its settings only. Its live
parts (thread, table, run ids) belong to the process, one per sweep (:data:`_LIVE`): the
``--resume`` driver's own logger and Tune's unpickled copy share them, and they are read back
from MLflow once (the child runs listed, ``TrackingWriter.adopt``), so a resumed sweep neither
duplicates runs nor re-logs epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from orchestrator import sweep_end
from orchestrator._redact import redact
from orchestrator.outbox import plain_dict
from orchestrator.space import flatten_point
from orchestrator.teacher_job import stored_metrics
from orchestrator.tracking import METRICS, first_line
from orchestrator.tracking_writer import TrackingWriter
from orchestrator.trial_artifacts import checkpoint_uri, error_reason
from orchestrator.trial_table import TrialTable

RESULT_KEYS = METRICS + (
    "training_iteration",
    "timestamp",
    "failed",
    "error",
    "checkpoint_path",
    "phase",
)

# The real tracking URI by its redacted form: Tune pickles its callbacks into tuner.pkl (in the
# storage folder, maybe a bucket) with the redacted URI; --resume's driver makes its own logger
# (real URI) before Tuner.restore, so the unpickled one finds it here.
_URIS: dict[str, str] = {}
# The live parts of each sweep's logger in this process, by parent run id.
_LIVE: dict[str, TrackingWriter] = {}


class TrialLogger(Callback):
    """Tune callback (driver side): child runs per trial, Pareto artifacts on the parent."""

    RETRY_S = TrackingWriter.RETRY_S

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_dir: str,
        sweep_name: str,
        param_names: list[str],
        storage_uri: str = "",
        print_fronts: bool = True,
        refresh_every_s: float = 10.0,
        resume: bool = False,
    ) -> None:
        self.uri, self.parent_id, self.sweep_dir = uri, parent_id, sweep_dir
        _URIS[redact(uri)] = uri
        self.storage_uri = storage_uri
        # the front after every rebuild (-v); the compact console shows it once, timed
        self.print_fronts = print_fronts
        self.sweep_name, self.param_names = sweep_name, param_names
        self.refresh_every_s = refresh_every_s
        self._summary: dict | None = None
        _LIVE[self._key] = self._make_writer(adopted=not resume)  # a fresh sweep has no runs

    def __getstate__(self) -> dict:  # the live parts stay in the process (_LIVE)
        return {**self.__dict__, "_summary": None, "uri": redact(self.uri)}  # no password

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, uri=_URIS.get(state["uri"], state["uri"]))

    @property
    def _key(self) -> str:  # a parent run is one sweep (a new head may see another folder)
        return self.parent_id

    def _make_writer(self, adopted: bool) -> TrackingWriter:
        title = f"{self.sweep_name}: top-1 vs MACs"
        every = getattr(self, "refresh_every_s", 10.0)  # a logger pickled before the setting
        table = TrialTable(self.uri, self.parent_id, self.sweep_dir, title, every)
        return TrackingWriter(
            self.uri, self.parent_id, self.sweep_dir, self.sweep_name, self.param_names, table,
            self._rebuild, adopted=adopted,
        )  # fmt: skip

    @property
    def writer(self) -> TrackingWriter:
        if self._key not in _LIVE:  # unpickled with no driver logger of its own (a restore)
            _LIVE[self._key] = self._make_writer(adopted=False)
        return _LIVE[self._key]

    def _rebuild(self, final: bool = False) -> dict:
        self._summary = None  # a failed rebuild leaves summary() the local tables
        self._summary = self.writer.table.rebuild(self.teacher, self.print_fronts, final=final)
        return self._summary

    @property
    def teacher(self) -> dict | None:
        """The stored teacher's metrics (the tables' reference row); None while it trains."""
        return stored_metrics(self.sweep_dir)

    def log_teacher(self, metrics: dict) -> None:
        """The teacher's metrics on the parent run (buffered like any operation)."""
        self.submit({"op": "teacher", "metrics": plain_dict(metrics, tuple(metrics))})

    # ------------------------------------------------------------------ operations
    def _op(self, kind: str, trial=None, **fields: Any) -> dict:
        op: dict[str, Any] = {"op": kind, **fields}
        if trial is not None:
            op["trial"] = trial.trial_id
            op["config"] = plain_dict(flatten_point(trial.config), tuple(self.param_names))
        return op

    def submit(self, op: dict) -> None:
        """Apply ``op`` on the writer's thread, in submission order (``wait`` drains it)."""
        self.writer.submit(op)

    def wait(self) -> None:
        self.writer.wait()

    def pending_rebuilds(self) -> int:
        """Rebuilds of the tables waiting: at most one (finished trials mark it dirty)."""
        return int(self.writer.table.dirty)

    def rebuild_times(self) -> list[float]:
        return self.writer.table.times

    def flush(self, force: bool = True) -> bool:
        """Wait for the submitted operations, then replay the outbox in order, stopping at the
        first failure; True when it is empty."""
        self.submit({"op": "replay", "force": force, "warn": None})
        self.wait()
        return not self.writer.buffered

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """While records are buffered, retry every ``RETRY_S`` even when no trial reports;
        a dirty table is rebuilt when due, though no trial ends."""
        w = self.writer
        if w.next_try and time.monotonic() >= w.next_try:
            w.next_try = time.monotonic() + self.RETRY_S
            self.submit({"op": "replay"})
        if not w.tick_queued and w.table.due():
            w.tick_queued = True
            self.submit({"op": "tick"})

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("start", trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.submit(self._op("result", trial, result=plain_dict(result, RESULT_KEYS)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = plain_dict(trial.last_result or {}, RESULT_KEYS)
        where = checkpoint_uri(trial.checkpoint, getattr(self, "storage_uri", ""))
        self.submit(self._op("complete", trial, result=result, checkpoint=where))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("error", trial, reason=error_reason(trial)))

    def on_experiment_end(self, trials: list, **info) -> None:
        """Tune's whole trial list, once at the end (finished or interrupted). A trial Tune
        holds as finished whose child run is still open had its end lost with a killed driver
        (Tune snapshotted it, MLflow had not yet taken it; a resume never reports it again):
        its last result ends it now (``settle``). A child run of a trial Tune does not hold is
        one Tune lost (``TrackingWriter._mark_lost``)."""
        ended = [
            {
                "trial": t.trial_id,
                "result": plain_dict(t.last_result or {}, RESULT_KEYS),
                "checkpoint": checkpoint_uri(t.checkpoint, getattr(self, "storage_uri", "")),
            }
            for t in trials
            # it reported (a trial stopped before its first report, e.g. by a failed teacher,
            # has only Tune's bookkeeping in last_result and stays as its run ended)
            if t.status == "TERMINATED" and "training_iteration" in (t.last_result or {})
        ]
        self.submit({"op": "settle", "trials": ended})
        self.submit(self._op("lost", known=sorted(t.trial_id for t in trials)))

    # ------------------------------------------------------------------ the end
    def summary(self) -> dict:
        """The front for the closing line, the tables written once more if anything changed;
        from the local trials table when MLflow does not take them."""
        self.submit({"op": "rebuild"})
        self.wait()
        if self._summary is not None and not self.writer.buffered:
            return self._summary
        return sweep_end.local_summary(self.sweep_dir)

    def end_sweep(self, status: str, say: Callable[[str], None] = print) -> bool:
        """Replay what is buffered, log the parameter importances (lines to ``say``), then
        end the parent run; True when nothing is left over."""
        self.flush(force=True)
        self.submit({"op": "rebuild"})  # the tables hold every trial before the importances
        self.wait()
        try:  # insight, not bookkeeping: a failure here never costs the sweep's results
            for line in sweep_end.log_importance(self.uri, self.parent_id, self.sweep_dir):
                say(line)
        except Exception as err:  # any error, on purpose
            say(f"param importance: not computed ({first_line(err)})")
        self.submit(self._op("end_parent", status=status))
        self.wait()
        return not self.writer.buffered

    def unlogged(self) -> tuple[int, int]:
        """After :meth:`end_sweep`: (operations MLflow did not take, of them those that are in
        no outbox either: lost when the driver exits, as on a full disk)."""
        return self.writer.buffered, self.writer.persist_held()
