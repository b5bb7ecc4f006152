"""``orchestrator.report``: the timed speed-ups, its own plot, where the MLflow store is.

A sweep folder is written by hand (pareto.write_tables, then the speed columns speed.py adds
at a sweep's end), so these run in seconds without Ray; the end-to-end report of a real sweep
is in test_orchestrator_sweep.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import pareto, report

TEACHER = {"top1": 97.5, "macs": 1_000_000, "params": 20_000, "throughput": 5579.0}
TIMED = {"aaaa0001": 20.0, "bbbb0002": 30.0}  # ms per batch; the teacher: 40 ms


def trial(tid: str, top1: float, ratio: float, full: bool, throughput: float) -> dict:
    return {
        "trial_id": tid,
        "status": "TERMINATED",
        "fully_trained": full,
        "top1": top1,
        "macs": int(ratio * TEACHER["macs"]),
        "macs_ratio": ratio,
        "params": 10_000,
        "throughput": throughput,  # shared-core img/s: the pruned ones look slower
        "pruned_top1": 80.0,
        "iterations": 9 if full else 3,
        "run_id": f"run-{tid}",
        "error": None,
        "param_search/target": ratio,
    }


def write_sweep(directory: Path) -> Path:
    """A finished sweep's folder: tables, pareto.png, the timed pareto.parquet, teacher.json."""
    rows = [
        trial("aaaa0001", 95.0, 0.3, True, 4097.0),
        trial("bbbb0002", 96.0, 0.6, True, 3533.0),
        trial("cccc0003", 96.5, 0.5, False, 5534.0),  # stopped early: never on the front
        trial("dddd0004", 94.0, 0.7, True, 4321.0),  # dominated
    ]
    pareto.write_tables(pareto.trials_table(rows), directory, teacher=TEACHER, title="t")
    front = pq.read_table(directory / "pareto.parquet")
    ms = [TIMED[t] for t in front.column("trial_id").to_pylist()]
    speedup = [40.0 / m for m in ms]
    ratio = front.column("macs_ratio").to_pylist()
    for name, values in (
        ("latency_ms", ms),
        ("speedup", speedup),
        ("fraction_of_limit", [s * r for s, r in zip(speedup, ratio, strict=True)]),
    ):
        front = front.append_column(name, pa.array(values, pa.float64()))
    pq.write_table(front, directory / "pareto.parquet")
    (directory / "teacher").mkdir()
    (directory / "teacher" / "teacher.json").write_text(json.dumps(TEACHER))
    return directory


def test_the_report_shows_the_timed_speed_ups_never_the_shared_core_img_s(
    tmp_path: Path, capsys
) -> None:
    sweep = write_sweep(tmp_path / "s")
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "ms/batch" in out
    assert "2.00×" in out and "1.33×" in out  # 40 ms / 20 ms, 40 ms / 30 ms
    assert "40.00" in out  # the teacher's latency, from the speed-ups
    assert "60 %" in out  # 2.00× of the 1 / 0.3 limit
    assert "img/s" not in out
    for throughput in ("4,097", "3,533", "5,579"):
        assert throughput not in out
    assert "Pareto front: 2 of 3 fully fine-tuned trials (4 in all)" in out


def test_without_timed_columns_the_front_has_no_speed_at_all(tmp_path: Path, capsys) -> None:
    sweep = write_sweep(tmp_path / "s")
    front = pq.read_table(sweep / "pareto.parquet")
    pq.write_table(front.drop_columns(list(report.SPEED)), sweep / "pareto.parquet")
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "aaaa0001" in out and "speed-up" not in out and "img/s" not in out
    assert "4,097" not in out


def test_the_report_writes_report_png_and_never_the_sweeps_plots(tmp_path: Path, capsys) -> None:
    sweep = write_sweep(tmp_path / "s")
    before = (sweep / "pareto.png").read_bytes()
    assert report.main([str(sweep)]) == 0
    assert (sweep / "report.png").stat().st_size > 10_000
    assert f"plot: {sweep / 'report.png'}" in capsys.readouterr().out
    for name in ("pareto.png", "speedup.png"):
        assert report.main([str(sweep), "--out", str(sweep / name)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the sweep's own plot" in err[0], err
    assert (sweep / "pareto.png").read_bytes() == before
    assert not (sweep / "speedup.png").exists()


def test_a_run_id_with_no_store_is_refused_without_creating_one(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report.main(["b108a424d5c94b0c9a2b6e0f3c1d2e3f"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store: pass --tracking-uri" in err[0], err
    missing = tmp_path / "nope.db"
    assert report.main(["b108a424", "--tracking-uri", f"sqlite:///{missing}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"orchestrator.report: b108a424: no MLflow store at {missing} (sqlite:///{missing})"
    ]
    assert list(elsewhere.iterdir()) == [] and not missing.exists()


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    """The synthetic sweep logged as a parent run in an SQLite store, and its sweep.json."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("logged")
    sweep = write_sweep(root / "results" / "s")
    uri = f"sqlite:///{root / 'results' / 'mlflow.db'}"
    c = MlflowClient(uri)
    experiment = c.create_experiment("s", artifact_location=(root / "mlartifacts").as_uri())
    run = c.create_run(experiment, run_name="s")
    for name in ("trials.parquet", "pareto.parquet"):
        c.log_artifact(run.info.run_id, str(sweep / name))
    for name, value in {**TEACHER, "latency_ms": 40.0}.items():
        c.log_metric(run.info.run_id, f"teacher_{name}", value)
    c.set_terminated(run.info.run_id)
    state = {"parent_run_id": run.info.run_id, "tracking_uri": uri, "experiment_id": experiment}
    (sweep / "sweep.json").write_text(json.dumps(state))
    return {"root": root, "sweep": sweep, "uri": uri, "run": run.info.run_id, "exp": experiment}


def test_a_sweep_folder_finds_its_tracking_uri_in_sweep_json(
    logged: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A copy holding only sweep.json, read from another folder: the front comes from the
    parent run named there, through the store named there."""
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(logged["sweep"] / "sweep.json", copy / "sweep.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report.main([str(copy)]) == 0
    out = capsys.readouterr().out
    assert "2.00×" in out and "40.00" in out and "img/s" not in out
    assert f"parent run {logged['run']}, experiment {logged['exp']}" in out
    assert f"mlflow ui --backend-store-uri {logged['uri']} --port 5000" in out
    assert f"/#/experiments/{logged['exp']}/runs?workflowType=machine_learning" in out
    assert (copy / "report.png").is_file()
    assert report.main([str(logged["sweep"])]) == 0  # the folder itself: MLflow lines too
    assert f"parent run {logged['run']}" in capsys.readouterr().out


def test_a_run_id_with_its_store_reads_the_timed_front(
    logged: dict, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert report.main([logged["run"], "--tracking-uri", logged["uri"]]) == 0
    out = capsys.readouterr().out
    assert "2.00×" in out and "1.33×" in out and "40.00" in out and "4,097" not in out
    assert (tmp_path / f"report-{logged['run']}.png").is_file()
    assert not (tmp_path / "results").exists()
