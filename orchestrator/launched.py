"""Which child runs are this sweep's own: the trials Tune launched, as the driver recorded them.

The trials table is rebuilt from MLflow after a restore (``ChildRuns.adopt`` lists the parent's
child runs), and whoever can write to the tracking store can add a child run whose parent tag
names our sweep: a forged run (top-1 99.9, 1 MAC) entered the Pareto front, and its
``trial_id`` tag became a path. So the driver records every trial Tune starts
(:class:`LaunchedTrials`, a Tune callback ahead of the tracking one: the id is on disk before
its child run exists) in ``<sweep folder>/launched_trials.txt`` (appended, fsynced, 0600; on
bucket storage mirrored and pulled back with the driver's other files), and :func:`own_runs`
keeps only the child runs of those trials, warning once about any other. A sweep started
before this record has none: its runs are taken as they are (nothing to check against).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ray.tune import Callback

from orchestrator.outbox import PRIVATE
from orchestrator.tracking import TRIAL_TAG

LAUNCHED = "launched_trials.txt"


def record(sweep_dir: str | Path, trial_id: str) -> None:
    """Append ``trial_id`` to the sweep's record (one line, fsynced)."""
    path = Path(sweep_dir) / LAUNCHED
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
    try:
        os.write(fd, f"{trial_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def launched(sweep_dir: str | Path) -> set[str] | None:
    """The trial ids this sweep launched, or None when it has no record (an older sweep)."""
    path = Path(sweep_dir) / LAUNCHED
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def own_runs(
    runs: Iterable, sweep_dir: str | Path, warn: Callable[[str], None] | None = None
) -> list:
    """The child runs (MLflow ``Run`` objects) of trials this sweep launched; one warning line
    names how many others were left out, and the first one's run id and trial id."""
    runs = list(runs)
    ids = launched(sweep_dir)
    if ids is None:
        return runs
    own = [r for r in runs if r.data.tags.get(TRIAL_TAG) in ids]
    if len(own) < len(runs):
        other = next(r for r in runs if r.data.tags.get(TRIAL_TAG) not in ids)
        if warn is None:
            from orchestrator.driver_output import warn
        warn(
            f"warning: {len(runs) - len(own)} child run(s) of this sweep's parent run were not "
            f"launched by it (e.g. run {other.info.run_id}, trial_id "
            f"{other.data.tags.get(TRIAL_TAG)!r}): left out of the tables and the front"
        )
    return own


class LaunchedTrials(Callback):
    """Tune callback: records each trial as Tune starts it (:func:`record`)."""

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir = sweep_dir

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        record(self.sweep_dir, trial.trial_id)
