"""The unpruned model of a sweep: built, loaded or trained once, then shared by every trial.

It is both where every trial starts (the weights to prune) and the distillation teacher. It is
trained (or loaded) in one Ray task, with the teacher's resources (``train_teacher``, started
and stored by ``teacher_job.TeacherJob``), and written to the sweep's storage as
``teacher/teacher.pt`` plus ``teacher/teacher.json``. A resumed sweep never retrains.
The driver hands the state dict to the trials through the object store
(``tune.with_parameters``), so trials on other nodes need no shared file system for it.
"""

from __future__ import annotations

import torch

import prune_core
from orchestrator import faults
from orchestrator.data import build_datasets, loaders
from orchestrator.model import create_model
from orchestrator.schema import Experiment
from orchestrator.trial_settings import teacher_config


def train_teacher(config: Experiment) -> tuple[dict[str, torch.Tensor], dict]:
    """Runs inside the teacher's Ray task (orchestrator.teacher_job): build/load, train if
    asked, evaluate. Returns (state dict of CPU tensors, metrics)."""

    torch.set_num_threads(config.resources.threads(config.resources.teacher_cpus))
    datasets = build_datasets(config)
    train_loader, val_loader = loaders(config, datasets)
    model = create_model(config)
    t = config.teacher

    def on_epoch(epoch: int, metrics: dict, state: dict) -> None:
        print(
            f"teacher epoch {epoch + 1}/{t.epochs}: loss {metrics['train_loss']:.3f}", flush=True
        )  # reaches the driver's console through Ray's log forwarding

    if t.epochs:
        prune_core.train(
            model,
            train_loader,
            teacher_config(config),
            on_epoch=on_epoch,
            progress=False,
        )
    metrics = prune_core.evaluate(model, val_loader, config.input_size)
    metrics["epochs"] = t.epochs
    faults.inject("teacher")  # chaos tests: a teacher that fails after its trials started
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, metrics
