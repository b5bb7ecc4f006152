"""The data-parallel fine-tune: a Ray Train TorchTrainer inside the Tune trial (CPU, gloo).

On a GPU cluster the same path runs NCCL on ``finetune.workers`` GPUs; here two CPU workers
check that rank 0's per-epoch reports and its final checkpoint reach Tune and MLflow, and that
the pruned weights it saves reload to the reported MACs.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers import children, fault_rules, mlflow_client, tune_results, write_config

pytestmark = pytest.mark.sweep


def dp_config(tmp_path, name: str, max_failures: int):
    """One trial, two 2-epoch fine-tune workers sharing the second CPU (gloo)."""
    return write_config(
        tmp_path,
        name,
        finetune={"epochs": 2, "workers": 2},
        sweep={
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "asha": None,
            "max_failures": max_failures,
        },
        resources={
            "num_cpus": 2,
            "cpus_per_trial": 1,
            "cpus_per_worker": 0.5,
            "gpus_per_worker": 0,
            "torch_threads": 1,
            "teacher_cpus": 1,
        },
    )


def test_data_parallel_finetune_reports_through_tune(tmp_path):
    import prune_core
    from orchestrator.config import load_config
    from orchestrator.model import create_model
    from orchestrator.sweep import main

    config = dp_config(tmp_path, "dp", max_failures=0)
    assert main([str(config)]) == 0
    sweep_dir = tmp_path / "results" / "dp"
    (trial,) = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert trial["fully_trained"] and trial["iterations"] == 3  # search + 2 epochs
    state = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow_client(tmp_path)
    (run,) = children(client, state["parent_run_id"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "top1_pct")]
    assert steps == [1, 2, 3]
    assert run.data.metrics["finetune_workers"] == 2.0  # rank 0 of a world of two reported
    local = tmp_path / "artifacts"
    client.download_artifacts(run.info.run_id, "", str(local))
    # the search's learned widths survive the trip through the workers (they were dropped)
    assert (local / "widths.csv").read_text().count("\n") >= 2 and (local / "widths.png").is_file()
    exp = load_config(config)
    model = prune_core.load_pruned(
        create_model(exp, load_checkpoint=False), local / "plan.json", local / "weights.pt"
    )
    assert prune_core.count_macs(model, exp.input_size) == trial["macs"]
    assert (sweep_dir / "finetune").is_dir()  # the Train run lives next to the sweep


def test_data_parallel_nan_fails_the_trial_once_with_its_reason(tmp_path, monkeypatch):
    """A NaN loss inside the Ray Train fine-tune is terminal, as in a one-process trial.

    Without that, Ray Train would retry the workers, then Tune the trial from its search
    checkpoint (not poisoned), and the divergence would vanish from the record.
    """
    from orchestrator.sweep import main

    rules = fault_rules(tmp_path, {"point": "before_finetune", "action": "nan"})
    monkeypatch.setenv("ORCHESTRATOR_FAULTS", str(rules))  # inherited by the Ray workers
    config = dp_config(tmp_path, "dpnan", max_failures=1)
    assert main([str(config)]) == 1  # every trial failed
    sweep_dir = tmp_path / "results" / "dpnan"
    (rows,) = tune_results(sweep_dir).values()
    assert [r["phase"] for r in rows] == ["search", "failed"]  # nothing retried
    assert "non-finite loss" in rows[-1]["error"]
    (trial,) = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert trial["status"] == "ERROR" and not trial["fully_trained"]
    state = json.loads((sweep_dir / "sweep.json").read_text())
    (run,) = children(mlflow_client(tmp_path), state["parent_run_id"])
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["error"]
