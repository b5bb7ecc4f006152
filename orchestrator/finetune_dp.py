"""Data-parallel fine-tune of one trial's pruned model with Ray Train (V2) inside the trial.

Ray Train V2 cannot be handed to ``Tuner`` (``Tuner(trainer)`` fails), so the Tune function
runs a ``TorchTrainer`` itself and ``TuneReportCallback`` forwards rank 0's reports (metrics
plus ``checkpoint_path``) to Tune. The trial keeps its own search GPU while the trainer's
workers take ``finetune.workers`` more, so size ``max_concurrent_trials`` to leave them room.

Resuming: the trainer's run is named after the trial and stored under the sweep directory, and
Ray Train V2 reloads a run's checkpoint state when a run of the same name and storage path is
started again, so a restarted trial re-enters the fine-tune at its last epoch (the search is
skipped through the trial's own Tune checkpoint). Rank 0 alone evaluates, on the unwrapped
model (a DDP forward on one rank only would wait forever for the others). A non-finite loss
ends the fine-tune with a terminal ``failed`` result, as in a single-process trial: retrying
the same parameters would diverge again.
"""

from __future__ import annotations

import tempfile
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

import prune_core
from orchestrator.checkpoint import (
    STATE,
    WEIGHTS,
    Reporter,
    check_reported,
    epoch_metrics,
    failure_result,
    final_metrics,
    read_verified,
)
from orchestrator.data import build_datasets, loaders
from orchestrator.model import create_model, load_teacher
from orchestrator.schema import Experiment


def finetune_data_parallel(
    exp: Experiment,
    finetune: prune_core.TrainConfig,
    reporter: Reporter,
    student: torch.nn.Module,
    teacher_state: dict,
) -> None:
    """Run the fine-tune on ``exp.finetune.workers`` Ray Train workers; blocks until done."""

    r = exp.resources
    trial_id = tune.get_context().get_trial_id()
    loop_config = {
        "experiment": exp,
        "finetune": finetune,
        "reporter": reporter,  # whole: plan, summary, search log and widths.csv
        "student": ray.put({k: v.cpu() for k, v in student.state_dict().items()}),
        "teacher": ray.put(teacher_state),
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=exp.finetune.workers,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker={"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=f"finetune_{trial_id}",
            storage_path=f"{exp.tune_dir}/finetune",
            failure_config=ray.train.FailureConfig(max_failures=exp.sweep.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _worker_loop(cfg: dict[str, Any]) -> None:
    """One data-parallel worker: rebuild the pruned model, fine-tune, rank 0 reports + saves."""

    exp: Experiment = cfg["experiment"]
    finetune: prune_core.TrainConfig = cfg["finetune"]
    torch.set_num_threads(exp.resources.threads(exp.resources.cpus_per_worker))
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    student = prune_core.load_pruned(
        create_model(exp, load_checkpoint=False),
        prune_core.Plan.from_json(cfg["reporter"].plan_json),
        ray.get(cfg["student"]),
    )
    prune_core.set_reweight_trainable(student, exp.search.use_reweight)  # the switch holds here too
    teacher = load_teacher(exp, ray.get(cfg["teacher"])).to(device).eval()
    datasets = build_datasets(exp, distributed=True)
    train_loader, val_loader = loaders(exp, datasets)
    if not isinstance(datasets.train, torch.utils.data.IterableDataset):
        train_loader = ray.train.torch.prepare_data_loader(train_loader)  # DistributedSampler
    for module in prune_core.prunable_modules(student).values():
        module.gates.requires_grad_(False)  # pruned: unused, and DDP rejects unused parameters
    model = ray.train.torch.prepare_model(student)
    plain = model.module if hasattr(model, "module") else model
    resume_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # verified against its manifest, else the older kept one
        saved = read_verified(checkpoint)
        resume_state = None if saved is None else saved.get(STATE)
    epochs = exp.finetune.epochs

    reporter: Reporter = cfg["reporter"].with_summary(
        finetune_workers=ray.train.get_context().get_world_size()
    )

    def report(metrics: dict, files: dict | None) -> None:
        """Every rank reports (a collective); rank 0's metrics and checkpoint reach Tune."""
        result = reporter.result(metrics)
        if rank != 0 or files is None:
            ray.train.report(result)
            return
        check_reported(result)  # rank 0's reports are the ones Tune sees
        with tempfile.TemporaryDirectory(prefix="dp-ckpt-") as tmp:
            reporter.write(tmp, result, files)
            ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def on_epoch(epoch: int, metrics: dict, state: dict) -> None:
        if epoch == epochs - 1:
            return  # reported with the final evaluation
        top1 = prune_core.accuracy(plain, val_loader, device) if rank == 0 else float("nan")
        report(epoch_metrics(epoch, metrics, top1), {STATE: state})

    try:
        history = prune_core.train(
            model,
            train_loader,
            finetune,
            teacher=teacher,
            device=device,
            on_epoch=on_epoch,
            resume_state=resume_state,
            progress=False,
        )
    except FloatingPointError as err:
        # Every rank raises at the same step (train agrees on finiteness across ranks), so
        # every rank reports: a terminal failure instead of an error Ray Train would retry.
        ray.train.report(failure_result(f"non-finite loss: {err}", reporter.summary))
        return
    if rank == 0:
        final = prune_core.evaluate(plain, val_loader, exp.input_size, device=device)
        last = history[-1] if history else {}
        report(final_metrics(final, last, epochs), {WEIGHTS: plain.state_dict()})
    else:
        report({"phase": "done", "epoch": epochs, "fully_trained": 1}, None)
