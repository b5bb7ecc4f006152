"""A sweep's child runs in MLflow: each tracking operation applied (``ChildRuns.apply``).

A trial's child run is found by the id it was created with, kept here: no search per trial.
After ``Tuner.restore`` the sweep's child runs are listed once (:meth:`ChildRuns.adopt`, which
also fills the trials table from them); a run whose creation got no answer is looked for by
its tags before it is created again. Every write is also told to the
:class:`~orchestrator.trial_table.TrialTable`, so the table is MLflow's view without reading it.

What a child run holds: the trial's explored settings as params (what varies per trial; the
fixed ones are the parent's ``config.json``), floats to 4 significant digits (:func:`param_text`);
its reports as metrics under their MLflow names (``top1_pct``, ...: ``mlflow_names``); at its
end the ``trial_status`` tag (``complete``, ``early_stopped``, ``failed``) and
``pareto_front = false``, which the next rebuild of the tables turns ``true`` for a front
trial (``front_marks``).
"""

from __future__ import annotations

from mlflow.entities import Metric, Param, RunTag

from orchestrator._redact import redact
from orchestrator.front_marks import FRONT_TAG
from orchestrator.launched import own_runs
from orchestrator.mlflow_names import LOST, RUNNING, STATUS_TAG, mlflow_metric, trial_status
from orchestrator.tracking import (
    LOST_REASON,
    METRICS,
    PARENT_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    as_number,
    children,
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
        self.uri, self.parent_id, self.sweep_name = uri, parent_id, sweep_name
        self.param_names, self.table = param_names, table
        self.adopted = adopted  # False after a restore: the child runs are listed once
        self._runs: dict[str, str] = {}  # trial id -> child run id
        self._last_step: dict[str, int] = {}
        self._logged: dict[str, dict[str, float]] = {}  # per trial: last value per metric
        self._reopen: set[str] = set()  # adopted runs to set RUNNING again when their trial is
        self._no_params: set[str] = set()  # runs an outage cut off before their params
        self._unsure: set[str] = set()  # trials whose create_run raised: the run may exist
        self._exp_id: str | None = None

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
            self._mark_lost(set(op["known"]))
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
        run_id = self._run_id(tid)
        params = self._params(tid, op.get("config", {}))
        results = list(op.get("results", [])) + ([op["result"]] if "result" in op else [])
        new, last = [], self._last_step[tid]
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
            self._no_params.discard(tid)
        for r in new:
            self.table.reported(tid, r)
        self._last_step[tid] = last
        if kind == "complete":
            log_trial_artifacts(self.uri, run_id, tid, op.get("checkpoint"), op["result"])
        if end:
            c.set_terminated(run_id, status=end[0])
            self.table.finished(tid, end[1], reason)

    def adopt(self) -> None:
        """After a restore: the sweep's child runs, listed once, and the table from them."""
        if self.adopted:
            return
        # only trials this sweep launched: a forged run naming our parent stays out (launched.py)
        runs = own_runs(children(self.uri, self.parent_id), self.table.sweep_dir)
        self._adopt(runs)
        self.table.load(runs)
        self.adopted = True

    def _adopt(self, runs: list) -> None:
        for run in runs:
            tid = run.data.tags.get(TRIAL_TAG)
            self._runs[tid] = run.info.run_id
            self._last_step[tid] = int(run.data.metrics.get("training_iteration", 0))
            if run.info.status != "RUNNING":
                self._reopen.add(tid)
            if not run.data.params:
                self._no_params.add(tid)
            self._unsure.discard(tid)

    def _find(self, tid: str) -> list:
        """The child run of ``tid`` by its tags: only for a run whose creation got no answer
        (it may exist), never on the way of a normal trial."""
        c = client(self.uri)
        exp_id = c.get_run(self.parent_id).info.experiment_id
        where = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{TRIAL_TAG} = '{tid}'"
        return list(c.search_runs([exp_id], filter_string=where))

    def _run_id(self, tid: str) -> str:
        self.adopt()
        c = client(self.uri)
        if tid not in self._runs and tid in self._unsure:  # created, but no answer came
            self._adopt(self._find(tid))
        if tid not in self._runs:
            if self._exp_id is None:
                self._exp_id = c.get_run(self.parent_id).info.experiment_id
            tags = {PARENT_TAG: self.parent_id, TRIAL_TAG: tid, SWEEP_TAG: self.sweep_name}
            self._unsure.add(tid)
            run = c.create_run(
                self._exp_id,
                run_name=f"{self.sweep_name}-{tid}",
                tags={**tags, STATUS_TAG: RUNNING},
            )
            self._unsure.discard(tid)
            self._runs[tid], self._last_step[tid] = run.info.run_id, 0
            self._no_params.add(tid)
        if tid in self._reopen:  # its end tags go with its new end
            c.update_run(self._runs[tid], status="RUNNING")
            c.set_tag(self._runs[tid], STATUS_TAG, RUNNING)
            self._reopen.discard(tid)
        return self._runs[tid]

    def _params(self, tid: str, config: dict) -> dict[str, str] | None:
        """The trial's settings as params, for a run that has none yet (new, or created just
        before an outage cut them off); None when it has them."""
        if tid not in self._no_params:
            return None
        return {k: param_text(config[k]) for k in self.param_names if k in config}

    def _mark_lost(self, known: set[str]) -> None:
        """End, as KILLED with ``trial_status = lost``, every running child run whose trial
        Tune does not hold. A driver killed between a trial's start and Tune's next snapshot
        of its state leaves such a run: ``--resume`` restores the older snapshot, which never
        saw that trial, so Tune will not finish it (the searcher samples again in its place).
        The run stays in MLflow, with the reason; the tables leave it out."""
        c = client(self.uri)
        for tid, run_id in self.table.running().items():
            if tid in known or tid in self._reopen:  # a run an earlier driver already ended
                continue
            c.log_batch(run_id, tags=[RunTag(STATUS_TAG, LOST), RunTag("error", LOST_REASON)])
            c.set_terminated(run_id, status="KILLED")
            self.table.lost(tid)


def param_text(value) -> str:
    """A sampled value as an MLflow param: a float to 4 significant digits (``0.0004131``,
    not ``0.000413108993050043``: the runs table and parallel coordinates show the number a
    person compares), anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
