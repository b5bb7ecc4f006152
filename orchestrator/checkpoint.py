"""The checkpoint and report protocol every trial process follows (single and data-parallel).

A trial reports once after the search (iteration 1: the pruned model before fine-tuning), once
per fine-tune epoch, and once at the end; every report carries both objectives (``top1``,
``macs``), because OptunaSearch tells the study the *last* reported values and a report missing
one of them leaves an orphan RUNNING Optuna trial. Every report saves a checkpoint directory:

- ``plan.json`` (the pruning plan), ``search.json`` (the search curve, subsampled),
  ``widths.csv`` (learned vs uniform widths per layer);
- one of ``model.pt`` (the pruned model after the search), ``train_state.pt`` (model,
  optimiser, scheduler, epoch: the fine-tune state) or ``weights.pt`` (the final weights:
  ``plan.json`` + ``weights.pt`` is prune_core's portable format);
- ``trial.json`` last, listing every other file with its size, so that a copy cut short by a
  killed worker is recognised as incomplete (``read_checkpoint`` raises ValueError).

``epoch_metrics`` and ``final_metrics`` build the per-epoch and final result dicts for both the
single-process trial (``trial.py``) and the data-parallel fine-tune (``finetune_dp.py``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from orchestrator.schema import REPORTED_METRICS

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


def subsample_search_log(history: list[dict]) -> list[dict]:
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

    def with_summary(self, **extra: Any) -> Reporter:
        """A copy whose summary also holds ``extra`` (every other field kept: the data-parallel
        workers once rebuilt a Reporter field by field and lost ``widths.csv``)."""
        return Reporter(self.plan_json, {**self.summary, **extra}, self.search_log, self.widths_csv)

    def write(self, directory: str | Path, result: dict[str, Any], files: dict[str, Any]) -> None:
        """A checkpoint: the plan, the search curve, the result, and the given state dicts.

        ``trial.json`` is written last and lists every other file with its size: Tune copies
        the directory into storage file by file (in parallel), so a worker killed mid-copy
        leaves a directory that :func:`read_checkpoint` must recognise as incomplete.
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
        """Send a result and its checkpoint to Tune (``check_reported`` first)."""
        result = check_reported(self.result(metrics))
        with tempfile.TemporaryDirectory(prefix="trial-ckpt-") as tmp:
            self.write(tmp, result, files)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def check_reported(result: dict[str, Any]) -> dict[str, Any]:
    """``result``, or RuntimeError when it lacks one of ``schema.REPORTED_METRICS``: the config
    check promised those to ASHA, and Tune would stop the whole sweep at the first gap."""
    missing = [name for name in REPORTED_METRICS if name not in result]
    if missing:
        raise RuntimeError(f"a trial report lacks {missing} (schema.REPORTED_METRICS)")
    return result


def read_checkpoint(directory: Path) -> dict[str, Any]:
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


def newer_on_disk(checkpoint) -> list[Path]:
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


def restore(checkpoint) -> dict[str, Any] | None:
    """Everything a restarted trial needs, read into memory from its latest checkpoint.

    ``unreported`` lists the checkpoints persisted after the one Tune restored, oldest first:
    the trial reports each again, in order, so that Tune numbers them as the first driver did
    (re-reporting only the newest gave the final result the iteration of an epoch whose
    report Tune had lost, and MLflow, which had that epoch, kept it as the last one).
    """
    if checkpoint is None:
        return None
    newer = []
    for directory in newer_on_disk(checkpoint):
        try:
            newer.append(read_checkpoint(directory))
        except (OSError, ValueError, RuntimeError, KeyError):  # cut short by the kill
            continue
    if newer:
        return {**newer[0], "unreported": newer[::-1]}
    with checkpoint.as_directory() as tmp:
        return {**read_checkpoint(Path(tmp)), "unreported": []}


def saved_files(saved: dict[str, Any]) -> dict[str, Any]:
    """The state a checkpoint read by :func:`restore` held, to report it again."""
    return {name: saved[name] for name in (WEIGHTS, STATE, MODEL) if name in saved}


def epoch_metrics(epoch: int, metrics: dict[str, Any], top1: float) -> dict[str, Any]:
    """The report after fine-tune epoch ``epoch`` (0-based) that is not the last one."""
    return {
        "phase": "finetune",
        "epoch": epoch + 1,
        "top1": top1,
        "train_loss": metrics["train_loss"],
        "lr": metrics["lr"],
        "fully_trained": 0,
    }


def final_metrics(final: dict[str, Any], last_epoch: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The last report: ``final`` from ``prune_core.evaluate`` (top1 %, MACs, params, img/s)."""
    return {
        "phase": "done",
        "epoch": epochs,
        "top1": final["top1"],
        "macs": final["macs"],
        "params": final["params"],
        "throughput": final["throughput"],
        "train_loss": last_epoch.get("train_loss", float("nan")),
        "fully_trained": 1,
    }


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

    tune.report(failure_result(reason, summary))
