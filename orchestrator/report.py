"""``python -m orchestrator.report <sweep dir | parent run id>``: the front without MLflow's UI.

Reads ``trials.parquet`` (from the sweep's storage directory, or downloaded from the parent
MLflow run), recomputes the Pareto front from it rather than trusting ``pareto.parquet``,
prints it as a table and writes the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import importance, pareto
from orchestrator._redact import redact
from orchestrator.tracking import client

DEFAULT_URI = "sqlite:///results/mlflow.db"


def _from_dir(directory: Path) -> tuple[pa.Table, dict | None]:
    trials = pq.read_table(directory / "trials.parquet")
    meta = directory / "teacher" / "teacher.json"
    return trials, json.loads(meta.read_text()) if meta.is_file() else None


def _from_run(run_id: str, uri: str) -> tuple[pa.Table, dict | None]:

    c = client(uri)
    run = c.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = c.download_artifacts(run_id, "trials.parquet", tmp)
        trials = pq.read_table(path)
    teacher = {
        k.removeprefix("teacher_"): v
        for k, v in run.data.metrics.items()
        if k.startswith("teacher_")
    }
    return trials, teacher or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "source",
        help="a sweep's storage directory (<storage.path>/<name>) "
        "or the MLflow run id of a sweep's parent run",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help=f"for a run id (default {DEFAULT_URI})"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="plot path (default: pareto.png in the sweep directory, or ./pareto-<run id>.png)",
    )
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        if source.is_dir():
            if not (source / "trials.parquet").is_file():
                raise ValueError(f"{source}: no trials.parquet (no trial has finished yet?)")
            trials, teacher = _from_dir(source)
            out = Path(args.out) if args.out else source / "pareto.png"
        else:
            trials, teacher = _from_run(args.source, args.tracking_uri or DEFAULT_URI)
            out = Path(args.out or f"pareto-{args.source}.png")
    except Exception as err:  # any error: a CLI: one line, whatever went wrong
        line = redact(f"orchestrator.report: {args.source}: {err}").splitlines()[0]
        print(line, file=sys.stderr)
        return 1
    front = pareto.front_table(trials)
    done = sum(1 for f in trials.column("fully_trained").to_pylist() if f)
    hv = pareto.front_hypervolume(front)
    pareto.print_front(
        front,
        teacher=teacher,
        title=f"Pareto front: {front.num_rows} of {done} fully "
        f"fine-tuned trials ({trials.num_rows} in all), hypervolume {hv:.4f}",
    )
    pareto.plot(trials, front, out, teacher=teacher, title="top-1 vs MACs")
    print(f"plot: {out}")
    for line in importance.summary(importance.param_importance(trials.to_pylist())):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
