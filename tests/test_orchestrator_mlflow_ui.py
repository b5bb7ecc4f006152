"""What a person sees of a sweep in MLflow: the parent run's name and description, and the
command + URL that open the runs table (not MLflow 3's GenAI overview)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from orchestrator import mlflow_ui
from orchestrator.config import load_config
from orchestrator.space import describe

ROOT = Path(__file__).resolve().parents[1]


def test_parent_tags_name_and_describe_the_parent_run(tmp_path: Path) -> None:
    """Logged with the parent's first ``log_batch`` (tracking.start_parent), the tags rename
    the run: two sweeps of one name get two names."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    exp = load_config(ROOT / "experiments" / "digits.yaml")
    config, rows = exp.model_dump(mode="json"), describe(exp.tunable_sections)
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = c.create_experiment("digits", artifact_location=tmp_path.as_uri())
    names = []
    for started in (datetime(2026, 12, 6, 21, 4, 12), datetime(2026, 12, 6, 21, 9, 40)):
        run_id = c.create_run(experiment, run_name="digits").info.run_id
        tags = mlflow_ui.parent_tags("digits", config, rows, started)
        c.log_batch(run_id, tags=[RunTag("search_space", "{}"), *tags])
        run = c.get_run(run_id)
        names.append(run.info.run_name)
        note = run.data.tags["mlflow.note.content"]
        assert note.startswith("Pruning sweep **digits**: `flatten_vit_micro` on digits, 16 ")
        assert "`search/target` (range [0.1, 0.7])" in note and "`finetune/lr`" in note
        assert "search/lr" not in note  # fixed: not explored
        assert "pareto.png" in note and "pareto.html" in note and "pareto.csv" in note
        assert "`early_stopped`" in note and "`pareto_front`" in note and "latency_ms" in note
    assert names == ["digits 12-06 21:04:12", "digits 12-06 21:09:40"]


def test_open_lines_give_the_command_and_the_runs_table_url(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = mlflow_ui.open_lines("sqlite:///results/mlflow.db", "3", "abc123")
    assert lines == [
        "MLflow: parent run abc123, experiment 3; to open its runs table run",
        f"  mlflow ui --backend-store-uri sqlite:///{tmp_path}/results/mlflow.db --port 5000",
        "  then open http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning",
    ]


def test_a_server_uri_gives_its_own_url_without_the_password() -> None:
    lines = mlflow_ui.open_lines("https://me:s3cret@mlflow.example.com:5000/", "7", "abc")
    assert lines == [
        "MLflow: parent run abc, experiment 7; its runs table: https://mlflow.example.com:5000"
        "/#/experiments/7/runs?workflowType=machine_learning"
    ]
    db = mlflow_ui.open_lines("postgresql://mlflow:pw@db/mlflow", "1", "abc")
    assert db[1] == "  mlflow ui --backend-store-uri postgresql://mlflow:***@db/mlflow --port 5000"
    assert "pw" not in "".join(db)
    assert mlflow_ui.open_lines("databricks", "1", "abc") == [
        "MLflow: parent run abc, experiment 1 at databricks"
    ]


def test_the_printed_link_opens_the_sweeps_own_view_of_its_trials(tmp_path) -> None:
    """issue 30: a fresh browser on the printed URL sees this sweep's trials sorted by
    pareto_rank with the front's columns: the view is stored as the UI's shared view (an
    experiment tag) and its filter and order are valid MLflow search syntax."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from orchestrator import end_summary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("digits", artifact_location=tmp_path.as_uri())
    parent = c.create_run(exp, run_name="digits 12-07").info.run_id
    kids = {}
    for tid, rank in (("t1", 1.0), ("t0", 0.0), ("t2", None)):
        run_id = c.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
        if rank is not None:
            c.log_batch(run_id, metrics=[Metric("pareto_rank", rank, 0, 1)])
        kids[tid] = run_id
    other = c.create_run(exp, tags={"mlflow.parentRunId": "another sweep"}).info.run_id
    c.log_metric(other, "pareto_rank", 0.0)
    (tmp_path / "sweep.json").write_text(json.dumps({"experiment_id": exp}))
    pq.write_table(pa.table({"trial_id": ["t0"], "param_search/target": [0.5]}),
                   tmp_path / "trials.parquet")  # fmt: skip

    lines = end_summary.mlflow_lines(uri, tmp_path, parent)
    assert lines[-1].endswith(
        f"/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={parent}"
    )
    view = json.loads(c.get_experiment(exp).tags[f"mlflow.sharedViewState.{parent}"])
    assert view["selectedColumns"][:4] == [
        "tags.`trial_status`", "tags.`pareto_front`", "metrics.`pareto_rank`", "metrics.`top1_pct`"
    ]  # fmt: skip
    assert "metrics.`latency_ms`" in view["selectedColumns"]
    assert view["selectedColumns"][-1] == "params.`search/target`"
    direction = "ASC" if view["orderByAsc"] else "DESC"
    found = c.search_runs(
        [exp], view["searchFilter"], order_by=[f"{view['orderByKey']} {direction}"]
    )
    assert [r.info.run_id for r in found] == [kids["t0"], kids["t1"], kids["t2"]]
    # a store that refuses the tag: the plain link, no view
    lines = end_summary.mlflow_lines("sqlite:////nonexistent/dir/x.db", tmp_path, parent)
    assert lines[-1].endswith("runs?workflowType=machine_learning")
