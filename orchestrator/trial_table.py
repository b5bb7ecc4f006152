"""The sweep's trials table and Pareto front, kept in memory and written at most every few seconds.

Every trial's row is updated from what the driver logs to its child run (``TrialTable.started``,
``.reported``, ``.finished``), so the table is MLflow's view without reading MLflow: no listing
of every child run per finished trial (5.8 s at 1,000 runs). A finished trial marks the table
*dirty*; :meth:`TrialTable.rebuild` rewrites ``trials.parquet``, ``pareto.parquet``,
``pareto.png`` and the previews (``pareto.csv``, ``pareto.html``), uploads them to the parent
run, logs the front's ``hypervolume`` (step: finished trials) and brings the child runs'
``pareto_front`` / ``pareto_rank`` up to date (:mod:`~orchestrator.front_marks`: only the runs
whose marks changed, a bounded number per rebuild), and runs when :meth:`TrialTable.due`:
dirty (or marks left over), and ``every_s`` seconds after the
last rebuild (``sweep.refresh_every_s``; or ten times that rebuild's duration, if longer), so
any number of completions in between costs one rebuild; the driver asks for one more at the
end. The last hypervolume step is kept here too.

After ``Tuner.restore`` (``--resume``) the table is read back from MLflow once
(:meth:`TrialTable.load`, with the child runs the writer adopts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa

from orchestrator import pareto
from orchestrator.front_marks import PER_REBUILD, FrontMarks
from orchestrator.mlflow_names import STATUS_TAG, is_lost, tune_metrics
from orchestrator.tracking import METRICS, as_number, client, row, trial_row

ENDED = ("TERMINATED", "ERROR")


class TrialTable:
    """Rows by trial id, the front, and when to write them (module doc)."""

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_dir: str,
        title: str,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri, self.parent_id, self.sweep_dir, self.title = uri, parent_id, sweep_dir, title
        self.every_s, self.clock = every_s, clock
        self._rows: dict[str, dict] = {}  # trial id -> {status, metrics, params, run_id, error}
        self.dirty = False
        self._last = -float("inf")  # clock() of the last rebuild
        self.hv_step = 0  # the last finished-trial count the hypervolume was logged at
        self.times: list[float] = []  # seconds per rebuild
        self.marks = FrontMarks()  # the child runs' pareto_front / pareto_rank

    # ------------------------------------------------------------------ what was logged
    def load(self, runs: list) -> None:
        """Rows of the child runs already in MLflow and the last hypervolume step (a restore)."""
        for run in runs:
            if is_lost(run.data.tags.get(STATUS_TAG)):
                continue
            r = trial_row(run)
            self._rows[r["trial_id"]] = {
                "status": r["status"],
                "metrics": tune_metrics(run.data.metrics),
                "params": dict(run.data.params),
                "run_id": run.info.run_id,
                "error": r["error"],
            }
            self.marks.load(r["trial_id"], run.data.tags, run.data.metrics)
        history = client(self.uri).get_metric_history(self.parent_id, "hypervolume")
        self.hv_step = max((m.step for m in history), default=0)
        self.dirty = True

    def started(self, tid: str, run_id: str, params: dict[str, str]) -> None:
        row_ = self._rows.setdefault(tid, {"metrics": {}, "error": None})
        row_.update(status="RUNNING", run_id=run_id, params=params)

    def reported(self, tid: str, result: dict) -> None:
        metrics = self._rows[tid]["metrics"]
        for k in METRICS + ("training_iteration",):
            if (v := as_number(result.get(k))) is not None:
                metrics[k] = v

    def finished(self, tid: str, status: str, error: str | None) -> None:
        """``tid`` ended with Tune's ``status``; its run's end wrote ``pareto_front = false``
        (``child_runs``): the rebuild writes ``true`` if it is on the front."""
        self._rows[tid]["status"] = status
        if error:
            self._rows[tid]["error"] = error
        self.marks.ended(tid)
        self.dirty = True

    def lost(self, tid: str) -> None:
        self._rows.pop(tid, None)
        self.marks.forget(tid)
        self.dirty = True

    def running(self) -> dict[str, str]:
        """Trial id -> run id of the child runs still RUNNING."""
        return {t: r["run_id"] for t, r in self._rows.items() if r["status"] == "RUNNING"}

    # ------------------------------------------------------------------ the tables
    def rows(self) -> list[dict]:
        """The rows of ``trials.parquet``, by trial id."""
        return [
            row(t, r["status"], r["metrics"], r["params"], r["run_id"], r["error"])
            for t, r in sorted(self._rows.items())
        ]

    def table(self) -> pa.Table:
        return pareto.trials_table(self.rows())

    def due(self) -> bool:
        """Dirty (or front marks left over), and ``every_s`` after the last rebuild began, or
        ten times as long as that rebuild took if longer: rebuilding never takes more than a
        tenth of the driver's time, however long the table (or however loaded the machine)
        grows."""
        wait = max(self.every_s, 10 * self.times[-1]) if self.times else self.every_s
        return self.stale and self.clock() >= self._last + wait

    @property
    def stale(self) -> bool:
        """Whether MLflow lacks something of the table: new rows, or front marks."""
        return self.dirty or self.marks.backlog > 0

    def rebuild(self, teacher: dict | None, print_front: bool = False, final: bool = False) -> dict:
        """Write the tables and plot, upload them, log the hypervolume (when rows changed),
        then the child runs' front marks (all of them when ``final``); the summary."""
        t0 = time.perf_counter()
        tables = self.dirty or not self.times
        self.dirty, self._last = False, self.clock()
        try:
            rows = self.rows()
            table = pareto.trials_table(rows)
            front = pareto.front_table(table)  # O(n log n), milliseconds at 1,000
            hv = pareto.front_hypervolume(front)
            finished = sum(1 for r in self._rows.values() if r["status"] in ENDED)
            c = client(self.uri)
            if tables:
                paths = pareto.write_tables(
                    table, self.sweep_dir, teacher=teacher, title=self.title
                )
                for path in paths.values():
                    c.log_artifact(self.parent_id, str(path))
            if finished > self.hv_step:  # once per trial count
                c.log_metric(self.parent_id, "hypervolume", hv, step=finished)
                c.log_metric(self.parent_id, "front_size", front.num_rows, step=finished)
                self.hv_step = finished
            self.marks.write(c, rows, step=finished, limit=None if final else PER_REBUILD)
        except BaseException:
            self.dirty = True  # the next due rebuild tries again
            raise
        finally:
            self.times.append(time.perf_counter() - t0)
        if print_front:
            pareto.print_front(
                front,
                teacher=teacher,
                title=f"Pareto front after {finished} trials (hypervolume {hv:.4f})",
            )
        return {"hypervolume": hv, "finished": finished, "front": front}
