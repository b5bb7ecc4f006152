"""MLflow: one parent run per sweep, one nested child run per trial, logged from the driver.

Why the driver: a Tune callback runs in the driver process, so a local SQLite store is only
ever opened by one process (SQLite must never be shared across nodes), a server URI works the
same way, and trials need no MLflow access at all (``setup_mlflow`` inside trials writes to a
per-trial database unless given a URI, and never ends its runs).

Why no in-memory state: ``Tuner.restore`` reuses the *pickled* callbacks, so anything held in
memory is lost or stale after a restore. The callback therefore keeps only the URI and run ids;
a trial's child run is found again by its ``trial_id`` tag, and the last logged iteration is
read back from the run, so a resumed sweep neither duplicates runs nor re-logs epochs.

After every finished trial the parent's ``trials.parquet``, ``pareto.parquet`` and
``pareto.png`` are rebuilt from the child runs and the ``hypervolume`` is logged with the
number of finished trials as its step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator import pareto
from orchestrator.outbox import Outbox, plain_dict

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


class TrackingError(ValueError):
    """A tracking URI we refuse (the retired file store)."""


def check_uri(uri: str) -> str:
    """SQLite, a database URL or a server; never MLflow's retired file store."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path or a Windows drive letter
        raise TrackingError(
            f"{uri!r} is MLflow's retired file store; use sqlite:///path.db or http://host:5000"
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
            else _first_line(err)
        )
        raise TrackingError(f"cannot reach the MLflow server at {uri}: {why}") from None


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=check_uri(uri))


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    """Get or create the MLflow experiment; local stores keep artifacts next to the database."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return c.create_experiment(name, artifact_location=location)


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
        out[prefix] = str(value)[:6000]


def start_parent(
    uri: str, exp_id: str, name: str, config: dict, space_rows: list[tuple], teacher: dict
) -> str:
    """Create the sweep's parent run: config as params, space and config as artifacts."""
    from mlflow.entities import Metric, Param, RunTag

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
    flat: dict[str, str] = {}
    _flatten("", config, flat)
    params = [Param(k, v) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i : i + 100])
    teacher_metrics = [
        Metric(f"teacher_{k}", float(v), 0, 0)
        for k, v in teacher.items()
        if isinstance(v, (int, float))
    ]
    c.log_batch(
        run_id, metrics=teacher_metrics, tags=[RunTag("search_space", json.dumps(dict(space_rows)))]
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=1, default=str))
        (Path(tmp) / "search_space.json").write_text(json.dumps(dict(space_rows), indent=1))
        c.log_artifacts(run_id, tmp)
    return run_id


def reopen_parent(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


def end_parent(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """End the parent run and any child run a crash left RUNNING (marked KILLED)."""
    c = client(uri)
    for run in children(uri, run_id):
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status="KILLED")
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def trial_rows(uri: str, parent_id: str) -> list[dict]:
    """One dict per child run (the source of ``trials.parquet``), from MLflow alone."""
    rows = []
    for run in children(uri, parent_id):
        m, tags = run.data.metrics, run.data.tags
        row = {
            "trial_id": tags.get(TRIAL_TAG),
            "status": tags.get("trial_status", run.info.status),
            "fully_trained": bool(m.get("fully_trained", 0.0) >= 1.0),
            "top1": m.get("top1"),
            "macs": int(m["macs"]) if "macs" in m else None,
            "macs_ratio": m.get("macs_ratio"),
            "params": int(m["params"]) if "params" in m else None,
            "throughput": m.get("throughput"),
            "pruned_top1": m.get("pruned_top1"),
            "iterations": int(m.get("training_iteration", 0)),
            "run_id": run.info.run_id,
            "error": tags.get("error"),
        }
        for k, v in run.data.params.items():
            row[f"param_{k}"] = _param_value(v)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"] or "")


RESULT_KEYS = METRICS + (
    "training_iteration",
    "timestamp",
    "failed",
    "error",
    "checkpoint_path",
    "phase",
)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _checkpoint_uri(checkpoint, storage_uri: str = "") -> str | None:
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


def _error_reason(trial) -> str:
    """The trial's exception, one line (the cause, not Ray's wrapper), for the run's tags."""
    try:
        err = trial.get_pickled_error()
    except Exception:  # any error, on purpose
        err = None
    if err is not None:
        return _first_line(getattr(err, "cause", None) or err)
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"


def _param_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class TrialLogger(Callback):
    """Tune callback (driver side): child runs per trial, Pareto artifacts on the parent.

    Every callback becomes an *operation* (a JSON-safe dict naming the trial by id) that is
    applied to MLflow at once, or, when MLflow cannot be reached, appended to the sweep's
    :class:`~orchestrator.outbox.Outbox`. While the outbox holds anything, new operations queue
    behind it (order matters: a run is created before its metrics) and the outbox is replayed
    at most every ``RETRY_S`` seconds, at the end of the sweep and by ``--resume``. A tracking
    failure therefore never stops the sweep (an exception in a Tune callback would).
    """

    RETRY_S = 10.0

    def __init__(
        self,
        uri: str,
        parent_id: str,
        sweep_dir: str,
        sweep_name: str,
        param_names: list[str],
        teacher: dict,
        storage_uri: str = "",
    ) -> None:
        self.uri, self.parent_id, self.sweep_dir = uri, parent_id, sweep_dir
        self.storage_uri = storage_uri
        self.sweep_name, self.param_names, self.teacher = sweep_name, param_names, teacher
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._next_try = 0.0

    def __getstate__(self) -> dict:  # caches are rebuilt from MLflow after a restore
        return {**self.__dict__, "_runs": {}, "_last_step": {}, "_next_try": 0.0}

    # ------------------------------------------------------------------ operations
    def _op(self, kind: str, trial=None, **fields: Any) -> dict:
        op: dict[str, Any] = {"op": kind, **fields}
        if trial is not None:
            op["trial"] = trial.trial_id
            op["config"] = plain_dict(trial.config, tuple(self.param_names))
        return op

    def submit(self, op: dict) -> None:
        box = Outbox(self.sweep_dir)
        if box.pending():
            box.append(op)
            self.flush(force=False)
            return
        try:
            self._apply(op)
        except Exception as err:  # any error: whatever MLflow raised: keep it for later
            box.append(op)
            self._next_try = time.monotonic() + self.RETRY_S
            _warn(
                f"tracking: MLflow at {self.uri} failed ({_first_line(err)}); buffering in "
                f"{box.path}, replayed when it answers"
            )

    def flush(self, force: bool = True) -> bool:
        """Replay the outbox in order, stopping at the first failure; True when it is empty."""
        box = Outbox(self.sweep_dir)
        ops = box.pending()
        if not ops:
            return True
        if not force and time.monotonic() < getattr(self, "_next_try", 0.0):
            return False
        last_refresh = max((i for i, op in enumerate(ops) if op["op"] == "refresh"), default=-1)
        done = 0
        try:
            for i, op in enumerate(ops):
                if op["op"] != "refresh" or i == last_refresh:  # one rebuild is enough
                    self._apply(op)
                done = i + 1
        except Exception as err:  # any error, on purpose
            box.replace(ops[done:])
            self._next_try = time.monotonic() + self.RETRY_S
            if force:
                _warn(
                    f"tracking: MLflow at {self.uri} still failing ({_first_line(err)}); "
                    f"{len(ops) - done} operation(s) kept in {box.path}"
                )
            return False
        box.replace([])
        _warn(f"tracking: MLflow at {self.uri} is back; replayed {len(ops)} buffered operation(s)")
        return True

    def _apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "refresh":
            self.refresh()
            return
        if kind == "end_parent":
            end_parent(self.uri, self.parent_id, op["status"])
            return
        run_id = self._run_id(op["trial"], op.get("config", {}))
        if kind in ("result", "complete"):
            self._log_result(op["trial"], run_id, op["result"])
        if kind == "complete":
            self._log_artifacts(run_id, op.get("checkpoint"), op["result"])
            failed = op["result"].get("failed")
            self._finish(
                run_id,
                "FAILED" if failed else "FINISHED",
                "ERROR" if failed else "TERMINATED",
                op["result"].get("error"),
            )
        elif kind == "error":
            self._finish(run_id, "FAILED", "ERROR", op.get("reason"))

    # ------------------------------------------------------------------ child runs
    def _run_id(self, tid: str, config: dict) -> str:
        if tid in self._runs:
            return self._runs[tid]
        c = client(self.uri)
        exp_id = c.get_run(self.parent_id).info.experiment_id
        found = c.search_runs(
            [exp_id],
            filter_string=(
                f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{TRIAL_TAG} = '{tid}'"
            ),
        )
        if found:
            run = found[0]
            self._last_step[tid] = int(run.data.metrics.get("training_iteration", 0))
            if run.info.status != "RUNNING":
                c.update_run(run.info.run_id, status="RUNNING")
            if not run.data.params:  # created just before an outage cut the params off
                self._log_params(run.info.run_id, config)
        else:
            run = c.create_run(
                exp_id,
                run_name=f"{self.sweep_name}-{tid}",
                tags={
                    PARENT_TAG: self.parent_id,
                    TRIAL_TAG: tid,
                    SWEEP_TAG: self.sweep_name,
                    "trial_status": "RUNNING",
                },
            )
            self._log_params(run.info.run_id, config)
            self._last_step[tid] = 0
        self._runs[tid] = run.info.run_id
        return run.info.run_id

    def _log_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(config[k])) for k in self.param_names if k in config]
        if params:
            client(self.uri).log_batch(run_id, params=params)

    def _log_result(self, tid: str, run_id: str, result: dict) -> None:
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        if step <= self._last_step.get(tid, 0):  # logged before a restore (or a replay)
            return
        stamp = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(k, v, stamp, step)
            for k in METRICS + ("training_iteration",)
            if (v := _number(result.get(k))) is not None
        ]
        if metrics:
            client(self.uri).log_batch(run_id, metrics=metrics)
        self._last_step[tid] = step

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("start", trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.submit(self._op("result", trial, result=plain_dict(result, RESULT_KEYS)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = plain_dict(trial.last_result or {}, RESULT_KEYS)
        self.submit(
            self._op(
                "complete",
                trial,
                result=result,
                checkpoint=_checkpoint_uri(trial.checkpoint, getattr(self, "storage_uri", "")),
            )
        )
        self.submit(self._op("refresh"))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.submit(self._op("error", trial, reason=_error_reason(trial)))
        self.submit(self._op("refresh"))

    def end_sweep(self, status: str) -> bool:
        """Replay what is buffered, then end the parent run; True when nothing is left over."""
        self.flush(force=True)
        self.submit(self._op("end_parent", status=status))
        return not Outbox(self.sweep_dir).pending()

    def summary(self) -> dict:
        """The front for the closing line: from MLflow, else from the local trials table."""
        try:
            if Outbox(self.sweep_dir).pending():
                raise ConnectionError("tracking operations still buffered")
            return self.refresh()
        except Exception:  # any error, on purpose
            path = Path(self.sweep_dir) / "trials.parquet"
            if not path.is_file():
                return {"hypervolume": float("nan"), "finished": 0, "front": None}
            import pyarrow.parquet as pq

            front = pareto.front_table(pq.read_table(path))
            return {"hypervolume": pareto.front_hypervolume(front), "front": front}

    def _finish(
        self, run_id: str, run_status: str, trial_status: str, reason: str | None = None
    ) -> None:
        c = client(self.uri)
        c.set_tag(run_id, "trial_status", trial_status)
        if reason:
            c.set_tag(run_id, "error", reason[:5000])
        c.set_terminated(run_id, status=run_status)

    def _log_artifacts(self, run_id: str, checkpoint_uri: str | None, result: dict) -> None:
        """plan.json, weights.pt and the search curve from the trial's last checkpoint."""
        from ray.tune import Checkpoint

        if result.get("checkpoint_path"):  # reported by a Ray Train (data-parallel) fine-tune
            checkpoint_uri = result["checkpoint_path"]
        if not checkpoint_uri:
            return
        with Checkpoint(checkpoint_uri).as_directory() as d:
            for name in ARTIFACTS:
                if name == "weights.pt" and not result.get("fully_trained"):
                    continue
                if (Path(d) / name).is_file():
                    client(self.uri).log_artifact(run_id, str(Path(d) / name))
            if (Path(d) / "widths.csv").is_file():
                log_widths_plot(self.uri, run_id, Path(d) / "widths.csv")

    # ------------------------------------------------------------------ the parent's front
    def refresh(self) -> dict:
        """Rebuild the tables and plot from the child runs; log them and the hypervolume."""
        rows = trial_rows(self.uri, self.parent_id)
        table = pareto.trials_table(rows)
        paths = pareto.write_tables(
            table, self.sweep_dir, teacher=self.teacher, title=f"{self.sweep_name}: top-1 vs MACs"
        )
        c = client(self.uri)
        for path in paths.values():
            c.log_artifact(self.parent_id, str(path))
        front = pareto.front_table(table)
        hv = pareto.front_hypervolume(front)
        finished = sum(1 for r in rows if r["status"] in ("TERMINATED", "ERROR"))
        logged = c.get_metric_history(self.parent_id, "hypervolume")
        if not logged or max(m.step for m in logged) < finished:  # once per trial count
            c.log_metric(self.parent_id, "hypervolume", hv, step=finished)
            c.log_metric(self.parent_id, "front_size", front.num_rows, step=finished)
        from orchestrator.report import print_front

        print_front(
            front,
            teacher=self.teacher,
            title=f"Pareto front after {finished} trials (hypervolume {hv:.4f})",
        )
        return {"hypervolume": hv, "finished": finished, "front": front}


def log_widths_plot(uri: str, run_id: str, csv_path: Path) -> None:
    """widths.png (learned vs uniform keep fraction per layer) from a trial's widths.csv."""
    import csv

    from prune_core.widths import plot_widths

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
        png = plot_widths(rows, Path(tmp) / "widths.png", title=f"learned widths ({run_id[:8]})")
        client(uri).log_artifact(run_id, str(png))
