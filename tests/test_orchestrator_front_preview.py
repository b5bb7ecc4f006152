"""The front where MLflow's UI can show it (issue 30): ``pareto.csv`` and a self-contained
``pareto.html`` beside the Parquet tables, and the measured speed on the front's child runs,
so the runs table sorts by latency."""

from __future__ import annotations

import csv
import math
import re

import pyarrow as pa
from mlflow import MlflowClient
from test_orchestrator_pareto import rows

from orchestrator import pareto, speed


def test_write_tables_puts_a_csv_and_an_offline_html_front_beside_the_parquet(tmp_path):
    data = rows(30)
    trials = pareto.trials_table(data)
    paths = pareto.write_tables(trials, tmp_path, teacher={"top1": 97.0}, title="t")
    front = pareto.front_table(trials).to_pylist()
    assert {"csv", "html"} <= set(paths) and len(front) >= 2
    with (tmp_path / "pareto.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == [r["trial_id"] for r in front]  # cheapest first
    assert [r["run_id"] for r in table] == [r["run_id"] for r in front]
    for got, want in zip(table, front, strict=True):  # 6 significant digits
        assert math.isclose(float(got["top1_pct"]), want["top1"], rel_tol=1e-5)
    assert [int(r["macs_count"]) for r in table] == [r["macs"] for r in front]
    assert {"macs_ratio", "params_count", "search/target", "search/init_mode"} <= set(table[0])

    page = (tmp_path / "pareto.html").read_text()
    # self-contained: nothing to fetch (the SVG namespace is a name, not a request)
    assert "<script" not in page and not re.search(r"\b(src|href)=", page)
    assert re.findall(r"https?://[^\s\"'<]+", page) == ["http://www.w3.org/2000/svg"]
    hovers = re.findall(r"<title>(.*?)</title>", page, flags=re.S)
    for r in data:  # every trial, the ASHA-stopped ones too, names its trial and run
        assert any(f"trial {r['trial_id']}\nrun {r['run_id']}" in h for h in hovers), r
    assert page.count('fill="#d62728"/>') == len(front)  # one diamond per front trial
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically: no temporary left


def test_timed_front_logs_latency_and_speedup_on_its_child_runs(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("speed", artifact_location=(tmp_path / "a").as_uri())
    ids = [c.create_run(exp).info.run_id for _ in range(3)]
    front = pa.Table.from_pylist(
        [
            {"trial_id": "a", "run_id": ids[0], "latency_ms": 2.0012345, "speedup": 1.5},
            {"trial_id": "b", "run_id": ids[1], "latency_ms": 1.0, "speedup": 3.0},
            {"trial_id": "c", "run_id": ids[2], "latency_ms": math.nan, "speedup": math.nan},
        ]
    )
    assert speed.log_child_speed(c, front) == 2  # c was not timed: nothing logged for it
    by_latency = c.search_runs([exp], order_by=["metrics.latency_ms ASC"])
    assert [r.info.run_id for r in by_latency][:2] == [ids[1], ids[0]]
    assert c.get_run(ids[1]).data.metrics == {"latency_ms": 1.0, "speedup_x": 3.0}
    assert c.get_run(ids[0]).data.metrics["latency_ms"] == 2.001  # 4 significant digits
    assert c.get_run(ids[2]).data.metrics == {}
