"""A sweep's child runs in MLflow: each tracking operation applied (``ChildRuns.apply``).

Which child run is a trial's: :class:`~orchestrator.child_run_index.RunIndex` (by the id it
was created with, no search per trial). Every write is also told to the
:class:`~orchestrator.trial_table.TrialTable`, so the table is MLflow's view without reading it.

What a child run holds: the trial's explored settings as params (what varies per trial; the
fixed ones are the parent's ``config.json``), floats to 4 significant digits
(:func:`~orchestrator.mlflow_names.param_text`);
its reports as metrics under their MLflow names (``top1_pct``, ...: ``mlflow_names``); at its
end the ``trial_status`` tag (``complete``, ``early_stopped``, ``failed``) and
``pareto_front = false``, which the next rebuild of the tables turns ``true`` for a front
trial (``front_marks``).
"""

from __future__ import annotations

from mlflow.entities import Metric, Param, RunTag

from orchestrator._redact import redact
from orchestrator.child_run_index import RunIndex
from orchestrator.front_marks import FRONT_TAG
from orchestrator.mlflow_names import STATUS_TAG, mlflow_metric, param_text, trial_status
from orchestrator.tracking import (
    METRICS,
    as_number,
    client,
    end_parent,
    log_teacher,
)
from orchestrator.trial_artifacts import log_trial_artifacts
from orchestrator.trial_table import TrialTable

# Logged at every step (a person plots them per epoch); the other metrics (MACs, params, the
# search's numbers, ...) only when their value changes: half the rows of a trial's history,
# and so of an outage's replay, which MLflow's SQL store spends ~1 ms per row on
CURVES = ("top1", "train_loss", "lr", "time_total_s", "training_iteration")


class ChildRuns:
    """Applies operations to MLflow: the parent run and one child run per trial."""

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_name: str,
        param_names: list[str],
        table: TrialTable,
        *,
        adopted: bool,
    ) -> None:
        self.parent_id, self.param_names, self.table = parent_id, param_names, table
        self.index = RunIndex(uri, parent_id, sweep_name, table, adopted=adopted)
        self._logged: dict[str, dict[str, float]] = {}  # per trial: last value per metric

    @property
    def uri(self) -> str:
        return self.index.uri

    @uri.setter
    def uri(self, value: str) -> None:  # one store for both (tests move it to simulate outages)
        self.index.uri = value

    def adopt(self) -> None:
        """After a restore: the sweep's child runs, listed once (RunIndex.adopt)."""
        self.index.adopt()

    def apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "refresh":  # an outbox of an older driver
            self.table.dirty = True
        elif kind == "teacher":
            log_teacher(self.uri, self.parent_id, op["metrics"])
        elif kind == "end_parent":
            self.adopt()
            running = list(self.table.running().values())
            end_parent(self.uri, self.parent_id, op["status"], running=running)
        elif kind == "lost":
            self.adopt()
            self.index.mark_lost(set(op["known"]))
        elif kind == "settle":  # Tune's finished trials whose end MLflow never took
            self.adopt()
            running = self.table.running()
            for t in op["trials"]:
                if t["trial"] in running:
                    self._trial_op({"op": "complete", **t})
        else:
            self._trial_op(op)

    def _trial_op(self, op: dict) -> None:
        """A trial's start, results, end (or all three, compacted): one MLflow batch for its
        params (a new run), new metrics and end tags, its artifacts, then its end."""
        kind, tid = op["op"], op["trial"]
        run_id = self.index.run_id(tid)
        params = self._params(tid, op.get("config", {}))
        results = list(op.get("results", [])) + ([op["result"]] if "result" in op else [])
        new, last = [], self.index.last_step[tid]
        for r in results:  # older steps were logged before a restore (or a replay)
            if (step := int(r.get("training_iteration", 0))) > last:
                new.append(r)
                last = step
        metrics, seen = [], self._logged.setdefault(tid, {})
        for r in new:
            stamp, step = int(r.get("timestamp", 0) * 1000), int(r.get("training_iteration", 0))
            for k in METRICS + ("training_iteration",):
                if (v := as_number(r.get(k))) is None or (k not in CURVES and seen.get(k) == v):
                    continue  # unchanged (MACs, params, ...): the value logged stands as latest
                seen[k] = v
                metrics.append(Metric(mlflow_metric(k), v, stamp, step))
        end, reason = None, None
        if kind == "complete":
            failed = op["result"].get("failed")
            end = ("FAILED", "ERROR") if failed else ("FINISHED", "TERMINATED")
            reason = op["result"].get("error")
        elif kind == "error":
            end, reason = ("FAILED", "ERROR"), op.get("reason")
        reason = redact(reason)[:5000] if reason else None
        tags = []
        if end:  # MLflow's FINISHED is a complete and an ASHA-stopped trial alike
            status = trial_status(op.get("result"), error=kind == "error")
            tags += [RunTag(STATUS_TAG, status), RunTag(FRONT_TAG, "false")]
        tags += [RunTag("error", reason)] if reason else []
        c = client(self.uri)
        for i in range(0, max(1, len(metrics)), 1000):  # MLflow's limit per batch
            first = i == 0
            if metrics or (first and (params or tags)):
                c.log_batch(
                    run_id,
                    metrics=metrics[i : i + 1000],
                    params=[Param(k, v) for k, v in (params or {}).items()] if first else [],
                    tags=tags if first else [],
                )
        if params is not None:
            self.table.started(tid, run_id, params)
            self.index.no_params.discard(tid)
        for r in new:
            self.table.reported(tid, r)
        self.index.last_step[tid] = last
        if kind == "complete":
            log_trial_artifacts(self.uri, run_id, tid, op.get("checkpoint"), op["result"])
        if end:
            c.set_terminated(run_id, status=end[0])
            self.table.finished(tid, end[1], reason)

    def _params(self, tid: str, config: dict) -> dict[str, str] | None:
        """The trial's settings as params, for a run that has none yet (new, or created just
        before an outage cut them off); None when it has them."""
        if tid not in self.index.no_params:
            return None
        return {k: param_text(config[k]) for k in self.param_names if k in config}
