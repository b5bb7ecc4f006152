"""The sweep's teacher as a job the driver starts first and the trials wait for (``TeacherJob``).

The teacher is the longest single step before any trial, and it runs in its own Ray task. The
task is submitted as soon as Ray is up, and Tune starts right after the driver's own checks,
*while the teacher trains*: each trial gets the teacher as an object reference, builds its data
loaders, then blocks on it. So the trial processes' start-up (importing torch, timm, Tune and
prune_core: ~5 s each on 2 cores) and the driver's (the model check, the MLflow store and its
parent run, Tune's set-up) all fit beside the teacher instead of after it.

On a node of its own (a local Ray) the teacher asks Ray only for the CPUs no trial slot needs
(:func:`reserved_cpus`): the trials could not start otherwise, and they compute nothing until it
is done. It still trains on ``resources.teacher_cpus`` threads. This module imports neither torch
nor the trial code: the task's function is looked up by reference in the worker, where
``orchestrator.teacher`` does the work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from orchestrator._atomic import atomic_write
from orchestrator.schema import Experiment

TEACHER_DIR, TEACHER_WEIGHTS, TEACHER_METRICS = "teacher", "teacher.pt", "teacher.json"


def teacher_dir(config: Experiment) -> Path:
    return config.sweep_dir / TEACHER_DIR


def stored_metrics(sweep_dir: str | Path) -> dict | None:
    """The stored teacher's metrics (``<sweep folder>/teacher/teacher.json``), or None before
    it is stored (while its task still trains)."""
    path = Path(sweep_dir) / TEACHER_DIR / TEACHER_METRICS
    return json.loads(path.read_text()) if path.is_file() else None


def reserved_cpus(config: Experiment, node_cpus: float) -> float:
    """CPUs the teacher task asks of a node it shares with every trial slot: what the slots
    (``sweep.max_concurrent_trials`` x ``resources.cpus_per_trial``) leave of ``node_cpus``, at
    most ``resources.teacher_cpus``. The rest it borrows from the trials, which start meanwhile
    and wait for it (2 CPUs, 2 slots of 1: 0, so both trial processes start beside it)."""
    r, s = config.resources, config.sweep
    slots = min(s.max_concurrent_trials, s.num_samples)
    return min(r.teacher_cpus, max(0.0, node_cpus - slots * r.cpus_per_trial))


def _train(config: Experiment) -> tuple[dict, dict]:
    """In the Ray worker: build/load, train if asked, evaluate (orchestrator.teacher)."""
    from orchestrator.teacher import train_teacher

    return train_teacher(config)


class TeacherJob:
    """The teacher of ``config``'s sweep: stored already (a resumed sweep never retrains), or
    being trained in a Ray task from construction on.

    Args:
        config: the experiment.
        cpus: the CPUs the task asks Ray for; default ``resources.teacher_cpus`` (see
            :func:`reserved_cpus` for a local node).

    :meth:`state_ref` is what trials wait on (an ``ObjectRef`` of the state dict); :meth:`done`
    says whether :meth:`result` would return at once. :meth:`result` stores a newly trained
    teacher as ``teacher/teacher.pt`` (a plain state dict of the prunable model) and
    ``teacher/teacher.json`` (top-1 %, MACs, params, img/s), each written atomically, and
    raises the task's error as ``RayTaskError``. :meth:`cancel` stops a task the driver no
    longer needs (a check that failed, Ctrl-C).
    """

    def __init__(self, config: Experiment, cpus: float | None = None) -> None:
        self.directory = teacher_dir(config)
        self.weights = self.directory / TEACHER_WEIGHTS
        self.meta = self.directory / TEACHER_METRICS
        self.trained = not (self.weights.is_file() and self.meta.is_file())
        self._state_ref = self._metrics_ref = None
        self._result: tuple[dict[str, Any], dict] | None = None
        if self.trained:
            task = ray.remote(_train).options(
                num_cpus=config.resources.teacher_cpus if cpus is None else cpus,
                num_gpus=config.resources.teacher_gpus,
                num_returns=2,
            )
            self._state_ref, self._metrics_ref = task.remote(config)

    def state_ref(self) -> ray.ObjectRef:
        """The teacher's state dict in the object store (the stored one is put there once).
        The driver keeps it alive for the whole sweep: restarted trials read it again."""
        if self._state_ref is None:
            self._state_ref = ray.put(self.result()[0])
        return self._state_ref

    def done(self) -> bool:
        if self._result is not None or not self.trained:
            return True
        if self._metrics_ref is None:  # cancelled
            return False
        return bool(ray.wait([self._metrics_ref], timeout=0)[0])

    def cancel(self) -> None:
        if self.trained and self._result is None and self._metrics_ref is not None:
            ray.cancel(self._metrics_ref, force=True)
            self._metrics_ref = None

    def result(self) -> tuple[dict[str, Any], dict]:
        """(state dict of CPU tensors, metrics); waits for the task; trains nothing twice."""
        if self._result is not None:
            return self._result
        import torch  # here: the driver imports torch while the task runs, not before it

        if not self.trained:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            self._result = state, json.loads(self.meta.read_text())
            return self._result
        state, metrics = ray.get([self._state_ref, self._metrics_ref])
        self.directory.mkdir(parents=True, exist_ok=True)
        # a killed driver never leaves a half-written teacher
        atomic_write(self.weights, lambda p: torch.save(state, p))
        atomic_write(self.meta, json.dumps(metrics, indent=1))
        self._result = state, metrics
        return self._result
