"""MLflow: one parent run per sweep, one nested child run per trial, logged from the driver.

Why the driver: a Tune callback runs in the driver process, so a local SQLite store is only
ever opened by one process (SQLite must never be shared across nodes), a server URI works the
same way, and trials need no MLflow access at all (``setup_mlflow`` inside trials writes to a
per-trial database unless given a URI, and never ends its runs).

This module holds the runs (find, start, end, read back); ``trial_logger.TrialLogger`` is the
Tune callback that writes them as trials report.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from orchestrator._redact import redact
from orchestrator.mlflow_limits import fit_params, fit_tags, json_tag
from orchestrator.mlflow_names import STATUS_TAG, is_lost, mlflow_metric, tune_metrics, tune_status

PARENT_TAG, TRIAL_TAG, SWEEP_TAG = "mlflow.parentRunId", "trial_id", "sweep"
METRICS = (
    "top1",
    "train_loss",
    "lr",
    "macs",
    "macs_ratio",
    "params",
    "throughput",
    "pruned_top1",
    "search_final_loss",
    "search_soft_ratio",
    "fully_trained",
    "finetune_workers",
    "time_total_s",
)  # per iteration; the last one holds the finals
ARTIFACTS = ("plan.json", "weights.pt", "search.json", "widths.csv")
LOST_REASON = (
    "the driver was killed before Tune saved this trial in its state; --resume could not "
    "restore it, so the searcher sampled again in its place"
)


def first_line(err: BaseException) -> str:
    """The error's first line, for a warning or a tag: credentials of any URI in it masked
    (MLflow's errors quote the request URL, userinfo included)."""
    text = redact(str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _param_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class TrackingError(ValueError):
    """A tracking URI we refuse (the retired file store)."""


def check_uri(uri: str) -> str:
    """SQLite, a database URL or a server; never MLflow's retired file store."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path or a Windows drive letter
        raise TrackingError(
            f"{redact(uri)!r} is MLflow's retired file store; use sqlite:///path.db or "
            "http://host:5000"
        )
    return uri


def ping(uri: str) -> None:
    """Fail fast, before any trial runs, when the tracking server does not answer.

    Bounded by MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT (the driver sets small defaults), so
    a wrong or dead URI costs seconds, not MLflow's default minutes of retries.
    """
    if not uri.lower().startswith(("http:", "https:")):
        return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as err:  # any error: connection refused, timeout, 5xx, auth, ...
        text = str(err)
        why = (
            "connection refused"
            if "refused" in text.lower()
            else "timed out"
            if "timeout" in text.lower() or "timed out" in text.lower()
            else first_line(err)
        )
        raise TrackingError(f"cannot reach the MLflow server at {redact(uri)}: {why}") from None


def client(uri: str):
    from mlflow import MlflowClient  # here: the CLI's --dry-run never loads MLflow (~1 s)

    return MlflowClient(tracking_uri=check_uri(uri))


# MLflow 3's UI opens an untagged experiment in its GenAI view (traces, evaluations); this
# tag opens the runs table, where a sweep's parent and trial runs are (the UI's own values).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    """Get or create the MLflow experiment, tagged to open in the runs view (EXPERIMENT_KIND;
    an existing experiment without a kind gets it). Local stores keep artifacts next to the
    database."""
    c = client(uri)
    key, value = EXPERIMENT_KIND
    found = c.get_experiment_by_name(name)
    if found is not None:
        if key not in found.tags:  # never overrule a kind the user chose in the UI
            c.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return c.create_experiment(name, artifact_location=location, tags={key: value})


def git_commit() -> str:
    """The commit of the code that runs the sweep (``+dirty`` when it has local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty.strip() else "")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)  # MLflow's limit: fit_params, with a warning


# Fixed settings that tell one sweep from another in the runs table; everything else of the
# config is in the config.json artifact (the whole flattened config was ~170 params, mostly
# None, and filled the column picker).
PARENT_SETTINGS = (
    "seed",
    "model.name",
    "model.img_size",
    "data.kind",
    "teacher.epochs",
    "sweep.sampler",
    "sweep.num_samples",
    "tracking.uri",
    "storage.path",
)


def parent_params(config: dict, space_rows: list[tuple]) -> dict[str, str]:
    """The parent run's params: one per explored knob (its range as text: ``search/target``
    -> ``range [0.1, 0.7]``) and the few fixed settings of :data:`PARENT_SETTINGS`."""
    flat: dict[str, str] = {}
    _flatten("", config, flat)
    explored = {k: v for k, v in space_rows if not str(v).endswith("(fixed)")}
    fixed = {k: flat[k] for k in PARENT_SETTINGS if flat.get(k, "None") != "None"}
    return {**fixed, **explored}


def start_parent(
    uri: str,
    exp_id: str,
    name: str,
    config: dict,
    space_rows: list[tuple],
    files: dict[str, dict] | None = None,
) -> str:
    """Create the sweep's parent run: the explored space and identifying settings as params
    (:func:`parent_params`), a distinct name and a description (``mlflow_ui.parent_tags``),
    space and config as artifacts, and ``files`` (artifact name -> JSON content: an hf
    sweep's transformers config, ``hf_model.CONFIG_ARTIFACT``) beside them (the teacher's
    metrics follow when it is trained: :func:`log_teacher`). Credentials in the config's URIs
    are masked (every MLflow reader sees the params)."""
    from mlflow.entities import Param, RunTag  # here: see client()

    from orchestrator.mlflow_ui import parent_tags

    config = redact(config)

    c = client(uri)
    commit = git_commit()
    run = c.create_run(
        exp_id,
        run_name=name,
        tags={
            SWEEP_TAG: name,
            "role": "sweep",
            "git_commit": commit,
            "mlflow.source.git.commit": commit.removesuffix("+dirty"),
        },
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in sorted(fit_params(parent_params(config, space_rows)).items())]
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i : i + 100])
    tags = [RunTag("search_space", json_tag("search_space", dict(space_rows), "search_space.json"))]
    tags = fit_tags({t.key: t.value for t in tags + parent_tags(name, config, space_rows)})
    c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=1, default=str))
        (Path(tmp) / "search_space.json").write_text(json.dumps(dict(space_rows), indent=1))
        for file, content in (files or {}).items():
            (Path(tmp) / file).write_text(json.dumps(content, indent=1))
        c.log_artifacts(run_id, tmp)
    return run_id


def log_teacher(uri: str, run_id: str, teacher: dict) -> None:
    """The teacher's numbers on the parent run as ``teacher_<name>`` metrics (step 0), named
    as the trials' (mlflow_names): ``teacher_top1_pct``, ``_macs_count``, ``_params_count``,
    ``_throughput_img_per_s``, ``_epochs``."""
    from mlflow.entities import Metric  # here: see client()

    metrics = [
        Metric(f"teacher_{mlflow_metric(k)}", float(v), 0, 0)
        for k, v in teacher.items()
        if isinstance(v, (int, float))
    ]
    client(uri).log_batch(run_id, metrics=metrics)


def reopen_parent(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


def end_parent(
    uri: str, run_id: str, status: str = "FINISHED", running: list[str] | None = None
) -> None:
    """End the parent run and any child run a crash left RUNNING (marked KILLED): those of
    ``running`` (run ids) when the caller knows them, else every child run's status is read
    (a listing of the whole sweep)."""
    c = client(uri)
    if running is None:
        running = [r.info.run_id for r in children(uri, run_id) if r.info.status == "RUNNING"]
    for child in running:
        c.set_terminated(child, status="KILLED")
    c.set_terminated(run_id, status=status)


def children(uri: str, parent_id: str) -> list:
    c = client(uri)
    exp_id = c.get_run(parent_id).info.experiment_id
    runs, token = [], None
    while True:
        page = c.search_runs(
            [exp_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            max_results=1000,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def trial_rows(uri: str, parent_id: str) -> list[dict]:
    """One dict per child run (the source of ``trials.parquet``), from MLflow alone; runs of
    trials Tune lost (``trial_status = lost``) are left out."""
    rows = [trial_row(run) for run in children(uri, parent_id)]
    return sorted((r for r in rows if r is not None), key=lambda r: r["trial_id"] or "")


def trial_row(run) -> dict | None:
    """A child run as a row of ``trials.parquet`` (None for a trial Tune lost); metric names
    and statuses of older sweeps read alike (mlflow_names)."""
    tags = run.data.tags
    if is_lost(tags.get(STATUS_TAG)):
        return None
    return row(
        tags.get(TRIAL_TAG),
        tune_status(tags.get(STATUS_TAG)) or run.info.status,
        tune_metrics(run.data.metrics),
        run.data.params,
        run.info.run_id,
        tags.get("error"),
    )


def row(
    trial_id: str | None,
    status: str,
    metrics: dict[str, float],
    params: dict[str, str],
    run_id: str | None,
    error: str | None,
) -> dict:
    """The one place a trial becomes a row: from a child run (:func:`trial_row`), or from
    what the driver logged to it (``trial_table.TrialTable``), alike to the last type."""
    m = metrics
    out = {
        "trial_id": trial_id,
        "status": status,
        "fully_trained": bool(m.get("fully_trained", 0.0) >= 1.0),
        "top1": m.get("top1"),
        "macs": int(m["macs"]) if "macs" in m else None,
        "macs_ratio": m.get("macs_ratio"),
        "params": int(m["params"]) if "params" in m else None,
        "throughput": m.get("throughput"),
        "pruned_top1": m.get("pruned_top1"),
        "iterations": int(m.get("training_iteration", 0)),
        "run_id": run_id,
        "error": error,
    }
    for k, v in params.items():
        out[f"param_{k}"] = _param_value(v)
    return out


SQLITE_INIT_TIMEOUT_S = 300  # another driver migrating the same database: wait for it


def init_sqlite(uri: str) -> None:
    """Create or migrate a ``sqlite:///`` tracking store once, under a lock beside the file.

    MLflow migrates a SQLite store's schema on first use; two processes doing it at once fail
    ("table _alembic_tmp_metrics already exists") and leave the file half-migrated. Sweeps of
    one storage path share the database, so this lock is the database's, not the sweep's.
    Other URIs: nothing to do (a server migrates its own store).
    """
    if not uri.lower().startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=SQLITE_INIT_TIMEOUT_S):
        client(uri).search_experiments(max_results=1)  # creates or migrates the tables
