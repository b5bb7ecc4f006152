"""The Tune callback that logs every trial to MLflow, from the driver (``TrialLogger``).

Why no in-memory state: ``Tuner.restore`` reuses the *pickled* callbacks, so anything held in
memory is lost or stale after a restore. The callback therefore keeps only the URI and run ids;
a trial's child run is found again by its ``trial_id`` tag, and the last logged iteration is
read back from the run, so a resumed sweep neither duplicates runs nor re-logs epochs.

After every finished trial the parent's ``trials.parquet``, ``pareto.parquet`` and
``pareto.png`` are rebuilt from the child runs and the ``hypervolume`` is logged with the
number of finished trials as its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from mlflow.entities import Metric, Param
from ray.tune import Callback

from orchestrator import driver_output, importance, pareto
from orchestrator._redact import redact
from orchestrator.outbox import Outbox, plain_dict
from orchestrator.space import flatten_point
from orchestrator.teacher_job import stored_metrics
from orchestrator.tracking import (
    LOST,
    LOST_REASON,
    METRICS,
    PARENT_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    as_number,
    children,
    client,
    end_parent,
    first_line,
    log_teacher,
    trial_rows,
)
from orchestrator.trial_artifacts import checkpoint_uri, error_reason, log_trial_artifacts

RESULT_KEYS = METRICS + (
    "training_iteration",
    "timestamp",
    "failed",
    "error",
    "checkpoint_path",
    "phase",
)


def _warn(message: str) -> None:
    driver_output.warn(message)  # the terminal, also while Ray's output goes to ray.log


# The real tracking URI by its redacted form: Tune pickles its callbacks into tuner.pkl (in the
# storage folder, maybe a bucket) with the redacted URI; --resume's driver makes its own logger
# (real URI) before Tuner.restore, so the unpickled one finds it here.
_URIS: dict[str, str] = {}


class TrialLogger(Callback):
    """Tune callback (driver side): child runs per trial, Pareto artifacts on the parent.

    Every callback becomes an *operation* (a JSON-safe dict naming the trial by id) that is
    applied to MLflow on the logger's own thread, in order, so Tune's loop never waits on
    MLflow (it was ~1 s per finished trial: tables, plot, artifacts), or, when MLflow cannot
    be reached, appended to the sweep's
    :class:`~orchestrator.outbox.Outbox`. While the outbox holds anything, new operations queue
    behind it (order matters: a run is created before its metrics) and the outbox is replayed
    at most every ``RETRY_S`` seconds, at the end of the sweep and by ``--resume``. A tracking
    failure therefore never stops the sweep (an exception in a Tune callback would).
    """

    RETRY_S = 10.0

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_dir: str,
        sweep_name: str,
        param_names: list[str],
        storage_uri: str = "",
        print_fronts: bool = True,
    ) -> None:
        self.uri, self.parent_id, self.sweep_dir = uri, parent_id, sweep_dir
        _URIS[redact(uri)] = uri
        self.storage_uri = storage_uri
        # the front after every finished trial (-v); the compact console shows it once, timed
        self.print_fronts = print_fronts
        self.sweep_name, self.param_names = sweep_name, param_names
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._next_try = 0.0
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:  # caches are rebuilt from MLflow after a restore
        cleared = {"_runs": {}, "_last_step": {}, "_next_try": 0.0, "_pool": None}
        return {**self.__dict__, **cleared, "uri": redact(self.uri)}  # no password: _URIS

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, uri=_URIS.get(state["uri"], state["uri"]))

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
        """Apply ``op`` on the logger's own thread, in submission order: Tune's event loop
        (which starts the next trial) never waits on MLflow. ``wait`` drains the queue."""
        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracking")
        self._pool.submit(self._submit_now, op)

    def wait(self) -> None:
        """Block until every submitted operation is applied to MLflow or buffered."""
        if getattr(self, "_pool", None) is not None:
            self._pool.submit(lambda: None).result()

    def _submit_now(self, op: dict) -> None:
        if op["op"] == "replay":  # the retry timer of on_step_end: no new event needed
            self._flush(force=True, warn=False)
            return
        box = Outbox(self.sweep_dir)
        if box.pending():
            box.append(op)
            self._flush(force=False)
            return
        try:
            self._apply(op)
        except Exception as err:  # any error: whatever MLflow raised: keep it for later
            box.append(op)
            self._next_try = time.monotonic() + self.RETRY_S
            _warn(
                f"tracking: MLflow at {self.uri} failed ({first_line(err)}); buffering in "
                f"{box.path}, replayed when it answers"
            )

    def flush(self, force: bool = True) -> bool:
        """Wait for the submitted operations, then replay the outbox in order, stopping at the
        first failure; True when it is empty."""
        self.wait()
        return self._flush(force)

    def _flush(self, force: bool = True, warn: bool | None = None) -> bool:
        box = Outbox(self.sweep_dir)
        ops = box.pending()
        if not ops:
            self._next_try = 0.0
            return True
        if not force and time.monotonic() < getattr(self, "_next_try", 0.0):
            return False
        last_refresh = max((i for i, op in enumerate(ops) if op["op"] == "refresh"), default=-1)
        done = 0
        try:
            for i, op in enumerate(ops):
                if op["op"] != "refresh" or i == last_refresh:  # one rebuild is enough
                    self._apply(op)
                done = i + 1
        except Exception as err:  # any error, on purpose
            box.replace(ops[done:])
            self._next_try = time.monotonic() + self.RETRY_S
            if force if warn is None else warn:
                _warn(
                    f"tracking: MLflow at {self.uri} still failing ({first_line(err)}); "
                    f"{len(ops) - done} operation(s) kept in {box.path}"
                )
            return False
        box.replace([])
        self._next_try = 0.0
        _warn(f"tracking: MLflow at {self.uri} is back; replayed {len(ops)} buffered operation(s)")
        return True

    def _apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "refresh":
            self.refresh()
            return
        if kind == "teacher":
            log_teacher(self.uri, self.parent_id, op["metrics"])
            return
        if kind == "end_parent":
            end_parent(self.uri, self.parent_id, op["status"])
            return
        if kind == "lost":
            if self._mark_lost(set(op["known"])):
                self.refresh()  # the tables leave them out
            return
        run_id = self._run_id(op["trial"], op.get("config", {}))
        if kind in ("result", "complete"):
            self._log_result(op["trial"], run_id, op["result"])
        if kind == "complete":
            log_trial_artifacts(self.uri, run_id, op.get("checkpoint"), op["result"])
            failed = op["result"].get("failed")
            self._finish(
                run_id,
                "FAILED" if failed else "FINISHED",
                "ERROR" if failed else "TERMINATED",
                op["result"].get("error"),
            )
        elif kind == "error":
            self._finish(run_id, "FAILED", "ERROR", op.get("reason"))

    # ------------------------------------------------------------------ child runs
    def _run_id(self, tid: str, config: dict) -> str:
        if tid in self._runs:
            return self._runs[tid]
        c = client(self.uri)
        exp_id = c.get_run(self.parent_id).info.experiment_id
        found = c.search_runs(
            [exp_id],
            filter_string=(
                f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{TRIAL_TAG} = '{tid}'"
            ),
        )
        if found:
            run = found[0]
            self._last_step[tid] = int(run.data.metrics.get("training_iteration", 0))
            if run.info.status != "RUNNING":
                c.update_run(run.info.run_id, status="RUNNING")
            if not run.data.params:  # created just before an outage cut the params off
                self._log_params(run.info.run_id, config)
        else:
            run = c.create_run(
                exp_id,
                run_name=f"{self.sweep_name}-{tid}",
                tags={
                    PARENT_TAG: self.parent_id,
                    TRIAL_TAG: tid,
                    SWEEP_TAG: self.sweep_name,
                    "trial_status": "RUNNING",
                },
            )
            self._log_params(run.info.run_id, config)
            self._last_step[tid] = 0
        self._runs[tid] = run.info.run_id
        return run.info.run_id

    def _log_params(self, run_id: str, config: dict) -> None:

        params = [Param(k, str(config[k])) for k in self.param_names if k in config]
        if params:
            client(self.uri).log_batch(run_id, params=params)

    def _log_result(self, tid: str, run_id: str, result: dict) -> None:

        step = int(result.get("training_iteration", 0))
        if step <= self._last_step.get(tid, 0):  # logged before a restore (or a replay)
            return
        stamp = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(k, v, stamp, step)
            for k in METRICS + ("training_iteration",)
            if (v := as_number(result.get(k))) is not None
        ]
        if metrics:
            client(self.uri).log_batch(run_id, metrics=metrics)
        self._last_step[tid] = step

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """While records are buffered, retry every ``RETRY_S`` even when no trial reports:
        the server's return is then caught mid-sweep, not only at the end."""
        if getattr(self, "_next_try", 0.0) and time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self.RETRY_S
            self.submit({"op": "replay"})

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("start", trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.submit(self._op("result", trial, result=plain_dict(result, RESULT_KEYS)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = plain_dict(trial.last_result or {}, RESULT_KEYS)
        self.submit(
            self._op(
                "complete",
                trial,
                result=result,
                checkpoint=checkpoint_uri(trial.checkpoint, getattr(self, "storage_uri", "")),
            )
        )
        self.submit(self._op("refresh"))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("error", trial, reason=error_reason(trial)))
        self.submit(self._op("refresh"))

    def on_experiment_end(self, trials: list, **info) -> None:
        """Tune's whole trial list, once at the end (finished or interrupted): a child run of
        a trial it does not hold is one Tune lost (see :meth:`_mark_lost`)."""
        self.submit(self._op("lost", known=sorted(t.trial_id for t in trials)))

    def _mark_lost(self, known: set[str]) -> int:
        """End, as KILLED with ``trial_status = LOST``, every running child run whose trial
        Tune does not hold. A driver killed between a trial's start and Tune's next snapshot
        of its state leaves such a run: ``--resume`` restores the older snapshot, which never
        saw that trial, so Tune will not finish it (the searcher samples again in its place).
        The run stays in MLflow, with the reason; the tables leave it out."""
        c, lost = client(self.uri), 0
        for run in children(self.uri, self.parent_id):
            tid = run.data.tags.get(TRIAL_TAG)
            if run.info.status != "RUNNING" or tid in known:
                continue
            c.set_tag(run.info.run_id, "trial_status", LOST)
            c.set_tag(run.info.run_id, "error", LOST_REASON)
            c.set_terminated(run.info.run_id, status="KILLED")
            lost += 1
        return lost

    def end_sweep(self, status: str, say: Callable[[str], None] = print) -> bool:
        """Replay what is buffered, log the parameter importances (lines to ``say``), then
        end the parent run; True when nothing is left over."""
        self.flush(force=True)  # waits for the queue too
        try:  # insight, not bookkeeping: a failure here never costs the sweep's results
            for line in self.log_importance():
                say(line)
        except Exception as err:  # any error, on purpose
            say(f"param importance: not computed ({first_line(err)})")
        self.submit(self._op("end_parent", status=status))
        self.wait()
        return not Outbox(self.sweep_dir).pending()

    def log_importance(self) -> list[str]:
        """``param_importance.json`` / ``.png`` (orchestrator.importance) from the sweep's
        ``trials.parquet``, in the sweep folder and on the parent run; the console lines."""
        path = Path(self.sweep_dir) / "trials.parquet"
        if not path.is_file():
            return []
        result = importance.param_importance(pq.read_table(path).to_pylist())
        files = importance.write(result, Path(self.sweep_dir))
        c = client(self.uri)
        for file in files.values():
            c.log_artifact(self.parent_id, str(file))
        return importance.summary(result)

    def summary(self) -> dict:
        """The front for the closing line: from MLflow, else from the local trials table."""
        self.wait()
        try:
            if Outbox(self.sweep_dir).pending():
                raise ConnectionError("tracking operations still buffered")
            return self.refresh()
        except Exception:  # any error, on purpose
            path = Path(self.sweep_dir) / "trials.parquet"
            if not path.is_file():
                return {"hypervolume": float("nan"), "finished": 0, "front": None}

            front = pareto.front_table(pq.read_table(path))
            return {"hypervolume": pareto.front_hypervolume(front), "front": front}

    def _finish(
        self, run_id: str, run_status: str, trial_status: str, reason: str | None = None
    ) -> None:
        c = client(self.uri)
        c.set_tag(run_id, "trial_status", trial_status)
        if reason:
            c.set_tag(run_id, "error", redact(reason)[:5000])
        c.set_terminated(run_id, status=run_status)

    # ------------------------------------------------------------------ the parent's front
    def refresh(self) -> dict:
        """Rebuild the tables and plot from the child runs; log them and the hypervolume."""
        rows = trial_rows(self.uri, self.parent_id)
        table = pareto.trials_table(rows)
        paths = pareto.write_tables(
            table, self.sweep_dir, teacher=self.teacher, title=f"{self.sweep_name}: top-1 vs MACs"
        )
        c = client(self.uri)
        for path in paths.values():
            c.log_artifact(self.parent_id, str(path))
        front = pareto.front_table(table)
        hv = pareto.front_hypervolume(front)
        finished = sum(1 for r in rows if r["status"] in ("TERMINATED", "ERROR"))
        logged = c.get_metric_history(self.parent_id, "hypervolume")
        if not logged or max(m.step for m in logged) < finished:  # once per trial count
            c.log_metric(self.parent_id, "hypervolume", hv, step=finished)
            c.log_metric(self.parent_id, "front_size", front.num_rows, step=finished)
        if getattr(self, "print_fronts", True):  # a logger pickled before the flag: printed
            pareto.print_front(
                front,
                teacher=self.teacher,
                title=f"Pareto front after {finished} trials (hypervolume {hv:.4f})",
            )
        return {"hypervolume": hv, "finished": finished, "front": front}
