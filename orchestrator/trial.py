"""One trial: calibrate + initialise -> search -> finalize -> prune -> fine-tune -> evaluate.

A Ray Tune function trainable. Every report carries both objectives (``top1``, ``macs``),
because OptunaSearch tells the study the *last* reported values and a report missing one of
them leaves an orphan RUNNING Optuna trial. Iteration 1 is the search (top-1 of the pruned,
not yet fine-tuned model); iterations 2..E+1 are fine-tune epochs; the last one also carries
``params``, ``throughput`` and ``fully_trained = 1``. ASHA may stop a trial at any iteration,
and Optuna records such a trial as COMPLETE with partial values, so ``fully_trained`` is what
the Pareto front filters on.

Every report saves a checkpoint (the plan plus the model or the whole fine-tune state), so a
trial restarted on another node resumes after its last finished epoch and never repeats the
search. The final checkpoint holds ``plan.json`` + ``weights.pt`` (prune_core's portable format)
and ``search.json`` (the search curve), which the driver logs to MLflow.

A non-finite loss (search or fine-tune: prune_core raises FloatingPointError) is not retried:
the same parameters would diverge again, and ``FailureConfig`` would spend every retry on it.
The trial instead reports a terminal result with ``failed = 1``, ``error`` (the reason) and
``top1 = NaN`` (Optuna records the trial as FAIL) and returns; the driver marks its MLflow run
FAILED with the reason. Any other exception propagates and is retried from the checkpoint.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import ray
import torch
from ray import tune
from torch import nn

import prune_core
from orchestrator import faults
from orchestrator.checkpoint import (
    MODEL,
    STATE,
    WEIGHTS,
    Reporter,
    epoch_metrics,
    final_metrics,
    report_failure,
    restore,
    saved_files,
    subsample_search_log,
)
from orchestrator.data import build_datasets, loaders
from orchestrator.model import create_model, load_teacher
from orchestrator.schema import Experiment
from orchestrator.trial_settings import finetune_config, search_config
from prune_core.widths import full_widths, rows_to_csv, width_rows


def _search_phase(
    exp: Experiment,
    config: prune_core.SearchConfig,
    teacher: nn.Module,
    calib: torch.Tensor,
    train_loader,
    val_loader,
    full_macs: int,
    teacher_wait_s: float,
) -> tuple[nn.Module, Reporter]:
    """Initialise, search, finalize, prune; report iteration 1 with the pruned model."""

    student = copy.deepcopy(teacher)
    plan, history = prune_core.search_plan(
        student,
        train_loader,
        exp.input_size,
        config,
        calib=calib,
        teacher=teacher,
        progress=False,
    )

    uniform = prune_core.magnitude_plan(
        teacher, prune_core.uniform_keep(teacher, exp.input_size, config.target)
    )
    widths = width_rows(plan, full_widths(teacher), reference=uniform)
    prune_core.prune(student)
    macs = prune_core.count_macs(student, exp.input_size)
    top1 = prune_core.accuracy(student, val_loader)
    summary = {
        "macs": macs,
        "macs_ratio": macs / full_macs,
        "pruned_top1": top1,
        "search_final_loss": history[-1]["loss"],
        "search_soft_ratio": history[-1]["soft_ratio"],
    }
    reporter = Reporter(plan.to_json(), summary, subsample_search_log(history), rows_to_csv(widths))
    reporter.report(
        {
            "phase": "search",
            "epoch": 0,
            "top1": top1,
            "fully_trained": 0,
            "teacher_wait_s": teacher_wait_s,
        },
        {MODEL: student.state_dict()},
    )
    return student, reporter


def run_trial(
    config: dict[str, Any], *, experiment: Experiment, teacher: list[ray.ObjectRef]
) -> None:
    """The Tune function: ``config`` holds the parameters by section (``config["search"]``),
    sampled or fixed (Optuna constants); orchestrator.trial_settings makes prune_core's configs.
    ``teacher`` holds one reference to the teacher's state dict, which may still be training
    (teacher_job.py): the trial waits for it first, and its first report says how long
    (``teacher_wait_s``; the trial's own work is Tune's ``time_total_s`` less that)."""
    summary: dict[str, Any] = {}
    try:
        _run_trial(config, experiment, teacher[0], summary)
    except FloatingPointError as err:  # diverged: terminal, never retried
        report_failure(f"non-finite loss: {err}", summary)


def _poison(model: nn.Module) -> None:
    """Fault injection (``nan``): a NaN weight makes the next loss NaN, as divergence would."""
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).fill_(float("nan"))


def _run_trial(
    config: dict[str, Any],
    experiment: Experiment,
    teacher_ref: ray.ObjectRef,
    summary_out: dict[str, Any],
) -> None:

    exp = experiment
    # first, before any work: the wait is then exactly the part of Tune's time_total_s that
    # is not the trial's own work (benchmarks/sweep_efficiency.py subtracts it)
    waiting = time.perf_counter()
    teacher_state = ray.get(teacher_ref)  # the teacher's task error, if it failed
    waited = time.perf_counter() - waiting
    search, finetune = search_config(exp, config), finetune_config(exp, config)
    torch.set_num_threads(exp.resources.threads())
    datasets = build_datasets(exp)
    train_loader, val_loader = loaders(exp, datasets)
    teacher = load_teacher(exp, teacher_state).eval()
    full_macs = prune_core.count_macs(teacher, exp.input_size)

    saved = restore(tune.get_checkpoint())
    resume_state = None
    if saved is None:
        student, reporter = _search_phase(
            exp, search, teacher, datasets.calib, train_loader, val_loader, full_macs, waited
        )
    else:  # a restarted trial: rebuild the pruned model from its plan, skip the search
        reporter = Reporter(saved["plan"], saved["summary"], saved["search_log"], saved["widths"])
        for old in saved["unreported"]:  # persisted, but their reports never reached Tune:
            # tell it now, in order, or those epochs are missing from the trial's results
            reporter.report(old["result"], saved_files(old))
        if WEIGHTS in saved:  # it had finished (Tune knows it now): train nothing
            return
        weights = saved[STATE]["model"] if STATE in saved else saved[MODEL]
        student = prune_core.load_pruned(
            create_model(exp, load_checkpoint=False),
            prune_core.Plan.from_json(saved["plan"]),
            weights,
        )
        prune_core.set_reweight_trainable(student, exp.search.use_reweight)
        resume_state = saved.get(STATE)
    summary_out.update(reporter.summary)
    trial_id = tune.get_context().get_trial_id()
    if faults.inject("before_finetune", 0, trial_id) == "nan":
        _poison(student)

    if exp.finetune.workers > 1:
        # here: only data-parallel trials pay for importing Ray Train (~1 s per trial start)
        from orchestrator.finetune_dp import finetune_data_parallel

        finetune_data_parallel(exp, finetune, reporter, student, teacher_state)
        return

    epochs = exp.finetune.epochs

    def on_epoch(epoch: int, metrics: dict, state: dict) -> None:
        if epoch < epochs - 1:  # the last epoch is reported with the final evaluation
            reporter.report(epoch_metrics(epoch, metrics, metrics["top1"]), {STATE: state})
            faults.inject("epoch_end", epoch + 1, trial_id)

    history = prune_core.train(
        student,
        train_loader,
        finetune,
        teacher=teacher,
        eval_loader=val_loader,
        on_epoch=on_epoch,
        resume_state=resume_state,
        progress=False,
    )
    final = prune_core.evaluate(student, val_loader, exp.input_size)
    last_epoch = history[-1] if history else {}
    reporter.report(final_metrics(final, last_epoch, epochs), {WEIGHTS: student.state_dict()})
