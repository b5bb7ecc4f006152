"""End to end on digits: a real sweep (Ray local, 2 CPUs, tiny budgets), MLflow, Pareto, report.

One sweep of 4 trials is shared by the assertions below. Its MAC targets are pinned with
``sweep.points_to_evaluate`` (0.7, 0.02, 0.5, 0.5; init mode and lr are sampled): 0.02 is below
what the model can reach, so that trial fails inside ``finalize``: the sweep must still finish,
keep the other trials' results, and record the failure.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    TARGET_RANGE,
    brute_force,
    children,
    kill_group,
    mlflow_client,
    run_sweep_cli,
    tune_results,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from orchestrator.sweep import main

    tmp = tmp_path_factory.mktemp("sweep")
    config = write_config(
        tmp,
        "e2e",
        seed=0,
        search={
            "target": [0.02, 0.5, 0.7],
            "init_mode": ["uniform", "attn_leave_out"],
            "init_scale": {"low": 0.5, "high": 2.0},
        },
        finetune={"lr": {"low": 1e-3, "high": 3e-3, "log": True}},
        sweep={
            "num_samples": 20,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "asha": {"metric": "top1", "grace_period": 1, "reduction_factor": 2},
            "max_failures": 1,
            "points_to_evaluate": [{"search": {"target": t}} for t in (0.7, 0.02, 0.5, 0.5)],
        },
    )
    code = main([str(config), "--num-samples", "4"])
    return {"tmp": tmp, "dir": tmp / "results" / "e2e", "code": code}


def parent_experiment_kind(client, parent) -> str:
    return client.get_experiment(parent.info.experiment_id).tags.get("mlflow.experimentKind")


def test_sweep_exits_zero_and_parent_holds_the_artifacts(sweep):
    assert sweep["code"] == 0
    state = json.loads((sweep["dir"] / "sweep.json").read_text())
    client = mlflow_client(sweep["tmp"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.parquet", "pareto.png", "trials.parquet", "config.json"} <= artifacts
    assert {"param_importance.json", "param_importance.png", "speedup.png"} <= artifacts
    # the front was timed side by side, after the last rebuild of the tables (not lost to it)
    front = pq.read_table(sweep["dir"] / "pareto.parquet").to_pylist()
    assert front and all(r["speedup"] > 0 and r["latency_ms"] > 0 for r in front)
    local = Path(client.download_artifacts(parent.info.run_id, "pareto.parquet", str(sweep["tmp"])))
    assert "speedup" in pq.read_table(local).column_names
    assert parent_experiment_kind(client, parent) == "custom_model_development"
    assert parent.data.params["model.name"] == "flatten_vit_micro"
    assert len(parent.data.tags["git_commit"]) >= 40
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    # once per rebuild of the tables, at its finished-trial count (rebuilds are coalesced:
    # sweep.refresh_every_s), the last one at the end with every trial
    steps = [m.step for m in history]
    assert steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] == 4, steps
    assert 0.0 < history[-1].value <= 1.0
    assert parent.data.metrics["teacher_top1_pct"] > 10.0  # better than chance after 2 epochs
    # Tune's JSON and CSV logs per trial, not its TensorBoard files (tuner.make_tuner)
    trial_dirs = sorted(sweep["dir"].glob("trial_*"))
    assert len(trial_dirs) == 4
    for d in trial_dirs:
        assert (d / "result.json").is_file() and not list(d.glob("events.out.tfevents*")), d
    reported = [d for d in trial_dirs if (d / "result.json").stat().st_size > 0]
    assert len(reported) == 3  # the target-0.02 trial fails before its first report
    assert all((d / "progress.csv").stat().st_size > 0 for d in reported)


def test_the_runs_table_marks_the_front_with_its_measured_speed(sweep):
    """issue 30: in MLflow's runs table the front's trials are ``pareto_front = true`` (rank 0)
    with the latency and speed-up timed at the end; the front is previewable on the parent."""
    import csv

    state = json.loads((sweep["dir"] / "sweep.json").read_text())
    client = mlflow_client(sweep["tmp"])
    parent = state["parent_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.csv", "pareto.html"} <= artifacts
    front = {r["trial_id"]: r for r in pq.read_table(sweep["dir"] / "pareto.parquet").to_pylist()}
    with (sweep["dir"] / "pareto.csv").open() as f:
        assert sorted(r["trial_id"] for r in csv.DictReader(f)) == sorted(front)
    runs = {r.data.tags["trial_id"]: r for r in children(client, parent)}
    marked = {t for t, r in runs.items() if r.data.tags.get("pareto_front") == "true"}
    assert marked == set(front)
    for tid, run in runs.items():
        m = run.data.metrics
        if tid in front:
            assert m["pareto_rank"] == 0.0
            assert m["latency_ms"] == pytest.approx(front[tid]["latency_ms"], rel=1e-3)
            assert m["speedup_x"] == pytest.approx(front[tid]["speedup"], rel=1e-3)
        else:
            assert run.data.tags["pareto_front"] == "false" and "latency_ms" not in m
            assert m.get("pareto_rank", 1.0) >= 1.0  # none for a partial or failed trial
    page = (sweep["dir"] / "pareto.html").read_text()
    assert all(f"run {front[t]['run_id']}" in page for t in front)
    failed = [r for r in runs.values() if r.info.status == "FAILED"]
    assert [r.data.tags["trial_status"] for r in failed] == ["failed"]


def test_every_trial_is_one_child_run_with_params_metrics_and_weights(sweep):
    import prune_core
    from orchestrator import space
    from orchestrator.config import load_config
    from orchestrator.model import create_model

    state = json.loads((sweep["dir"] / "sweep.json").read_text())
    client = mlflow_client(sweep["tmp"])
    runs = children(client, state["parent_run_id"])
    trials = pq.read_table(sweep["dir"] / "trials.parquet").to_pylist()
    assert len(runs) == len(trials) == 4
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t["trial_id"] for t in trials)
    failed = [r for r in runs if r.info.status == "FAILED"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(failed) == 1 and len(finished) == 3
    assert all(float(r.data.params["search/target"]) == 0.02 for r in failed)
    exp = load_config(sweep["tmp"] / "e2e.yaml")
    for run in finished:
        # the explored settings under their one names (the fixed ones are the parent's);
        # init_scale is not sampled where init_mode is uniform (it has no effect there)
        uniform = run.data.params["search/init_mode"] == "uniform"
        names = set(space.explored(exp.tunable_sections)) - (
            {"search/init_scale"} if uniform else set()
        )
        assert set(run.data.params) == names
        lr = run.data.params["finetune/lr"]  # sampled from a log range: 4 significant digits
        assert lr == f"{float(lr):.4g}" and len(lr.strip("0.").replace(".", "")) <= 4, lr
        m = run.data.metrics
        steps = [x.step for x in client.get_metric_history(run.info.run_id, "top1_pct")]
        assert steps == list(range(1, int(m["training_iteration"]) + 1))  # per epoch, no repeats
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"plan.json", "search.json", "widths.csv", "widths.png"} <= names
        # MLflow's names say the unit (mlflow_names); Tune's short ones are not logged
        assert not {"top1", "macs", "params", "lr", "pruned_top1"} & set(m)
        assert "top1_before_finetune_pct" in m
        status = run.data.tags["trial_status"]
        assert status == ("complete" if m["fully_trained"] == 1.0 else "early_stopped")
        if m["fully_trained"] == 1.0:
            assert {"top1_pct", "macs_count", "params_count", "throughput_img_per_s"} <= set(m)
            assert m["macs_ratio"] <= float(run.data.params["search/target"]) + 1e-9
            local = Path(
                client.download_artifacts(run.info.run_id, "", str(sweep["tmp"] / run.info.run_id))
            )
            model = prune_core.load_pruned(
                create_model(exp, load_checkpoint=False), local / "plan.json", local / "weights.pt"
            )
            assert prune_core.count_macs(model, exp.input_size) == int(m["macs_count"])


def test_pareto_parquet_equals_brute_force_over_trials_parquet(sweep):
    trials = pq.read_table(sweep["dir"] / "trials.parquet").to_pylist()
    done = [t for t in trials if t["fully_trained"]]
    assert done, "no trial finished its fine-tune"
    keep = brute_force([t["top1"] for t in done], [t["macs"] for t in done])
    expected = sorted(t["trial_id"] for t, k in zip(done, keep, strict=True) if k)
    front = pq.read_table(sweep["dir"] / "pareto.parquet").to_pylist()
    assert sorted(t["trial_id"] for t in front) == expected
    assert all(t["status"] in ("TERMINATED", "ERROR") for t in trials)


def test_optuna_study_has_no_orphan_running_trials(sweep):
    import optuna

    state_file = max(sweep["dir"].glob("searcher-state-*.pkl"))
    searcher = pickle.loads(state_file.read_bytes())
    study = searcher["_ot_study"]
    states = [t.state for t in study.get_trials()]
    assert len(states) == 4 and optuna.trial.TrialState.RUNNING not in states
    assert len(study.directions) == 2  # still multi-objective: no metric leaked into TuneConfig


def test_optuna_db_holds_every_trial_for_optuna_dashboard(sweep):
    """``optuna-dashboard sqlite:///<sweep>/optuna.db``: every ended trial, fully trained ones
    COMPLETE with (top-1 %, MACs ratio) as in trials.parquet, ASHA-stopped ones PRUNED."""
    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{sweep['dir']}/optuna.db")
    rows = {r["trial_id"]: r for r in pq.read_table(sweep["dir"] / "trials.parquet").to_pylist()}
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(trials) == set(rows) and len(trials) == 4
    assert study.metric_names == ["top1_pct", "macs_ratio"]
    for trial_id, t in trials.items():
        row = rows[trial_id]
        # init_scale is sampled only for some init modes (space.SAMPLED_ONLY_WHEN)
        assert {"search/target", "search/init_mode", "finetune/lr"} <= set(t.params)
        assert set(t.params) <= {"search/target", "search/init_mode", "search/init_scale",
                                 "finetune/lr"}  # fmt: skip
        assert t.params["search/target"] == row["param_search/target"]
        if row["fully_trained"]:
            assert t.state.name == "COMPLETE" and t.user_attrs["status"] == "complete"
            assert t.values == pytest.approx([row["top1"], row["macs_ratio"]], rel=1e-12)
        elif row["error"] or row["top1"] is None:  # the 0.02 target cannot be reached
            assert t.state.name == "FAIL" and t.user_attrs["status"] == "failed"
        else:
            assert t.state.name == "PRUNED" and t.user_attrs["status"] == "early_stopped"
    states = {t.state.name for t in study.trials}
    assert "COMPLETE" in states and "FAIL" in states


def test_report_cli_prints_the_front_and_writes_the_plot(sweep, tmp_path):
    out = tmp_path / "front.png"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.report", str(sweep["dir"]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    front = pq.read_table(sweep["dir"] / "pareto.parquet").to_pylist()
    assert "teacher" in proc.stdout and "hypervolume" in proc.stdout
    for row in front:
        assert row["trial_id"] in proc.stdout
    assert out.stat().st_size > 10_000
    state = json.loads((sweep["dir"] / "sweep.json").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.report",
            state["parent_run_id"],
            "--tracking-uri",
            f"sqlite:///{sweep['tmp'] / 'results' / 'mlflow.db'}",
            "--out",
            str(tmp_path / "from_run.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(row["trial_id"] in proc.stdout for row in front)


def test_existing_sweep_is_not_overwritten_without_resume(sweep):
    proc = run_sweep_cli(sweep["tmp"] / "e2e.yaml")
    assert proc.returncode == 2
    assert "already holds sweep 'e2e': pass --resume" in proc.stderr.strip().splitlines()[-1]


def _finished_trials(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "trials.parquet"
    if not path.is_file():
        return []
    try:
        rows = pq.read_table(path).to_pylist()
    except OSError:  # being replaced right now
        return []
    return [r["trial_id"] for r in rows if r["status"] == "TERMINATED"]


def test_resume_after_killing_the_driver_runs_every_trial_once(tmp_path):
    import time

    import optuna

    config = write_config(
        tmp_path,
        "resume",
        search=TARGET_RANGE,
        sweep={
            "num_samples": 6,  # enough that the kill lands mid-sweep
            "max_concurrent_trials": 2,
            "sampler": "nsga2",
            "population_size": 2,
            "asha": None,
            "max_failures": 0,
            # trials.parquet after every finished trial (the default coalesces 10 s, which
            # let all four finish before the test could see two and kill the driver)
            "refresh_every_s": 0,
        },
    )
    sweep_dir = tmp_path / "results" / "resume"
    cmd = [sys.executable, "-m", "orchestrator.sweep", str(config)]
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: len(_finished_trials(sweep_dir)) >= 2, timeout=400, every=0.5,
                   what="two trials finished", proc=driver,
                   log=tmp_path / "first.log")  # fmt: skip
    finally:
        kill_group(driver.pid)  # the driver and the Ray node it started
        driver.wait()
    killed_at = time.time()
    before = set(_finished_trials(sweep_dir))
    client = mlflow_client(tmp_path)
    state = json.loads((sweep_dir / "sweep.json").read_text())
    final_before = {
        r.data.tags["trial_id"]: r.data.metrics["top1_pct"]
        for r in children(client, state["parent_run_id"])
        if r.data.tags["trial_id"] in before
    }
    teacher_mtime = (sweep_dir / "teacher" / "teacher.pt").stat().st_mtime
    assert 2 <= len(before) < 6

    proc = subprocess.run(
        cmd + ["--resume"], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    trials = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert len(trials) == 6 and len({t["trial_id"] for t in trials}) == 6
    assert all(t["status"] == "TERMINATED" and t["fully_trained"] for t in trials)
    results = tune_results(sweep_dir)
    for trial_id in before:  # finished before the kill: no search or fine-tune again (Tune's
        # state may lag, so the final result can be handed over once more, nothing else)
        again = [r["phase"] for r in results[trial_id] if r["timestamp"] >= int(killed_at)]
        assert set(again) <= {"done"}, (trial_id, again)
    for trial_id, rows in results.items():
        assert [r["training_iteration"] for r in rows][-1] == 3, (trial_id, rows)
    assert (sweep_dir / "teacher" / "teacher.pt").stat().st_mtime == teacher_mtime

    runs = children(client, state["parent_run_id"])
    # A trial started after Tune's last snapshot is unknown to the restored Tune, which
    # samples again in its place: its run is ended KILLED, tagged LOST, left out of the tables.
    lost = [r for r in runs if r.data.tags["trial_status"] == "lost"]
    assert all(
        r.info.status == "KILLED" and "driver was killed" in r.data.tags["error"] for r in lost
    )
    assert not {r.data.tags["trial_id"] for r in lost} & {t["trial_id"] for t in trials}
    runs = [r for r in runs if r not in lost]
    for run in runs:
        if run.data.tags["trial_id"] in final_before:
            assert run.data.metrics["top1_pct"] == final_before[run.data.tags["trial_id"]]
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t["trial_id"] for t in trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # epochs logged once each, even for the trial interrupted mid-way
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "top1_pct")]
        assert steps == [1, 2, 3]
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    newest = max(sweep_dir.glob("searcher-state-*.pkl"))  # one per driver start
    study = pickle.loads(newest.read_bytes())["_ot_study"]
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    # NSGA-II carried on from the restored population (population 2, 6 trials: the later ones
    # are sampled after two of generation 0 completed); a lost population would restart at 0
    generations = [t.system_attrs["NSGAIISampler:generation"] for t in complete]
    assert generations == sorted(generations) and generations[-1] >= 1, generations
    # optuna.db, for optuna-dashboard: both drivers' trials in one study, each once
    db = optuna.load_study(study_name="resume", storage=f"sqlite:///{sweep_dir}/optuna.db")
    copied = sorted(t.user_attrs["tune_trial_id"] for t in db.trials)
    assert copied == sorted(t["trial_id"] for t in trials)
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in db.trials)
