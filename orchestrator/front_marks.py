"""Which child runs are on the Pareto front, where MLflow's runs table shows it.

Every ended child run carries a ``pareto_front`` tag (``true`` / ``false``: filter with
``tags.pareto_front = 'true'``); a fully trained trial also a ``pareto_rank`` metric, its
non-dominated sorting rank among the fully trained trials (0: the front, 1: the front once
the front is taken away, ...; ``pareto.pareto_ranks``), which the table sorts by. Its step is
the number of finished trials when it was written, so the latest value is the current one.

The marks change as the front does, and are written at each rebuild of the tables
(``TrialTable.rebuild``). What each run holds is kept here (:attr:`FrontMarks.held`: told by
the writes, and read back from the runs after ``--resume``), so a rebuild writes only the
runs whose marks changed, one ``log_batch`` each, and at most :data:`PER_REBUILD` of them:
one new model that dominates many shifts the rank of each by one (a simulated 1,000-trial
sweep wrote 4,955 marks in all, up to 207 at one rebuild of 5 trials; tens of ms per write on
SQLite). The front's own changes go first, then the lowest ranks; the rest wait for the next
rebuild (:attr:`FrontMarks.backlog` keeps the table due), and the sweep's last rebuild writes
all of them. A trial's end already writes ``pareto_front = false`` with its status
(``child_runs``), so most runs never need a write of their own for the tag.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from orchestrator import pareto

FRONT_TAG, RANK_METRIC = "pareto_front", "pareto_rank"
PER_REBUILD = 64  # runs written at most per rebuild (the last one: all)

Mark = tuple[str | None, int | None]  # (pareto_front tag, pareto_rank) of one run


def wanted(rows: Iterable[Mapping]) -> dict[str, Mark]:
    """Trial id -> the marks its run should hold, for every ended trial of ``rows`` (rows of
    ``trials.parquet``: Tune's status, ``fully_trained``, ``top1``, ``macs``): the fully
    trained ones ranked as ``pareto.front_table`` chooses the front, the others off it."""
    ended = [r for r in rows if r["status"] in ("TERMINATED", "ERROR")]
    ranked = [
        r for r in ended if r["fully_trained"] and r["top1"] is not None and r["macs"] is not None
    ]
    ranks = pareto.pareto_ranks([r["top1"] for r in ranked], [r["macs"] for r in ranked])
    out: dict[str, Mark] = {r["trial_id"]: ("false", None) for r in ended}
    for r, rank in zip(ranked, ranks, strict=True):
        out[r["trial_id"]] = ("true" if rank == 0 else "false", rank)
    return out


class FrontMarks:
    """The marks each child run holds in MLflow, and the writes that bring them up to date."""

    def __init__(self) -> None:
        self.held: dict[str, Mark] = {}  # trial id -> what its run holds
        self.backlog = 0  # changed marks left for the next rebuild
        self.writes = 0  # runs written, in all (for the scaling measurements)

    def load(self, tid: str, tags: Mapping[str, str], metrics: Mapping[str, float]) -> None:
        """What a run read back from MLflow holds (after ``--resume``)."""
        rank = metrics.get(RANK_METRIC)
        self.held[tid] = (tags.get(FRONT_TAG), None if rank is None else int(rank))

    def ended(self, tid: str) -> None:
        """A trial's end wrote ``pareto_front = false`` (its rank is the rebuild's)."""
        self.held[tid] = ("false", self.held.get(tid, (None, None))[1])

    def forget(self, tid: str) -> None:
        self.held.pop(tid, None)

    def write(
        self,
        client,
        rows: Iterable[Mapping],
        step: int,
        limit: int | None = PER_REBUILD,
    ) -> int:
        """Bring the runs of ``rows`` (rows of ``trials.parquet``, with ``run_id``) to their
        marks: one ``log_batch`` per run that changed, at most ``limit`` (None: all), the
        front's changes first, then by rank. Returns the number written; MLflow's error
        propagates after what was written is recorded."""
        from mlflow.entities import Metric, RunTag  # here: pareto tables load without MLflow

        rows = list(rows)
        run_ids = {r["trial_id"]: r["run_id"] for r in rows}
        changed = [(tid, mark) for tid, mark in wanted(rows).items() if self.held.get(tid) != mark]
        changed.sort(
            key=lambda c: (
                c[1][0] == (self.held.get(c[0]) or (None, None))[0],  # front flips first
                c[1][1] if c[1][1] is not None else float("inf"),
            )
        )
        todo = changed if limit is None else changed[:limit]
        self.backlog = len(changed) - len(todo)
        now = int(time.time() * 1000)
        for tid, (front, rank) in todo:
            before = self.held.get(tid, (None, None))
            tags = [RunTag(FRONT_TAG, front)] if front != before[0] else []
            metrics = [Metric(RANK_METRIC, float(rank), now, step)] if rank != before[1] else []
            client.log_batch(run_ids[tid], metrics=metrics, tags=tags)
            self.held[tid] = (front, rank)
            self.writes += 1
        return len(todo)
