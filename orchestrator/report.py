"""``python -m orchestrator.report <sweep dir | parent run id>``: the front without MLflow's UI.

Reads ``trials.parquet`` (from the sweep's storage directory, or downloaded from the parent
MLflow run), recomputes the Pareto front from it rather than trusting ``pareto.parquet``, and
prints it as a table with the speed the sweep measured at its end: ``latency_ms`` and the
speed-up over the teacher, the front timed side by side (speed.py), read from the sweep's
``pareto.parquet``. Never the ``throughput`` (img/s) each trial measured while others shared
its cores (it showed pruned models slower than the teacher). Writes its own plot,
``report.png`` in the sweep directory (``./report-<run id>.png`` for a run id), never the
sweep's ``pareto.png``, and says where MLflow shows the sweep.

The tracking URI: ``--tracking-uri``; else, for a sweep directory, its ``sweep.json``; else
``$MLFLOW_TRACKING_URI``; else ``./results/mlflow.db`` if that file exists. A run id with none of
them, or an SQLite store that does not exist, is refused with one line (exit 1): MLflow would
create an empty database and then say the run is not found.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import importance, mlflow_ui, pareto
from orchestrator._redact import redact
from orchestrator.mlflow_names import teacher_metrics
from orchestrator.sweep_state import SWEEP_STATE
from orchestrator.tracking import client

DEFAULT_STORE = Path("results") / "mlflow.db"  # the demo's store, relative to the project root
SPEED = ("latency_ms", "speedup", "fraction_of_limit")  # speed.py's columns in pareto.parquet
SWEEP_PLOTS = ("pareto.png", "speedup.png", "hypervolume.png")  # the sweep's own: never written


class Refused(Exception):
    """A source or store the report cannot use: one line, exit 1."""


def tracking_uri(explicit: str | None, sweep_dir: Path | None = None) -> str:
    """The MLflow store to read (module doc: the order); Refused when there is none or when
    it is an SQLite file that does not exist (MLflow would create it)."""
    state = _state(sweep_dir) if sweep_dir is not None else {}
    uri = explicit or state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if not DEFAULT_STORE.is_file():
            raise Refused(
                f"no MLflow store: pass --tracking-uri (sqlite:///path/to/mlflow.db or "
                f"http://host:5000) or run from the folder that holds {DEFAULT_STORE}"
            )
        uri = f"sqlite:///{DEFAULT_STORE.resolve()}"
    if uri.lower().startswith("sqlite:///"):
        path = uri.split(":///", 1)[1].split("?", 1)[0]
        if path != ":memory:" and not Path(path).is_file():
            raise Refused(f"no MLflow store at {Path(path).resolve()} ({redact(uri)})")
    return uri


def _state(sweep_dir: Path) -> dict:
    path = sweep_dir / SWEEP_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def _timed(table: pa.Table | None) -> pa.Table | None:
    return table if table is not None and "speedup" in table.column_names else None


def _from_dir(directory: Path) -> tuple[pa.Table, pa.Table | None, dict | None]:
    """(trials, the timed front or None, the teacher's numbers or None)."""
    trials = pq.read_table(directory / "trials.parquet")
    pareto_file = directory / "pareto.parquet"
    timed = _timed(pq.read_table(pareto_file) if pareto_file.is_file() else None)
    meta = directory / "teacher" / "teacher.json"
    teacher = json.loads(meta.read_text()) if meta.is_file() else None
    if teacher is not None and timed is not None:  # speed-up = teacher ms / model ms
        ms = [
            r["speedup"] * r["latency_ms"]
            for r in timed.to_pylist()
            if r["speedup"] is not None and r["latency_ms"] is not None
        ]
        ms = [m for m in ms if math.isfinite(m)]
        if ms:
            teacher["latency_ms"] = statistics.median(ms)
    return trials, timed, teacher


def _from_run(run_id: str, uri: str) -> tuple[pa.Table, pa.Table | None, dict | None, str]:
    """(trials, the timed front or None, the teacher's numbers or None, experiment id)."""
    c = client(uri)
    run = c.get_run(run_id)
    names = {f.path for f in c.list_artifacts(run_id)}
    with tempfile.TemporaryDirectory() as tmp:
        trials = pq.read_table(c.download_artifacts(run_id, "trials.parquet", tmp))
        timed = None
        if "pareto.parquet" in names:
            timed = _timed(pq.read_table(c.download_artifacts(run_id, "pareto.parquet", tmp)))
    teacher = teacher_metrics(run.data.metrics)  # this sweep's names or an older one's
    return trials, timed, teacher or None, run.info.experiment_id


def with_speed(front: pa.Table, timed: pa.Table | None) -> pa.Table:
    """``front`` (recomputed) with the sweep's timed columns, matched by trial id; a front
    trial the sweep did not time gets none (shown empty)."""
    if timed is None:
        return front
    by_trial = {r["trial_id"]: r for r in timed.to_pylist()}
    for name in SPEED:
        if name in front.column_names:
            front = front.drop_columns([name])
        values = [by_trial.get(t, {}).get(name) for t in front.column("trial_id").to_pylist()]
        front = front.append_column(name, pa.array(values, pa.float64()))
    return front


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "source",
        help="a sweep's storage directory (<storage.path>/<name>) "
        "or the MLflow run id of a sweep's parent run",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow store (default: the sweep directory's sweep.json, "
        f"$MLFLOW_TRACKING_URI, ./{DEFAULT_STORE} if it exists)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="plot path (default: report.png in the sweep directory, or ./report-<run id>.png)",
    )
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        uri = experiment = parent = None
        if source.is_dir():
            out = Path(args.out) if args.out else source / "report.png"
            if out.resolve() in {(source / name).resolve() for name in SWEEP_PLOTS}:
                raise Refused(f"--out {out} is the sweep's own plot: choose another name")
            state = _state(source)
            parent, experiment = state.get("parent_run_id"), state.get("experiment_id")
            if (source / "trials.parquet").is_file():
                trials, timed, teacher = _from_dir(source)
                uri = args.tracking_uri or state.get("tracking_uri")
            elif parent:  # the tables live on the parent run (e.g. copied only sweep.json)
                uri = tracking_uri(args.tracking_uri, source)
                trials, timed, teacher, experiment = _from_run(parent, uri)
            else:
                raise Refused(f"{source}: no trials.parquet (no trial has finished yet?)")
        else:
            uri = tracking_uri(args.tracking_uri)
            parent = args.source
            trials, timed, teacher, experiment = _from_run(args.source, uri)
            out = Path(args.out or f"report-{args.source}.png")
    except Exception as err:  # any error: a CLI: one line, whatever went wrong
        line = redact(f"orchestrator.report: {args.source}: {err}").splitlines()[0]
        print(line, file=sys.stderr)
        return 1
    front = with_speed(pareto.front_table(trials), timed)
    done = sum(1 for f in trials.column("fully_trained").to_pylist() if f)
    hv = pareto.front_hypervolume(front)
    timing = "; speed timed at the sweep's end" if timed is not None else ""
    pareto.print_front(
        front,
        teacher=teacher,
        title=f"Pareto front: {front.num_rows} of {done} fully fine-tuned trials "
        f"({trials.num_rows} in all), hypervolume {hv:.4f}{timing}",
    )
    pareto.plot(trials, front, out, teacher=teacher, title="top-1 vs MACs")
    print(f"plot: {out}")
    for line in importance.summary(importance.param_importance(trials.to_pylist())):
        print(line)
    if uri:
        for line in mlflow_ui.open_lines(uri, experiment, parent):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
