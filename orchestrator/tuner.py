"""The Tune objects of a sweep, built from its experiment: searcher, scheduler, trainable, Tuner.

Optuna (through OptunaSearch, define-by-run) chooses the trials as a two-objective study (max
top-1, min MACs) whose metric/mode lists live *only* on the searcher: a metric on
``TuneConfig`` would silently make the study single-objective. ASHA stops weak trials within
MAC buckets; ``FailureConfig`` retries a failed trial from its checkpoint. Imported by the
driver only when a sweep runs (it loads Ray, Optuna and, through the trial, torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.fs
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.stopper import Stopper

from orchestrator import faults
from orchestrator import space as space_mod
from orchestrator.launched import LaunchedTrials
from orchestrator.scheduler import MacBucketASHA
from orchestrator.schema import Experiment
from orchestrator.searcher import FailureAwareOptunaSearch, make_sampler
from orchestrator.study_db import STUDY_DB
from orchestrator.trial import run_trial


def make_searcher(exp: Experiment) -> FailureAwareOptunaSearch:
    """Optuna over the experiment's explored settings (space.py), both objectives, seeded."""
    s = exp.sweep
    sampler = make_sampler(s.sampler, seed=exp.seed, population_size=s.population_size)
    return FailureAwareOptunaSearch(
        space=space_mod.DefineByRun(exp.tunable_sections),
        metric=["top1", "macs"],
        mode=["max", "min"],
        sampler=sampler,
        study_name=exp.name,
        study_db=str(exp.sweep_dir / STUDY_DB),  # for optuna-dashboard (study_db.py)
        points_to_evaluate=[space_mod.flatten_point(p) for p in s.points_to_evaluate] or None,
    )


def make_scheduler(exp: Experiment):
    """ASHA within ``sweep.asha.mac_buckets`` MAC bands, or FIFO when ``sweep.asha`` is null."""
    a = exp.sweep.asha
    if a is None:
        return FIFOScheduler()
    return MacBucketASHA(
        buckets=a.mac_buckets,
        metric=a.metric,
        mode=a.mode,
        time_attr="training_iteration",
        max_t=exp.finetune.epochs + 1,
        grace_period=a.grace_period,
        reduction_factor=a.reduction_factor,
    )


def make_trainable(exp: Experiment, teacher_state: ray.ObjectRef):
    """``run_trial`` with the experiment and the teacher's weights (an object reference the
    trial waits on: the teacher may still be training, teacher_job.py), and the per-trial
    resources."""
    r = exp.resources
    # in a list: Tune puts each parameter in the object store, and a bare reference cannot be
    # put; nested, it travels as a reference and stays alive with the trainable
    trainable = tune.with_parameters(run_trial, experiment=exp, teacher=[teacher_state])
    return tune.with_resources(trainable, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})


def trial_name(trial) -> str:
    """Short, stable names (Tune's default puts every parameter in the directory name)."""
    return f"trial_{trial.trial_id}"


def make_tuner(exp: Experiment, trainable, callbacks: list) -> tune.Tuner:
    """A fresh Tuner of the sweep (``--resume`` restores one from ``exp.tune_dir`` instead),
    with :class:`TeacherWatch` among its callbacks and :class:`TeacherFailed` its stopper."""
    tune_config = tune.TuneConfig(
        search_alg=make_searcher(exp),
        scheduler=make_scheduler(exp),
        num_samples=exp.sweep.num_samples,
        max_concurrent_trials=exp.sweep.max_concurrent_trials,
        reuse_actors=exp.sweep.reuse_actors,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    run_config = tune.RunConfig(
        name=exp.name,
        storage_path=exp.storage_uri,
        failure_config=tune.FailureConfig(max_failures=exp.sweep.max_failures),
        stop=TeacherFailed(),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # result.json + progress.csv per trial, as Tune writes by default, but not its
        # TensorBoard logger (MLflow tracks the sweep): importing tensorboardX and boto3 cost
        # the driver 1.5 s before the first trial (measured); the driver sets
        # TUNE_DISABLE_AUTO_CALLBACK_LOGGERS so that Tune does not add it back
        callbacks=[
            LaunchedTrials(str(exp.sweep_dir.resolve())),  # first: recorded before its run
            *callbacks,
            *([BuildFault()] if os.environ.get(faults.ENV) else []),
            TeacherWatch(),
            EndWatch(),
            KeepTrialLogs(),
            JsonLoggerCallback(),
            CSVLoggerCallback(),
        ],
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


class BuildFault(Callback):
    """The ``tuner`` fault point (faults.py): fires as Tune pickles the Tuner into
    ``tuner.pkl`` while building it, where a real failure (an unpicklable searcher) struck.
    Among the callbacks only while ``ORCHESTRATOR_FAULTS`` is set."""

    def __getstate__(self) -> dict:
        faults.inject("tuner")
        return self.__dict__


class TeacherWatch(Callback):
    """Collects the teacher once its task ends, from Tune's loop (the trials started before).

    :meth:`watch` names the job and what to do with its metrics (print them, log them on the
    parent run); each step then checks the job without waiting. A failed task's error is kept
    in :attr:`error` and :class:`TeacherFailed` ends the sweep (the trials waiting for it fail
    with the same error). Class attributes, as in :class:`EndWatch`: ``Tuner.restore`` runs an
    unpickled copy of the callbacks, and a job holds object references that only this driver
    process can use.
    """

    job: ClassVar[Any] = None  # teacher_job.TeacherJob, until collected
    on_ready: ClassVar[Callable[[dict], None] | None] = None
    error: ClassVar[BaseException | None] = None

    @classmethod
    def watch(cls, job, on_ready: Callable[[dict], None]) -> None:
        cls.job, cls.on_ready, cls.error = job, on_ready, None
        cls.collect()  # a stored teacher: at once, before any trial

    @classmethod
    def collect(cls) -> None:
        if cls.job is None or not cls.job.done():
            return
        job, cls.job = cls.job, None
        try:
            metrics = job.result()[1]
        except Exception as err:  # RayTaskError, or the task's worker died: any error
            cls.error = err
            return
        if cls.on_ready is not None:
            cls.on_ready(metrics)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        TeacherWatch.collect()


class TeacherFailed(Stopper):
    """Stops the whole sweep once :class:`TeacherWatch` saw the teacher's task fail."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return TeacherWatch.error is not None


class KeepTrialLogs(Callback):
    """Copy a failed trial's ``result.json`` and ``progress.csv`` to storage before it restarts.

    Tune's loggers write them in the driver's staging folder, which reaches storage only with
    the next experiment snapshot (every ~10 s), and a restarted trial's loggers first copy them
    *back* from storage. A trial retried within that window (a reused actor restarts it at
    once) lost the results reported since the last snapshot: the epoch before its failure
    vanished from ``result.json`` (seen with ``sweep.reuse_actors``; MLflow kept it).
    """

    FILES = ("result.json", "progress.csv")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        storage = trial.storage
        for name in self.FILES:
            local = Path(trial.local_path, name)
            if local.is_file():
                pyarrow.fs.copy_files(
                    str(local),
                    f"{storage.trial_fs_path}/{name}",
                    destination_filesystem=storage.storage_filesystem,
                )


class EndWatch(Callback):
    """Whether ``Tuner.fit`` returned with work left: Ctrl-C, not the end of the sweep.

    Tune traps the first SIGINT, saves its state and returns a normal ResultGrid, and on its
    way out it stops the running trials, which then read TERMINATED in the grid: the grid
    cannot tell an interrupted sweep from a finished one. The trials' statuses at the end of
    the loop's last step can: a finished sweep has created every trial and each one ended.

    The count is a class attribute on purpose: ``Tuner.restore`` runs its own unpickled copy
    of the callbacks, and this process-wide value is what the driver can read after ``fit``.
    """

    undone: ClassVar[int | None] = None  # trials not ended (or not created) at the last step
    _total: ClassVar[int] = 0

    def setup(self, total_num_samples: int | None = None, **info) -> None:
        EndWatch._total = total_num_samples or 0
        EndWatch.undone = None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        EndWatch.undone = max(EndWatch._total, len(trials)) - ended


def interrupted(grid, num_samples: int) -> bool:
    """Whether the sweep stopped with trials left (see :class:`EndWatch`). A sweep restored
    from before the watch existed falls back to the grid: trials never created, or not ended."""
    if EndWatch.undone is not None:
        return EndWatch.undone > 0
    return len(grid) < num_samples or grid.num_terminated + grid.num_errors < len(grid)
