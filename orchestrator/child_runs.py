"""A sweep's child runs in MLflow: each tracking operation applied (``ChildRuns.apply``).

A trial's child run is found by the id it was created with, kept here: no search per trial.
After ``Tuner.restore`` the sweep's child runs are listed once (:meth:`ChildRuns.adopt`, which
also fills the trials table from them); a run whose creation got no answer is looked for by
its tags before it is created again. Every write is also told to the
:class:`~orchestrator.trial_table.TrialTable`, so the table is MLflow's view without reading it.
"""

from __future__ import annotations

from mlflow.entities import Metric, Param, RunTag

from orchestrator._redact import redact
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
    log_teacher,
)
from orchestrator.trial_artifacts import log_trial_artifacts
from orchestrator.trial_table import TrialTable


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
        else:
            tid = op["trial"]
            run_id = self._run_id(tid, op.get("config", {}))
            results = op.get("results") or ([op["result"]] if "result" in op else [])
            self._log_results(tid, run_id, results)
            if kind == "complete":
                log_trial_artifacts(self.uri, run_id, op.get("checkpoint"), op["result"])
                failed = op["result"].get("failed")
                status = ("FAILED", "ERROR") if failed else ("FINISHED", "TERMINATED")
                self._finish(tid, run_id, *status, op["result"].get("error"))
            elif kind == "error":
                self._finish(tid, run_id, "FAILED", "ERROR", op.get("reason"))

    def adopt(self) -> None:
        """After a restore: the sweep's child runs, listed once, and the table from them."""
        if self.adopted:
            return
        runs = children(self.uri, self.parent_id)
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

    def _run_id(self, tid: str, config: dict) -> str:
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
                tags={**tags, "trial_status": "RUNNING"},
            )
            self._unsure.discard(tid)
            self._runs[tid], self._last_step[tid] = run.info.run_id, 0
            self._no_params.add(tid)
        run_id = self._runs[tid]
        if tid in self._reopen:
            c.update_run(run_id, status="RUNNING")
            self._reopen.discard(tid)
        if tid in self._no_params:
            params = {k: str(config[k]) for k in self.param_names if k in config}
            if params:
                c.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            self.table.started(tid, run_id, params)
            self._no_params.discard(tid)
        return run_id

    def _log_results(self, tid: str, run_id: str, results: list[dict]) -> None:
        new = [r for r in results if int(r.get("training_iteration", 0)) > self._last_step[tid]]
        metrics = [
            Metric(k, v, int(r.get("timestamp", 0) * 1000), int(r.get("training_iteration", 0)))
            for r in new
            for k in METRICS + ("training_iteration",)
            if (v := as_number(r.get(k))) is not None
        ]
        for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
            client(self.uri).log_batch(run_id, metrics=metrics[i : i + 1000])
        for r in new:  # older ones were logged before a restore (or a replay)
            self.table.reported(tid, r)
            self._last_step[tid] = int(r.get("training_iteration", 0))

    def _finish(
        self, tid: str, run_id: str, run_status: str, trial_status: str, reason: str | None
    ) -> None:
        reason = redact(reason)[:5000] if reason else None
        tags = [RunTag("trial_status", trial_status)] + (
            [RunTag("error", reason)] if reason else []
        )
        c = client(self.uri)
        c.log_batch(run_id, tags=tags)
        c.set_terminated(run_id, status=run_status)
        self.table.finished(tid, trial_status, reason)

    def _mark_lost(self, known: set[str]) -> None:
        """End, as KILLED with ``trial_status = LOST``, every running child run whose trial
        Tune does not hold. A driver killed between a trial's start and Tune's next snapshot
        of its state leaves such a run: ``--resume`` restores the older snapshot, which never
        saw that trial, so Tune will not finish it (the searcher samples again in its place).
        The run stays in MLflow, with the reason; the tables leave it out."""
        c = client(self.uri)
        for tid, run_id in self.table.running().items():
            if tid in known or tid in self._reopen:  # a run an earlier driver already ended
                continue
            c.log_batch(run_id, tags=[RunTag("trial_status", LOST), RunTag("error", LOST_REASON)])
            c.set_terminated(run_id, status="KILLED")
            self.table.lost(tid)
