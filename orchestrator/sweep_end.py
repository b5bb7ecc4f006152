"""What the driver does once, at the end of a sweep, from the sweep's own tables.

:func:`log_importance` (``param_importance.json`` / ``.png``, orchestrator.importance, on its
capped sample) and :func:`local_summary` (the front and hypervolume from ``trials.parquet``,
for the closing line when MLflow does not take the tables). The Tune callback
(:class:`~orchestrator.trial_logger.TrialLogger`) calls them after its last rebuild.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from orchestrator import importance, pareto
from orchestrator.tracking import client


def log_importance(uri: str, parent_id: str, sweep_dir: str | Path) -> list[str]:
    """``param_importance.json`` / ``.png`` from ``trials.parquet``, in the sweep folder and on
    the parent run; the console lines (none before any trial finished)."""
    path = Path(sweep_dir) / "trials.parquet"
    if not path.is_file():
        return []
    result = importance.param_importance(pq.read_table(path).to_pylist())
    files = importance.write(result, Path(sweep_dir))
    c = client(uri)
    for file in files.values():
        c.log_artifact(parent_id, str(file))
    return importance.summary(result)


def local_summary(sweep_dir: str | Path) -> dict:
    """``{"hypervolume", "front"}`` from the sweep folder's ``trials.parquet`` (NaN and None,
    with ``finished`` 0, before any trial finished)."""
    path = Path(sweep_dir) / "trials.parquet"
    if not path.is_file():
        return {"hypervolume": float("nan"), "finished": 0, "front": None}
    front = pareto.front_table(pq.read_table(path))
    return {"hypervolume": pareto.front_hypervolume(front), "front": front}
