"""The sweep's teacher as a job the driver starts first and collects later (``TeacherJob``).

The teacher is the longest single step before any trial, and it runs in its own Ray task on
``resources.teacher_cpus``; on a small node the driver's other start-up work (the model check,
the MLflow store, importing torch, Tune and Optuna: ~7 s on 2 cores) fits beside it instead of
before it. So the task is submitted as soon as Ray is up, and this module imports neither torch
nor the trial code: the task's function is looked up by reference in the worker, where
``orchestrator.teacher`` does the work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray

from orchestrator.schema import Experiment

TEACHER_WEIGHTS, TEACHER_METRICS = "teacher.pt", "teacher.json"


def teacher_dir(config: Experiment) -> Path:
    return config.sweep_dir / "teacher"


def _train(config: Experiment) -> tuple[dict, dict]:
    """In the Ray worker: build/load, train if asked, evaluate (orchestrator.teacher)."""
    from orchestrator.teacher import train_teacher

    return train_teacher(config)


class TeacherJob:
    """The teacher of ``config``'s sweep: stored already (a resumed sweep never retrains), or
    being trained in a Ray task with the teacher's resources from construction on.

    :meth:`result` waits for it and stores a new one as ``teacher/teacher.pt`` (a plain state
    dict of the prunable model) and ``teacher/teacher.json`` (top-1 %, MACs, params, img/s),
    each written atomically; :meth:`cancel` stops a task the driver no longer needs (a check
    that failed meanwhile). The task's errors reach :meth:`result` as ``RayTaskError``.
    """

    def __init__(self, config: Experiment) -> None:
        self.directory = teacher_dir(config)
        self.weights = self.directory / TEACHER_WEIGHTS
        self.meta = self.directory / TEACHER_METRICS
        self._ref = None
        if not (self.weights.is_file() and self.meta.is_file()):
            task = ray.remote(_train).options(
                num_cpus=config.resources.teacher_cpus, num_gpus=config.resources.teacher_gpus
            )
            self._ref = task.remote(config)

    def cancel(self) -> None:
        if self._ref is not None:
            ray.cancel(self._ref, force=True)
            self._ref = None

    def result(self) -> tuple[dict[str, Any], dict]:
        """(state dict of CPU tensors, metrics); trains nothing twice."""
        import torch  # here: the driver imports torch while the task runs, not before it

        if self._ref is None:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            return state, json.loads(self.meta.read_text())
        state, metrics = ray.get(self._ref)
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, write in (
            (self.weights, lambda p: torch.save(state, p)),
            (self.meta, lambda p: p.write_text(json.dumps(metrics, indent=1))),
        ):
            tmp = path.with_name(f".{path.name}.tmp")
            write(tmp)
            os.replace(tmp, path)  # a killed driver never leaves a half-written teacher
        self._ref = None
        return state, metrics
