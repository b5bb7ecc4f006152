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
