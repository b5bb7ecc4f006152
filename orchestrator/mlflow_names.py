"""The names a sweep writes in MLflow, with their units, and the old names read back.

**Metrics.** Trials report to Tune under short keys (``top1``, ``macs``, ...): the Optuna
objectives, ASHA's metric, the columns of ``trials.parquet`` / ``pareto.parquet`` and what
``orchestrator.pick`` / ``report`` / ``importance`` read all keep them. Only MLflow sees the
names of :data:`MLFLOW_METRICS`, which say what a number is and in which unit: the suffix is
the unit (``_pct`` percent, ``_ratio`` a fraction of the unpruned model, ``_count`` a plain
count, ``_ms`` milliseconds, ``_x`` a factor, ``_img_per_s`` images per second, ``_s``
seconds); a name without one is unitless (a loss, a learning rate, a 0/1 flag). The
teacher's numbers on the parent run carry the same names after ``teacher_``.

Everything that reads MLflow back (the trials table after ``--resume``, ``trial_rows``,
``report``, ``pick``) goes through :func:`tune_metrics` / :func:`teacher_metrics`, which take
both the new names and those sweeps logged before them (``top1``, ``pruned_top1``, ``lr``,
...): a sweep started with older code resumes and reports as before.

**trial_status** (a child run's tag): ``running``, then ``complete`` (the whole fine-tune),
``early_stopped`` (stopped by ASHA before its last epoch: its ``top1_pct`` is from a partial
fine-tune) or ``failed`` (raised, NaN loss, unreachable target), or ``lost`` (Tune lost the
trial with a killed driver). MLflow's own run status says FINISHED for the first two alike.
Older sweeps wrote Tune's statuses (``RUNNING``, ``TERMINATED``, ``ERROR``, ``LOST``);
:func:`tune_status` reads either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Tune's result key -> its MLflow metric name; a key not listed keeps its name.
MLFLOW_METRICS = {
    "top1": "top1_pct",  # validation top-1 accuracy, %
    "pruned_top1": "top1_before_finetune_pct",  # right after pruning, before the fine-tune
    "macs": "macs_count",  # multiply-accumulates of one image's forward pass
    "params": "params_count",
    "throughput": "throughput_img_per_s",  # measured by the trial, cores shared: indicative
    "lr": "finetune_lr_final",  # the scheduled learning rate at the end of each epoch
    "search_final_loss": "search_loss_final",
    "search_soft_ratio": "search_macs_ratio_soft",  # the search's differentiable MAC ratio
}
# Logged on the front's child runs once the front is timed (speed.py).
SPEED_METRICS = {"latency_ms": "latency_ms", "speedup": "speedup_x"}
_TUNE_KEYS = {v: k for k, v in {**MLFLOW_METRICS, **SPEED_METRICS}.items()}

STATUS_TAG = "trial_status"
RUNNING, COMPLETE, EARLY_STOPPED, FAILED, LOST = (
    "running",
    "complete",
    "early_stopped",
    "failed",
    "lost",
)
# trial_status -> Tune's status (the ``status`` column of trials.parquet); the old values too
_TUNE_STATUS = {
    RUNNING: "RUNNING",
    COMPLETE: "TERMINATED",
    EARLY_STOPPED: "TERMINATED",
    FAILED: "ERROR",
    LOST: "LOST",
}


def mlflow_metric(key: str) -> str:
    """The MLflow name of Tune's result key ``key`` (``top1`` -> ``top1_pct``)."""
    return MLFLOW_METRICS.get(key, key)


def tune_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A child run's metrics under Tune's keys, from the new names or the old ones (a run
    that holds both, resumed across the rename, gives the new name's value)."""
    out = {k: v for k, v in metrics.items() if k not in _TUNE_KEYS}
    out.update({_TUNE_KEYS[k]: v for k, v in metrics.items() if k in _TUNE_KEYS})
    return out


def teacher_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The teacher's numbers from a parent run's ``teacher_*`` metrics, under Tune's keys
    (``top1``, ``macs``, ``latency_ms``, ...); non-finite values are left out."""
    found = {
        k.removeprefix("teacher_"): float(v)
        for k, v in metrics.items()
        if k.startswith("teacher_") and isinstance(v, (int, float)) and math.isfinite(v)
    }
    return tune_metrics(found)


def trial_status(result: Mapping[str, Any] | None, error: bool) -> str:
    """``complete``, ``early_stopped`` or ``failed``, from an ended trial's last result
    (``error``: Tune ended it in error)."""
    if error or not result or result.get("failed"):
        return FAILED
    top1 = result.get("top1")
    if not isinstance(top1, (int, float)) or not math.isfinite(top1):
        return FAILED
    return COMPLETE if result.get("fully_trained") else EARLY_STOPPED


def tune_status(tag: str | None) -> str | None:
    """Tune's status (``RUNNING``, ``TERMINATED``, ``ERROR``, ``LOST``) from a
    ``trial_status`` tag, new or old; None for None."""
    if tag is None:
        return None
    return _TUNE_STATUS.get(tag, tag)


def is_lost(tag: str | None) -> bool:
    """Whether a ``trial_status`` tag marks a run Tune lost (``lost``, or the old ``LOST``)."""
    return tune_status(tag) == "LOST"


def param_text(value) -> str:
    """A sampled value as an MLflow param: a float to 4 significant digits (``0.0004131``,
    not ``0.000413108993050043``: the runs table and parallel coordinates show the number a
    person compares), anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
