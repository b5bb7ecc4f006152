"""Which MLflow child run is each trial's (``RunIndex``): by the id it was created with.

No search per trial: a run's id is kept from its ``create_run``. After ``Tuner.restore`` the
sweep's child runs are listed once (:meth:`RunIndex.adopt`, which also fills the trials table
from them); a run whose creation got no answer is looked for by its tags before it is created
again, so an outage never duplicates a run; a run whose trial Tune no longer holds is ended as
lost (:meth:`RunIndex.mark_lost`). What the runs then hold:
:class:`~orchestrator.child_runs.ChildRuns`.
"""

from __future__ import annotations

from mlflow.entities import RunTag

from orchestrator.launched import own_runs
from orchestrator.mlflow_names import LOST, RUNNING, STATUS_TAG
from orchestrator.tracking import LOST_REASON, PARENT_TAG, SWEEP_TAG, TRIAL_TAG, children, client
from orchestrator.trial_table import TrialTable


class RunIndex:
    """Trial id -> child run id, and what each run still needs (its params, a reopening)."""

    def __init__(
        self, uri: str, parent_id: str, sweep_name: str, table: TrialTable, *, adopted: bool
    ) -> None:
        self.uri, self.parent_id, self.sweep_name, self.table = uri, parent_id, sweep_name, table
        self.adopted = adopted  # False after a restore: the child runs are listed once
        self.runs: dict[str, str] = {}  # trial id -> child run id
        self.last_step: dict[str, int] = {}  # the last training_iteration MLflow holds
        self.reopen: set[str] = set()  # adopted runs to set RUNNING again when their trial is
        self.no_params: set[str] = set()  # runs an outage cut off before their params
        self._unsure: set[str] = set()  # trials whose create_run raised: the run may exist
        self._exp_id: str | None = None

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
            self.runs[tid] = run.info.run_id
            self.last_step[tid] = int(run.data.metrics.get("training_iteration", 0))
            if run.info.status != "RUNNING":
                self.reopen.add(tid)
            if not run.data.params:
                self.no_params.add(tid)
            self._unsure.discard(tid)

    def _find(self, tid: str) -> list:
        """The child run of ``tid`` by its tags: only for a run whose creation got no answer
        (it may exist), never on the way of a normal trial."""
        c = client(self.uri)
        exp_id = c.get_run(self.parent_id).info.experiment_id
        where = f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{TRIAL_TAG} = '{tid}'"
        return list(c.search_runs([exp_id], filter_string=where))

    def run_id(self, tid: str) -> str:
        """The child run of trial ``tid``, created (RUNNING, no params yet) on its first
        operation, set RUNNING again if an earlier driver had ended it."""
        self.adopt()
        c = client(self.uri)
        if tid not in self.runs and tid in self._unsure:  # created, but no answer came
            self._adopt(self._find(tid))
        if tid not in self.runs:
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
            self.runs[tid], self.last_step[tid] = run.info.run_id, 0
            self.no_params.add(tid)
        if tid in self.reopen:  # its end tags go with its new end
            c.update_run(self.runs[tid], status="RUNNING")
            c.set_tag(self.runs[tid], STATUS_TAG, RUNNING)
            self.reopen.discard(tid)
        return self.runs[tid]

    def mark_lost(self, known: set[str]) -> None:
        """End, as KILLED with ``trial_status = lost``, every running child run whose trial
        Tune does not hold. A driver killed between a trial's start and Tune's next snapshot
        of its state leaves such a run: ``--resume`` restores the older snapshot, which never
        saw that trial, so Tune will not finish it (the searcher samples again in its place).
        The run stays in MLflow, with the reason; the tables leave it out."""
        c = client(self.uri)
        for tid, run_id in self.table.running().items():
            if tid in known or tid in self.reopen:  # a run an earlier driver already ended
                continue
            c.log_batch(run_id, tags=[RunTag(STATUS_TAG, LOST), RunTag("error", LOST_REASON)])
            c.set_terminated(run_id, status="KILLED")
            self.table.lost(tid)
