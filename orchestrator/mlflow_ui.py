"""What a person sees of a sweep in MLflow's UI, and how the driver points there.

* The parent run's name and description: ``<name> <MM-DD HH:MM:SS>`` (two sweeps of one name,
  say a crashed one and its rerun, are told apart in the runs table) and a Markdown
  description (``mlflow.note.content``, shown on the run's page) saying what the sweep
  explored and where its front is: :func:`parent_tags`.
* The command and URL that open the sweep's runs table: MLflow 3's UI opens an experiment on
  its GenAI overview (traces) unless the URL asks for the model-training view
  (``?workflowType=machine_learning``); the experiment's ``mlflow.experimentKind`` tag does not
  override the UI's global toggle. :func:`open_lines`.
* What that table shows: a view of the sweep's trial runs (:func:`runs_view`: only this
  sweep's child runs, sorted by ``pareto_rank``, with the status, front, accuracy, MAC and
  speed columns and the explored settings), stored as the UI's own shared view (an experiment
  tag ``mlflow.sharedViewState.<key>``, written by ``end_summary.share_view``) and opened by
  the URL's ``viewStateShareKey``: a fresh browser sees the front, not a collapsed parent run
  and no metric column.

Nothing here imports MLflow or talks to a server: plain strings, for the driver's last lines
(``sweep.py``), ``orchestrator.report`` and the parent run's creation (``tracking.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator._redact import redact

RUN_NAME, DESCRIPTION = "mlflow.runName", "mlflow.note.content"
RUNS_VIEW = "workflowType=machine_learning"  # the UI's "Model training" view: the runs table
UI_PORT = 5000
VIEW_TAG = "mlflow.sharedViewState."  # + key: a runs-table view the UI opens by its key
VIEW_METRICS = ("pareto_rank", "top1_pct", "macs_ratio", "latency_ms", "speedup_x")
VIEW_TAGS = ("trial_status", "pareto_front")
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # `mlflow ui --backend-store-uri`


def parent_run_name(name: str, started: datetime | None = None) -> str:
    """``digits 12-06 21:04:12``: the sweep's name and when its parent run was created."""
    return f"{name} {(started or datetime.now()):%m-%d %H:%M:%S}"


def parent_description(config: dict[str, Any], space_rows: list[tuple[str, str]]) -> str:
    """The parent run's description (Markdown): model, data, budget, what was explored, and
    which of the run's files hold the front. ``config`` is the experiment as JSON
    (``Experiment.model_dump(mode="json")``), ``space_rows`` ``space.describe``'s rows."""
    model, data = config.get("model", {}), config.get("data", {})
    sweep = config.get("sweep", {})
    asha = sweep.get("asha") or {}
    explored = [f"`{p}` ({d})" for p, d in space_rows if not d.endswith("(fixed)")]
    lines = [
        f"Pruning sweep **{config.get('name', '')}**: `{model.get('name')}` on "
        f"{data.get('kind')}, {sweep.get('num_samples')} trials ({sweep.get('sampler')} "
        f"sampler, ASHA on {asha.get('metric', 'top1')}).",
        "",
        "Explored: " + (", ".join(explored) if explored else "nothing (every setting fixed)") + ".",
        "",
        "Each child run is one trial, its explored settings as params under their YAML names "
        "(the fixed ones are in this run's `config.json`). Its `trial_status` tag is "
        "`complete`, `early_stopped` (stopped by ASHA: its `top1_pct` is from a partial "
        "fine-tune) or `failed`; `pareto_front` is `true` on the front, and `pareto_rank` "
        "(0 = the front) sorts the table. The front's runs carry the measured `latency_ms` "
        "and `speedup_x`.",
        "",
        "This run's artifacts: `pareto.html` (top-1 vs MACs, hover a point for its trial and "
        "run) and `pareto.csv` (the front, with the measured speed), `pareto.png`, "
        "`speedup.png`, `hypervolume.png`, `param_importance.png`, and the tables "
        "`pareto.parquet`, `trials.parquet`. Its `hypervolume` metric is logged per finished "
        "trial (the chart's step).",
    ]
    return "\n".join(lines)


def parent_tags(
    name: str,
    config: dict[str, Any],
    space_rows: list[tuple[str, str]],
    started: datetime | None = None,
) -> list:
    """``RunTag``s naming and describing a sweep's parent run (:func:`parent_run_name`,
    :func:`parent_description`), for the ``log_batch`` that follows its ``create_run``: a
    ``mlflow.runName`` tag renames the run."""
    from mlflow.entities import RunTag  # here: this module stays importable without MLflow

    return [
        RunTag(RUN_NAME, parent_run_name(name, started)),
        RunTag(DESCRIPTION, parent_description(config, space_rows)),
    ]


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].lower().split("+", 1)[0]


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///results/mlflow.db`` (relative to where the driver ran) made absolute, so
    the command works from any folder."""
    head, _, path = uri.partition(":///")
    if not path or path.startswith("/") or path.startswith(":memory:"):
        return uri
    return f"{head}:///{Path(path).resolve()}"


def runs_view(parent_id: str, params: Iterable[str]) -> str:
    """The runs-table view of one sweep (module doc) as the JSON MLflow's UI reads from a
    shared-view tag: its trial runs (the parent left out, so they are not folded under it),
    sorted by ``pareto_rank`` (the front first), columns ``trial_status``, ``pareto_front``,
    :data:`VIEW_METRICS` and the explored ``params``."""
    columns = [f"tags.`{t}`" for t in VIEW_TAGS] + [f"metrics.`{m}`" for m in VIEW_METRICS]
    columns += [f"params.`{p}`" for p in params]
    view = {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
        "orderByKey": "metrics.`pareto_rank`",
        "orderByAsc": True,
        "selectedColumns": columns,
    }
    return json.dumps(view, separators=(",", ":"))


def runs_url(
    uri: str, experiment_id: str | None, port: int = UI_PORT, view: str | None = None
) -> str | None:
    """The URL of the experiment's runs table: on the server itself for an http(s) tracking
    URI (without its user and password: the browser asks), else on the ``mlflow ui`` of
    :func:`open_lines`; None for a store whose UI is elsewhere (databricks). ``view``: the key
    of a shared view (:func:`runs_view`) it opens with."""
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        host = parts.netloc.rpartition("@")[2]
        base = redact(f"{parts.scheme}://{host}{parts.path.rstrip('/')}")
    elif scheme in DB_SCHEMES:
        base = f"http://127.0.0.1:{port}"
    else:
        return None
    where = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    shared = f"&viewStateShareKey={view}" if view and experiment_id else ""
    return f"{base}/#/{where}?{RUNS_VIEW}{shared}"


def open_lines(
    uri: str,
    experiment_id: str | None,
    parent_id: str | None,
    port: int = UI_PORT,
    view: str | None = None,
) -> list[str]:
    """Where to look in MLflow: the parent run, then the command (a database store) and the
    URL that open the runs table (on the shared view ``view``, when one was stored).
    Credentials in the URI are masked (_redact)."""
    run = f"parent run {parent_id}" if parent_id else "the sweep's runs"
    experiment = f", experiment {experiment_id}" if experiment_id else ""
    url = runs_url(uri, experiment_id, port, view)
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        return [f"MLflow: {run}{experiment}; its runs table: {url}"]
    if scheme in DB_SCHEMES:
        store = redact(_absolute_sqlite(uri) if scheme == "sqlite" else uri)
        return [
            f"MLflow: {run}{experiment}; to open its runs table run",
            f"  mlflow ui --backend-store-uri {store} --port {port}",
            f"  then open {url}",
        ]
    return [f"MLflow: {run}{experiment} at {redact(uri)}"]
