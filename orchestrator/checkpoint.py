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
- ``trial.json`` last, the manifest: every other file with its size and sha256, so that a copy
  cut short by a killed worker, or a file changed on disk or in the bucket afterwards, is
  recognised (``read_checkpoint`` raises ValueError) and the trial resumes from the older kept
  checkpoint instead (``restore``; Tune keeps two, ``tuner.py``).

``epoch_metrics`` and ``final_metrics`` build the per-epoch and final result dicts for both the
single-process trial (``trial.py``) and the data-parallel fine-tune (``finetune_dp.py``).
"""

from __future__ import annotations

import hashlib
import json
import sys
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


def sha256_file(path: Path) -> str:
    """The file's sha256, hex (read in 1 MiB blocks: weights can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

        ``trial.json`` is written last and lists every other file with its size and sha256:
        Tune copies the directory into storage file by file (in parallel), so a worker killed
        mid-copy leaves a directory that :func:`read_checkpoint` must recognise as incomplete,
        and a file altered later (a bad disk, a bucket object overwritten) must not be loaded.
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
        manifest = {
            name: {"size": (d / name).stat().st_size, "sha256": sha256_file(d / name)}
            for name in (*written, *files)
        }
        (d / META).write_text(
            json.dumps({"summary": self.summary, "result": result, "files": manifest})
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


def verify_manifest(directory: Path, files: dict[str, Any]) -> None:
    """ValueError naming the first file of ``files`` (trial.json's manifest) that is missing,
    of another size, or whose sha256 differs. Entries that are a bare size (checkpoints
    written before the sha256 was recorded) are checked by size alone."""
    for name, entry in files.items():
        path = directory / name
        if not isinstance(entry, dict):
            entry = {"size": entry}
        if Path(name).name != name:  # the manifest is data read back: names stay inside
            raise ValueError(f"{directory / META}: file name {name!r} is not a plain name")
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise ValueError(f"{path}: missing or truncated (checkpoint incomplete)")
        if "sha256" in entry and sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the manifest (checkpoint corrupted)")


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """A checkpoint's contents, verified against its manifest (:func:`verify_manifest`).

    Raises ValueError when it is incomplete (a copy cut short) or corrupted; OSError, KeyError
    or JSONDecodeError (a ValueError) when ``trial.json`` itself is missing or torn.
    """
    meta = json.loads((directory / META).read_text())
    verify_manifest(directory, meta.get("files", {}))
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


def _index(path: str) -> int | None:
    """N of a ``checkpoint_N`` directory name, else None."""
    prefix, _, number = path.rstrip("/").rpartition("/")[2].rpartition("_")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def _siblings(checkpoint) -> list[tuple[int, str]]:
    """(N, path) of every ``checkpoint_N`` beside ``checkpoint`` in its storage (any pyarrow
    filesystem: local, mounted, S3), N ascending; [] when they cannot be listed."""
    import pyarrow.fs

    parent = checkpoint.path.rstrip("/").rpartition("/")[0]
    try:
        infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    except (OSError, ValueError):
        return []
    found = [(_index(i.path), i.path) for i in infos if i.type == pyarrow.fs.FileType.Directory]
    return sorted((n, path) for n, path in found if n is not None)


def newer_on_disk(checkpoint) -> list[Path]:
    """Checkpoints this trial persisted after the one Tune restored, newest first.

    Tune snapshots its experiment state every few seconds, so a driver killed just after a
    trial's last reports restores the trial at an older checkpoint although newer ones (even
    the final one) are already in storage. Resuming from those avoids repeating finished work.
    Local and mounted storage only; elsewhere Tune's choice stands.
    """
    if checkpoint is None or getattr(checkpoint.filesystem, "type_name", "") != "local":
        return []
    current = _index(checkpoint.path)
    if current is None:
        return []
    return [Path(path) for n, path in reversed(_siblings(checkpoint)) if n > current]


def read_verified(checkpoint) -> dict[str, Any] | None:
    """The contents of ``checkpoint``, or, when it fails verification, of the newest older
    kept one that passes (Tune keeps two); None when none does. Each rejected one is named
    on stderr (the trial's log): a corrupted checkpoint is never loaded, and never silently
    skipped either. Works on any storage Tune writes to.
    """
    from ray.tune import Checkpoint

    current = _index(checkpoint.path)
    kept = [] if current is None else reversed(_siblings(checkpoint))
    older = [Checkpoint(p, filesystem=checkpoint.filesystem) for n, p in kept if n < current]
    for candidate in [checkpoint, *older]:
        try:
            with candidate.as_directory() as tmp:
                return read_checkpoint(Path(tmp))
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            print(f"checkpoint {candidate.path} rejected: {err}", file=sys.stderr, flush=True)
    return None


def restore(checkpoint) -> dict[str, Any] | None:
    """Everything a restarted trial needs, read into memory from its latest intact checkpoint.

    ``unreported`` lists the checkpoints persisted after the one Tune restored, oldest first:
    the trial reports each again, in order, so that Tune numbers them as the first driver did
    (re-reporting only the newest gave the final result the iteration of an epoch whose
    report Tune had lost, and MLflow, which had that epoch, kept it as the last one). When
    Tune's checkpoint fails verification the older kept one is used (its later epochs run
    again); when none passes, None: the trial starts over from its search.
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
    saved = read_verified(checkpoint)
    if saved is None:
        print("no intact checkpoint: the trial starts over", file=sys.stderr, flush=True)
        return None
    return {**saved, "unreported": []}


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
