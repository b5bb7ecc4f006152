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
import json
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator import faults
from orchestrator.config import Experiment

PLAN, WEIGHTS, STATE, MODEL, META, SEARCH_LOG, WIDTHS = (
    "plan.json",
    "weights.pt",
    "train_state.pt",
    "model.pt",
    "trial.json",
    "search.json",
    "widths.csv",
)
SEARCH_LOG_POINTS = 50  # the search curve is subsampled to this many steps


@dataclass(frozen=True)
class TrialParams:
    """The sampled (or fixed) values of one trial; names are the search-space fields."""

    mac_target: float
    sim_temperature: float
    init_mode: str
    init_scale: float
    mac_loss_weight: float
    search_lr: float
    logit_lr: float
    finetune_lr: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialParams:
        return cls(**{f.name: config[f.name] for f in fields(cls)})


def _search_config(exp: Experiment, p: TrialParams):
    import prune_core

    s = exp.search
    return prune_core.SearchConfig(
        target=p.mac_target,
        steps=s.steps,
        lr=p.search_lr,
        logit_lr=p.logit_lr,
        mac_loss_weight=p.mac_loss_weight,
        penalty=s.penalty,
        ramp_fraction=s.ramp_fraction,
        sim_temperature=p.sim_temperature,
        sim_every=s.sim_every,
        distill_alpha=s.distill_alpha,
        distill_temperature=s.distill_temperature,
        use_reweight=s.use_reweight,
        tolerance=s.tolerance,
        round_to=s.round_to,
        seed=exp.seed,
        weight_decay=s.weight_decay,
        logit_optimizer=s.logit_optimizer,
        mac_step=s.mac_step,
        reweight_lr=s.reweight_lr,
        similarity_to=s.similarity_to,
        qk_reweight_init=s.qk_reweight_init,
        groups=tuple(s.groups),
        min_width=dict(s.min_width),
    )


def finetune_config(exp: Experiment, p: TrialParams):
    import prune_core

    f = exp.finetune
    return prune_core.TrainConfig(
        epochs=f.epochs,
        lr=p.finetune_lr,
        weight_decay=f.weight_decay,
        warmup_epochs=f.warmup_epochs,
        label_smoothing=f.label_smoothing,
        distill_alpha=f.distill_alpha,
        distill_temperature=f.distill_temperature,
        seed=exp.seed,
    )


def _subsample(history: list[dict]) -> list[dict]:
    stride = max(1, len(history) // SEARCH_LOG_POINTS)
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


class Reporter:
    """Builds the result dicts (both objectives, always) and their checkpoint directories."""

    def __init__(
        self, plan_json: str, summary: dict[str, Any], search_log: list[dict], widths_csv: str = ""
    ) -> None:
        self.plan_json, self.summary, self.search_log = plan_json, summary, search_log
        self.widths_csv = widths_csv  # learned vs uniform widths per layer (widths.csv)

    def result(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {**self.summary, **metrics}

    def write(self, directory: str | Path, result: dict[str, Any], files: dict[str, Any]) -> None:
        """A checkpoint: the plan, the search curve, the result, and the given state dicts.

        ``trial.json`` is written last and lists every other file with its size: Tune copies
        the directory into storage file by file (in parallel), so a worker killed mid-copy
        leaves a directory that :func:`_read` must recognise as incomplete.
        """
        d = Path(directory)
        (d / PLAN).write_text(self.plan_json)
        (d / SEARCH_LOG).write_text(json.dumps(self.search_log))
        written = [PLAN, SEARCH_LOG]
        if self.widths_csv:
            (d / WIDTHS).write_text(self.widths_csv)
            written.append(WIDTHS)
        for name, obj in files.items():
            torch.save(obj, d / name)
        sizes = {name: (d / name).stat().st_size for name in (*written, *files)}
        (d / META).write_text(
            json.dumps({"summary": self.summary, "result": result, "files": sizes})
        )

    def report(self, metrics: dict[str, Any], files: dict[str, Any]) -> None:
        from ray import tune

        result = self.result(metrics)
        with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as tmp:
            self.write(tmp, result, files)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def _read(directory: Path) -> dict[str, Any]:
    """A checkpoint's contents; ValueError when it is incomplete (a copy cut short)."""
    meta = json.loads((directory / META).read_text())
    for name, size in meta.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            raise ValueError(f"{path}: missing or truncated (checkpoint incomplete)")
    out: dict[str, Any] = {
        "plan": (directory / PLAN).read_text(),
        "search_log": json.loads((directory / SEARCH_LOG).read_text()),
        "widths": (directory / WIDTHS).read_text() if (directory / WIDTHS).is_file() else "",
        **meta,
    }
    for name in (MODEL, STATE, WEIGHTS):
        if (directory / name).is_file():
            out[name] = torch.load(directory / name, map_location="cpu", weights_only=True)
    return out


def _newer_on_disk(checkpoint) -> list[Path]:
    """Checkpoints this trial persisted after the one Tune restored, newest first.

    Tune snapshots its experiment state every few seconds, so a driver killed just after a
    trial's last reports restores the trial at an older checkpoint although newer ones (even
    the final one) are already in storage. Resuming from those avoids repeating finished work.
    Local and mounted storage only; elsewhere Tune's choice stands.
    """
    if checkpoint is None or getattr(checkpoint.filesystem, "type_name", "") != "local":
        return []
    current = Path(checkpoint.path)
    try:
        index = int(current.name.rsplit("_", 1)[1])
        found = [(int(p.name.rsplit("_", 1)[1]), p) for p in current.parent.glob("checkpoint_*")]
    except (IndexError, ValueError):
        return []
    return [p for i, p in sorted(found, reverse=True) if i > index]


def _restore(checkpoint) -> dict[str, Any] | None:
    """Everything a restarted trial needs, read into memory from its latest checkpoint."""
    if checkpoint is None:
        return None
    for directory in _newer_on_disk(checkpoint):
        try:
            return {**_read(directory), "unreported": True}
        except (OSError, ValueError, RuntimeError, KeyError):  # cut short by the kill
            continue
    with checkpoint.as_directory() as tmp:
        return {**_read(Path(tmp)), "unreported": False}


def _search_phase(
    exp: Experiment,
    p: TrialParams,
    teacher: nn.Module,
    calib: torch.Tensor,
    train_loader,
    val_loader,
    full_macs: int,
) -> tuple[nn.Module, Reporter]:
    """Initialise, search, finalize, prune; report iteration 1 with the pruned model."""
    import prune_core

    student = copy.deepcopy(teacher)
    prune_core.initialize(
        student,
        calib,
        mode=p.init_mode,
        init_scale=p.init_scale,
        theta0=exp.search.theta0,
        sim_temperature=p.sim_temperature,
    )
    config = _search_config(exp, p)
    history = prune_core.search(
        student, train_loader, exp.input_size, config, teacher=teacher, calib=calib, progress=False
    )
    plan = prune_core.finalize(
        student,
        exp.input_size,
        p.mac_target,
        tolerance=config.tolerance,
        round_to=config.round_to,
        groups=config.groups,
        min_width=config.min_width,
    )
    from prune_core.widths import full_widths, rows_to_csv, width_rows

    uniform = prune_core.magnitude_plan(
        teacher, prune_core.uniform_keep(teacher, exp.input_size, p.mac_target)
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
    reporter = Reporter(plan.to_json(), summary, _subsample(history), rows_to_csv(widths))
    reporter.report(
        {"phase": "search", "epoch": 0, "top1": top1, "fully_trained": 0},
        {MODEL: student.state_dict()},
    )
    return student, reporter


def run_trial(
    config: dict[str, Any], *, experiment: Experiment, teacher_state: dict[str, torch.Tensor]
) -> None:
    """The Tune function: ``config`` holds the sampled parameters (plus Optuna constants)."""
    summary: dict[str, Any] = {}
    try:
        _run_trial(config, experiment, teacher_state, summary)
    except FloatingPointError as err:  # diverged: terminal, never retried
        report_failure(f"non-finite loss: {err}", summary)


def failure_result(reason: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A terminal result that says why; both objectives present (NaN top-1: Optuna FAIL)."""
    return {
        **summary,
        "phase": "failed",
        "failed": 1,
        "error": reason[:500],
        "top1": float("nan"),
        "macs": summary.get("macs", float("nan")),
        "fully_trained": 0,
    }


def report_failure(reason: str, summary: dict[str, Any]) -> None:
    from ray import tune

    tune.report(failure_result(reason, summary))


def _poison(model: nn.Module) -> None:
    """Fault injection (``nan``): a NaN weight makes the next loss NaN, as divergence would."""
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).fill_(float("nan"))


def _run_trial(
    config: dict[str, Any],
    experiment: Experiment,
    teacher_state: dict[str, torch.Tensor],
    summary_out: dict[str, Any],
) -> None:
    from ray import tune

    import prune_core
    from orchestrator.data import build_datasets, loaders
    from orchestrator.teacher import create_model, load_teacher

    exp, p = experiment, TrialParams.from_config(config)
    torch.set_num_threads(exp.resources.threads())
    datasets = build_datasets(exp)
    train_loader, val_loader = loaders(exp, datasets)
    teacher = load_teacher(exp, teacher_state).eval()
    full_macs = prune_core.count_macs(teacher, exp.input_size)

    saved = _restore(tune.get_checkpoint())
    resume_state = None
    if saved is None:
        student, reporter = _search_phase(
            exp, p, teacher, datasets.calib, train_loader, val_loader, full_macs
        )
    else:  # a restarted trial: rebuild the pruned model from its plan, skip the search
        reporter = Reporter(saved["plan"], saved["summary"], saved["search_log"], saved["widths"])
        if WEIGHTS in saved:  # it had finished; Tune may not know it yet: tell it, train nothing
            if saved["unreported"]:
                reporter.report(saved["result"], {WEIGHTS: saved[WEIGHTS]})
            return
        if saved["unreported"]:  # persisted, but its report never reached Tune: tell it now,
            # or that epoch is missing from the trial's results (the run then goes on after it)
            files = {STATE: saved[STATE]} if STATE in saved else {MODEL: saved[MODEL]}
            reporter.report(saved["result"], files)
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
        from orchestrator.finetune_dp import finetune_data_parallel

        finetune_data_parallel(exp, p, reporter, student, teacher_state)
        return

    epochs = exp.finetune.epochs

    def on_epoch(epoch: int, metrics: dict, state: dict) -> None:
        if epoch < epochs - 1:  # the last epoch is reported with the final evaluation
            reporter.report(
                {
                    "phase": "finetune",
                    "epoch": epoch + 1,
                    "top1": metrics["top1"],
                    "train_loss": metrics["train_loss"],
                    "lr": metrics["lr"],
                    "fully_trained": 0,
                },
                {STATE: state},
            )
            faults.inject("epoch_end", epoch + 1, trial_id)

    history = prune_core.train(
        student,
        train_loader,
        finetune_config(exp, p),
        teacher=teacher,
        eval_loader=val_loader,
        on_epoch=on_epoch,
        resume_state=resume_state,
        progress=False,
    )
    final = prune_core.evaluate(student, val_loader, exp.input_size)
    report_final(reporter, final, history[-1] if history else {}, student, epochs)


def report_final(
    reporter: Reporter, final: dict, last_epoch: dict, student: nn.Module, epochs: int
) -> None:
    """The last report: final metrics and the portable pruned model (plan.json + weights.pt)."""
    metrics = {
        "phase": "done",
        "epoch": epochs,
        "top1": final["top1"],
        "macs": final["macs"],
        "params": final["params"],
        "throughput": final["throughput"],
        "train_loss": last_epoch.get("train_loss", float("nan")),
        "fully_trained": 1,
    }
    reporter.report(metrics, {WEIGHTS: student.state_dict()})
