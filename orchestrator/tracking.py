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
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator import pareto

PARENT_TAG, TRIAL_TAG, SWEEP_TAG = "mlflow.parentRunId", "trial_id", "sweep"
METRICS = ("top1", "train_loss", "lr", "macs", "macs_ratio", "params", "throughput",
           "pruned_top1", "search_final_loss", "search_soft_ratio", "fully_trained",
           "finetune_workers", "time_total_s")  # per iteration; the last one holds the finals
ARTIFACTS = ("plan.json", "weights.pt", "search.json")


class TrackingError(ValueError):
    """A tracking URI we refuse (the retired file store)."""


def check_uri(uri: str) -> str:
    """SQLite, a database URL or a server; never MLflow's retired file store."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path or a Windows drive letter
        raise TrackingError(f"{uri!r} is MLflow's retired file store; use sqlite:///path.db "
                            "or http://host:5000")
    return uri


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
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty.strip() else "")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:6000]


def start_parent(uri: str, exp_id: str, name: str, config: dict, space_rows: list[tuple],
                 teacher: dict) -> str:
    """Create the sweep's parent run: config as params, space and config as artifacts."""
    from mlflow.entities import Metric, Param, RunTag

    c = client(uri)
    commit = git_commit()
    run = c.create_run(exp_id, run_name=name, tags={
        SWEEP_TAG: name, "role": "sweep", "git_commit": commit,
        "mlflow.source.git.commit": commit.removesuffix("+dirty")})
    run_id = run.info.run_id
    flat: dict[str, str] = {}
    _flatten("", config, flat)
    params = [Param(k, v) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):
        c.log_batch(run_id, params=params[i:i + 100])
    teacher_metrics = [Metric(f"teacher_{k}", float(v), 0, 0) for k, v in teacher.items()
                       if isinstance(v, (int, float))]
    c.log_batch(run_id, metrics=teacher_metrics,
                tags=[RunTag("search_space", json.dumps(dict(space_rows)))])
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
        page = c.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                             max_results=1000, page_token=token)
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
        row = {"trial_id": tags.get(TRIAL_TAG), "status": tags.get("trial_status",
                                                                    run.info.status),
               "fully_trained": bool(m.get("fully_trained", 0.0) >= 1.0),
               "top1": m.get("top1"), "macs": int(m["macs"]) if "macs" in m else None,
               "macs_ratio": m.get("macs_ratio"),
               "params": int(m["params"]) if "params" in m else None,
               "throughput": m.get("throughput"), "pruned_top1": m.get("pruned_top1"),
               "iterations": int(m.get("training_iteration", 0)), "run_id": run.info.run_id}
        for k, v in run.data.params.items():
            row[f"param_{k}"] = _param_value(v)
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"] or "")


def _param_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class TrialLogger(Callback):
    """Tune callback (driver side): child runs per trial, Pareto artifacts on the parent."""

    def __init__(self, uri: str, parent_id: str, sweep_dir: str, sweep_name: str,
                 param_names: list[str], teacher: dict) -> None:
        self.uri, self.parent_id, self.sweep_dir = uri, parent_id, sweep_dir
        self.sweep_name, self.param_names, self.teacher = sweep_name, param_names, teacher
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}

    def __getstate__(self) -> dict:  # caches are rebuilt from MLflow after a restore
        return {**self.__dict__, "_runs": {}, "_last_step": {}}

    # ------------------------------------------------------------------ child runs
    def _run_id(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        c = client(self.uri)
        exp_id = c.get_run(self.parent_id).info.experiment_id
        found = c.search_runs([exp_id], filter_string=(
            f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.{TRIAL_TAG} = '{tid}'"))
        if found:
            run = found[0]
            self._last_step[tid] = int(run.data.metrics.get("training_iteration", 0))
            if run.info.status != "RUNNING":
                c.update_run(run.info.run_id, status="RUNNING")
        else:
            run = c.create_run(exp_id, run_name=f"{self.sweep_name}-{tid}", tags={
                PARENT_TAG: self.parent_id, TRIAL_TAG: tid, SWEEP_TAG: self.sweep_name,
                "trial_status": "RUNNING"})
            self._log_params(run.info.run_id, trial.config)
            self._last_step[tid] = 0
        self._runs[tid] = run.info.run_id
        return run.info.run_id

    def _log_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(config[k])) for k in self.param_names if k in config]
        client(self.uri).log_batch(run_id, params=params)

    def _log_metrics(self, run_id: str, result: dict, names: tuple[str, ...], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, v, stamp, step) for k in names + ("training_iteration",)
                   if (v := _number(result.get(k))) is not None]
        if metrics:
            client(self.uri).log_batch(run_id, metrics=metrics)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info) -> None:
        run_id = self._run_id(trial)
        step = int(result.get("training_iteration", 0))
        if step > self._last_step.get(trial.trial_id, 0):  # skip epochs logged before a restore
            self._log_metrics(run_id, result, METRICS, step)
            self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        self.on_trial_result(iteration, trials, trial, result)  # no-op unless not yet seen
        run_id = self._run_id(trial)
        self._log_artifacts(run_id, trial, result)
        self._finish(run_id, "FINISHED", "TERMINATED")
        self.refresh()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self._run_id(trial)
        self._finish(run_id, "FAILED", "ERROR")
        self.refresh()

    def _finish(self, run_id: str, run_status: str, trial_status: str) -> None:
        c = client(self.uri)
        c.set_tag(run_id, "trial_status", trial_status)
        c.set_terminated(run_id, status=run_status)

    def _log_artifacts(self, run_id: str, trial, result: dict) -> None:
        """plan.json, weights.pt and the search curve from the trial's last checkpoint."""
        from ray.tune import Checkpoint

        checkpoint = trial.checkpoint
        if result.get("checkpoint_path"):  # reported by a Ray Train (data-parallel) fine-tune
            checkpoint = Checkpoint(result["checkpoint_path"])
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            for name in ARTIFACTS:
                if name == "weights.pt" and not result.get("fully_trained"):
                    continue
                if (Path(d) / name).is_file():
                    client(self.uri).log_artifact(run_id, str(Path(d) / name))

    # ------------------------------------------------------------------ the parent's front
    def refresh(self) -> dict:
        """Rebuild the tables and plot from the child runs; log them and the hypervolume."""
        rows = trial_rows(self.uri, self.parent_id)
        table = pareto.trials_table(rows)
        paths = pareto.write_tables(table, self.sweep_dir, teacher=self.teacher,
                                    title=f"{self.sweep_name}: top-1 vs MACs")
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

        print_front(front, teacher=self.teacher, title=f"Pareto front after {finished} trials "
                    f"(hypervolume {hv:.4f})")
        return {"hypervolume": hv, "finished": finished, "front": front}
