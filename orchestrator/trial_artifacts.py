"""What a finished trial leaves on its MLflow child run: its plan, weights, search curve and
the plot of its learned widths, read from the trial's last Tune checkpoint (found by
:func:`checkpoint_uri`), or the reason it failed (:func:`error_reason`)."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from ray.tune import Checkpoint

from orchestrator.tracking import ARTIFACTS, client, first_line
from prune_core.widths import plot_widths


def log_trial_artifacts(
    uri: str, run_id: str, trial_id: str, checkpoint_uri: str | None, result: dict
) -> None:
    """plan.json, weights.pt (fully trained trials only), search.json, widths.csv and
    widths.png (titled with Tune's ``trial_id``) from the trial's last checkpoint (a local path
    or a storage URI) on the child run ``run_id``."""
    if result.get("checkpoint_path"):  # reported by a Ray Train (data-parallel) fine-tune
        checkpoint_uri = result["checkpoint_path"]
    if not checkpoint_uri:
        return
    with Checkpoint(checkpoint_uri).as_directory() as d:
        for name in ARTIFACTS:
            if name == "weights.pt" and not result.get("fully_trained"):
                continue
            if (Path(d) / name).is_file():
                client(uri).log_artifact(run_id, str(Path(d) / name))
        if (Path(d) / "widths.csv").is_file():
            log_widths_plot(uri, run_id, trial_id, Path(d) / "widths.csv")


def log_widths_plot(uri: str, run_id: str, trial_id: str, csv_path: Path) -> None:
    """widths.png (learned vs uniform keep fraction per layer) from a trial's widths.csv,
    titled with the trial's Tune id, as the console, the tables and the plots name it."""
    with csv_path.open() as f:
        rows = [
            {
                **r,
                "keep_fraction": float(r["keep_fraction"]),
                "reference_fraction": float(r["reference_fraction"] or 0.0),
            }
            for r in csv.DictReader(f)
        ]
    with tempfile.TemporaryDirectory(prefix="widths-") as tmp:
        png = plot_widths(
            rows, Path(tmp) / "widths.png", title=f"learned widths (trial {trial_id})"
        )
        client(uri).log_artifact(run_id, str(png))


def checkpoint_uri(checkpoint, storage_uri: str = "") -> str | None:
    """Where a checkpoint lives, as a URI a later process (a replay) can open again.

    The storage URI's pyarrow options (``?endpoint_override=...``) are carried over, so a
    checkpoint on an S3-compatible store (MinIO) opens against the same endpoint.
    """
    if checkpoint is None:
        return None
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    if kind == "local":
        return str(checkpoint.path)
    _, sep, query = storage_uri.partition("?")
    return f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}{sep}{query}"


def error_reason(trial) -> str:
    """The trial's exception, one line (the cause, not Ray's wrapper), for the run's tags."""
    try:
        err = trial.get_pickled_error()
    except Exception:  # any error, on purpose
        err = None
    if err is not None:
        return first_line(getattr(err, "cause", None) or err)
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"
