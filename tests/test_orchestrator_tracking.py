"""MLflow bookkeeping that needs no sweep: the experiment a sweep logs into."""

from __future__ import annotations

from mlflow import MlflowClient

from orchestrator import tracking


def test_experiment_opens_in_the_runs_view(tmp_path) -> None:
    """MLflow 3 shows an untagged experiment in its GenAI view; a sweep's is tagged
    custom_model_development at creation, an old untagged one on first use, and a kind the
    user set is kept."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    new = tracking.experiment_id(uri, "fresh", tmp_path / "artifacts")
    assert c.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = c.create_experiment("old", artifact_location=(tmp_path / "a2").as_uri())
    assert "mlflow.experimentKind" not in c.get_experiment(old).tags
    assert tracking.experiment_id(uri, "old", None) == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    c.set_experiment_tag(old, "mlflow.experimentKind", "genai_development")
    assert tracking.experiment_id(uri, "old", None) == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "genai_development"


def test_parent_run_params_are_the_explored_space_and_a_few_settings(tmp_path) -> None:
    """The parent logged the whole flattened config (169 params for the digits demo, mostly
    None); now one param per explored knob with its range, the settings that tell sweeps
    apart, a distinct name and a description. The whole config stays in config.json."""
    import json
    import re
    from pathlib import Path

    from helpers import minimal

    from orchestrator import space
    from orchestrator.config import parse_config

    raw = minimal(
        search={"target": {"low": 0.3, "high": 0.8}, "init_mode": ["uniform", "magnitude"]}
    )
    exp = parse_config(raw, "x.yaml")
    rows = space.describe(exp.tunable_sections)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.experiment_id(uri, "t", tmp_path / "artifacts")
    config = json.loads(exp.model_dump_json())
    first = tracking.start_parent(uri, exp_id, "t", config, rows)
    c = MlflowClient(uri)
    run = c.get_run(first)
    params = run.data.params
    assert params["search/target"] == "range [0.3, 0.8]"
    assert params["search/init_mode"] == "choice of uniform, magnitude"
    assert params["model.name"] == "flatten_vit_micro" and params["data.kind"] == "digits"
    assert len(params) <= 12 and not any(v == "None" for v in params.values())
    assert "search/lr" not in params  # fixed: in config.json, not a column
    assert re.fullmatch(r"t \d\d-\d\d \d\d:\d\d:\d\d", run.info.run_name), run.info.run_name
    assert "search/target" in run.data.tags["mlflow.note.content"]
    saved = Path(c.download_artifacts(first, "config.json", str(tmp_path)))
    assert json.loads(saved.read_text())["search"]["lr"] == config["search"]["lr"]
