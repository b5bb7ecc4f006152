"""The driver's last lines: how the trials ended, where the tables are, where MLflow shows them.

After the timed front table (speed.py) the driver prints the trial counts (complete, stopped
early by ASHA, failed), the hypervolume, the sweep folder, and, after the parameter
importances, the parent run and the command + URL that open its runs table (mlflow_ui.py).
The hypervolume per finished trial is also drawn (``hypervolume.png``, from the parent run's
``hypervolume`` metric: the curve MLflow charts against an unlabelled "Step").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import mlflow_ui
from orchestrator.sweep_state import SWEEP_STATE


@dataclass(frozen=True)
class Counts:
    complete: int  # finished the whole fine-tune: may enter the front
    stopped: int  # stopped early by ASHA: a partial fine-tune, never on the front
    failed: int  # raised, NaN, unreachable target: after its retries

    @property
    def total(self) -> int:
        return self.complete + self.stopped + self.failed


def counts(results: Iterable[Any]) -> Counts:
    """Count a Tune ResultGrid's trials (anything with ``.error`` and ``.metrics``)."""
    complete = stopped = failed = 0
    for result in results:
        metrics = result.metrics or {}
        if result.error is not None or metrics.get("failed"):
            failed += 1
        elif metrics.get("fully_trained"):
            complete += 1
        else:
            stopped += 1
    return Counts(complete, stopped, failed)


def headline(c: Counts, seconds: float, hypervolume: float, sweep_dir: Path) -> list[str]:
    """``16 trials in 310 s: 8 complete, 8 stopped early (ASHA), 0 failed``, the hypervolume
    and what it measures, the folder."""
    return [
        f"{c.total} trials in {seconds:.0f} s: {c.complete} complete, {c.stopped} stopped early "
        f"(ASHA), {c.failed} failed",
        f"hypervolume {hypervolume:.4f}: the share of the MAC ratio × top-1 square that the "
        "front dominates (1 is best)",
        f"tables and plots in {sweep_dir}: pareto.html (hover a point: its trial and run), "
        "pareto.csv, pareto.png, speedup.png, hypervolume.png, *.parquet",
    ]


def experiment_id(sweep_dir: Path) -> str | None:
    """The MLflow experiment id that ``sweep.json`` recorded, if any."""
    try:
        return json.loads((Path(sweep_dir) / SWEEP_STATE).read_text()).get("experiment_id")
    except (OSError, ValueError):
        return None


def mlflow_lines(uri: str, sweep_dir: Path, parent_id: str) -> list[str]:
    """The parent run and how to open the runs table (mlflow_ui.open_lines), on the sweep's
    own view of it when that could be stored (:func:`share_view`)."""
    exp_id = experiment_id(sweep_dir)
    view = share_view(uri, exp_id, parent_id, sweep_dir) if exp_id else None
    return mlflow_ui.open_lines(uri, exp_id, parent_id, view=view)


def share_view(uri: str, exp_id: str, parent_id: str, sweep_dir: Path) -> str | None:
    """Store the sweep's runs-table view (``mlflow_ui.runs_view``, its explored settings read
    from ``trials.parquet``'s ``param_*`` columns) as an experiment tag keyed by the parent
    run id; the key, or None when MLflow did not take it (the plain link is printed then)."""
    import pyarrow.parquet as pq

    from orchestrator.tracking import client

    table = Path(sweep_dir) / "trials.parquet"
    names = pq.read_schema(table).names if table.is_file() else []
    params = [n.removeprefix("param_") for n in names if n.startswith("param_")]
    try:
        view = mlflow_ui.runs_view(parent_id, params)
        client(uri).set_experiment_tag(exp_id, mlflow_ui.VIEW_TAG + parent_id, view)
    except Exception:  # any error: a view is a convenience, the link works without it
        return None
    return parent_id


def hypervolume_plot(uri: str, parent_id: str, sweep_dir: Path) -> Path | None:
    """``hypervolume.png`` in the sweep folder and on the parent run, from the parent's
    ``hypervolume`` history (step = finished trials); None when nothing was logged."""
    from orchestrator import pareto
    from orchestrator.tracking import client

    c = client(uri)
    history = {m.step: m.value for m in c.get_metric_history(parent_id, "hypervolume")}
    if not history:
        return None
    path = pareto.plot_hypervolume(sorted(history.items()), Path(sweep_dir) / "hypervolume.png")
    c.log_artifact(parent_id, str(path))
    return path
