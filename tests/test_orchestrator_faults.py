"""Faults injected into real sweeps (Ray local, 2 CPUs, tiny budgets): nothing may be lost.

- a trial that raises once is retried from its last checkpoint (no search again, no epoch twice);
- a trial whose loss goes NaN is stopped at once, not retried, and recorded as failed with the
  reason (MLflow child run FAILED + ``error`` tag, ``trials.parquet`` status/error columns);
- a trial's Ray worker SIGKILLed mid-trial restarts from its checkpoint;
- an MLflow server that does not answer at start: one line naming the URI, non-zero exit,
  nothing run or written;
- an MLflow server killed mid-sweep: the driver buffers what it could not log in the sweep
  directory and replays it when the server is back (or at the end / on ``--resume``).

Faults reach inside the trials through ``ORCHESTRATOR_FAULTS`` (see orchestrator/faults.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    TARGET_RANGE,
    MlflowServer,
    children,
    fault_rules,
    free_port,
    kill_group,
    mlflow_client,
    random_sweep,
    sweep_cmd,
    tune_results,
    wait_until,
    write_config,
)

from orchestrator import space
from orchestrator.config import load_config

pytestmark = [pytest.mark.sweep, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# ----------------------------------------------------------------------------- trial faults
@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """3 trials, 3 faults: the first to start fine-tuning goes NaN, the first to finish fine-tune
    epoch 1 raises, the next to finish epoch 1 stalls until this fixture SIGKILLs its worker."""
    tmp = tmp_path_factory.mktemp("faults")
    rules = fault_rules(
        tmp,
        {"point": "before_finetune", "action": "nan"},
        {"point": "epoch_end", "epoch": 1, "action": "raise"},
        {"point": "epoch_end", "epoch": 1, "action": "stall", "seconds": 300},
    )
    config = write_config(
        tmp,
        "faulty",
        seed=1,
        finetune={"epochs": 3},
        search=TARGET_RANGE,
        sweep=random_sweep(3, concurrent=2, max_failures=1),
    )
    log = (tmp / "driver.log").open("w")
    driver = subprocess.Popen(
        sweep_cmd(config),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ORCHESTRATOR_FAULTS": str(rules)},
        start_new_session=True,
    )
    stall = rules.with_name("fired-2.json")
    try:
        # the marker is written after the epoch's report and checkpoint, just before the
        # stall: killing now is a worker lost mid-trial, past its report
        killed = wait_until(lambda: json.loads(stall.read_text()), timeout=400,
                            what="a trial reached the stall", proc=driver,
                            log=tmp / "driver.log", every=0.3)  # fmt: skip
        os.kill(killed["pid"], signal.SIGKILL)
        code = driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            kill_group(driver.pid)
            driver.wait()
    fired = {
        json.loads(p.read_text())["action"]: json.loads(p.read_text())
        for p in rules.parent.glob("fired-*.json")
    }
    return {
        "tmp": tmp,
        "dir": tmp / "results" / "faulty",
        "code": code,
        "fired": fired,
        "log": (tmp / "driver.log").read_text(),
    }


def _client(tmp: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")


def _runs_by_trial(tmp: Path, sweep_dir: Path) -> dict:
    state = json.loads((sweep_dir / "sweep.json").read_text())
    return {r.data.tags["trial_id"]: r for r in children(_client(tmp), state["parent_run_id"])}


def _assert_resumed_from_checkpoint(faulty, trial_id: str) -> None:
    """One search, epochs 0..3 each reported once, one final result: nothing redone or lost."""
    rows = tune_results(faulty["dir"])[trial_id]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3], rows
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["phase"] for r in rows].count("search") == 1
    assert [r["phase"] for r in rows].count("done") == 1
    run = _runs_by_trial(faulty["tmp"], faulty["dir"])[trial_id]
    assert run.info.status == "FINISHED" and run.data.metrics["fully_trained"] == 1.0
    steps = [m.step for m in _client(faulty["tmp"]).get_metric_history(run.info.run_id, "top1_pct")]
    assert steps == [1, 2, 3, 4]


def test_faulty_sweep_finishes_every_trial(faulty):
    assert faulty["code"] == 0, faulty["log"][-4000:]
    assert set(faulty["fired"]) == {"nan", "raise", "stall"}
    assert len({f["trial_id"] for f in faulty["fired"].values()}) == 3  # one fault per trial
    trials = pq.read_table(faulty["dir"] / "trials.parquet").to_pylist()
    assert len(trials) == 3
    assert sorted(t["status"] for t in trials) == ["ERROR", "TERMINATED", "TERMINATED"]


def test_trial_that_raises_once_is_retried_from_its_checkpoint(faulty):
    _assert_resumed_from_checkpoint(faulty, faulty["fired"]["raise"]["trial_id"])


def test_sigkilled_worker_restarts_the_trial_from_its_checkpoint(faulty):
    killed = faulty["fired"]["stall"]
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # the worker really is gone
    _assert_resumed_from_checkpoint(faulty, killed["trial_id"])


def test_nan_trial_fails_once_with_its_reason_and_is_not_retried(faulty):
    import pickle

    import optuna

    trial_id = faulty["fired"]["nan"]["trial_id"]
    rows = tune_results(faulty["dir"])[trial_id]
    assert [r["phase"] for r in rows] == ["search", "failed"]  # no retry, no second search
    assert "non-finite loss" in rows[-1]["error"]
    run = _runs_by_trial(faulty["tmp"], faulty["dir"])[trial_id]
    assert run.info.status == "FAILED"
    assert run.data.tags["trial_status"] == "failed"
    assert "non-finite loss" in run.data.tags["error"]
    (row,) = [
        t
        for t in pq.read_table(faulty["dir"] / "trials.parquet").to_pylist()
        if t["trial_id"] == trial_id
    ]
    assert row["status"] == "ERROR" and "non-finite loss" in row["error"]
    assert not row["fully_trained"]
    front = pq.read_table(faulty["dir"] / "pareto.parquet").to_pylist()
    assert trial_id not in {t["trial_id"] for t in front}
    study = pickle.loads(next(faulty["dir"].glob("searcher-state-*.pkl")).read_bytes())
    states = sorted(t.state.name for t in study["_ot_study"].get_trials())
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert optuna.trial.TrialState.RUNNING.name not in states


def test_a_failed_teacher_ends_the_sweep_at_once_with_one_line(tmp_path):
    """Trials start while the teacher trains and wait for it (teacher_job.py): a teacher task
    that fails must still end the whole sweep at once (not retry trials that can never run),
    exit 1 with one line naming the cause, leave the parent run FAILED and store no teacher."""
    rules = fault_rules(tmp_path, {"point": "teacher", "action": "raise", "until": "release"})
    config = write_config(
        tmp_path,
        "noteacher",
        sweep=random_sweep(6, concurrent=2, max_failures=2),
    )
    sweep_dir, log = tmp_path / "results" / "noteacher", tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            sweep_cmd(config),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ORCHESTRATOR_FAULTS": str(rules)},
        )
    try:  # the teacher holds at its end until both slots' trials run (the live view's lines)
        wait_until(lambda: log.read_text().count(" started: ") >= 2, timeout=240,
                   what="both slots' trials started", proc=driver, log=log)  # fmt: skip
        (rules.parent / "release").touch()
        stderr = driver.communicate(timeout=240)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    stdout = log.read_text()
    assert driver.returncode == 1, stdout[-2000:] + stderr[-3000:]
    ours = [x for x in stderr.splitlines() if x.startswith("orchestrator.sweep: ")]
    assert ours == ["orchestrator.sweep: teacher: injected fault at teacher 0"], stderr
    assert "teacher top-1" not in stdout
    assert not (sweep_dir / "teacher" / "teacher.pt").exists()
    client = mlflow_client(tmp_path)
    parent = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    assert client.get_run(parent).info.status == "FAILED"
    runs = children(client, parent)
    assert len(runs) >= 2 and all(r.info.status in ("FAILED", "KILLED") for r in runs), runs
    # the trials that started waited and never reported; the searcher stopped sampling
    assert all(not rows for rows in tune_results(sweep_dir).values())
    assert len(runs) <= 2 * 3  # the slots, each tried at most 1 + max_failures times


# ----------------------------------------------------------------------------- tracking faults
def test_unreachable_tracking_server_at_start_fails_fast_with_one_line(tmp_path):
    config = write_config(tmp_path, "nomlflow", search={"target": 0.5})
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        sweep_cmd(config, "--tracking-uri", uri),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last == f"orchestrator.sweep: cannot reach the MLflow server at {uri}: connection refused"
    )
    assert not (tmp_path / "results").exists()  # no teacher, no trial, no sweep directory
    print(f"unreachable MLflow reported in {elapsed:.1f} s")


def test_tracking_outage_mid_sweep_is_buffered_and_replayed(tmp_path):
    """The server dies once the parent run exists and comes back while a trial still runs
    (held by a ``stall`` fault until the test releases it): the driver replays the outbox
    mid-sweep, with no event to carry it, and no ``--resume`` is needed."""
    from mlflow import MlflowClient

    server = MlflowServer(tmp_path)
    server.start()
    hold = {"action": "stall", "until": "release", "seconds": 300}
    rules = fault_rules(tmp_path, {"point": "epoch_end", "epoch": 1, **hold})
    config = write_config(
        tmp_path,
        "outage",
        finetune={"epochs": 2},
        search=TARGET_RANGE,
        sweep=random_sweep(3, concurrent=2, max_failures=0),
    )
    sweep_dir = tmp_path / "results" / "outage"
    outbox = sweep_dir / "tracking-outbox.jsonl"
    log_path = tmp_path / "driver.log"
    try:
        server.wait_up()
        log = log_path.open("w")
        driver = subprocess.Popen(
            sweep_cmd(config, "--tracking-uri", server.uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ORCHESTRATOR_FAULTS": str(rules)},
            start_new_session=True,
        )
        watch = {"proc": driver, "log": log_path}
        wait_until((sweep_dir / "sweep.json").is_file, timeout=400, every=0.1,
                   what="the parent run created", **watch)  # fmt: skip
        server.kill()  # then cut the server
        held = rules.with_name("fired-0.json")

        def two_unlogged_and_one_held() -> bool:
            buffered = [json.loads(x)["op"] for x in outbox.read_text().splitlines()]
            return buffered.count("complete") >= 2 and held.exists()

        wait_until(two_unlogged_and_one_held, timeout=400, every=0.3,
                   what="two trials ended unlogged, the third held", **watch)  # fmt: skip
        server.start()  # same port, same database: the server is back
        server.wait_up()
        wait_until(lambda: not outbox.exists(), timeout=400, every=0.3,
                   what="the outbox replayed mid-sweep (the retry timer)", **watch)  # fmt: skip
        assert "is back; replayed" in log_path.read_text()
        (rules.parent / "release").touch()  # let the held trial finish
        code = driver.wait(timeout=400)
        text = log_path.read_text()
        assert code == 0, text[-4000:]
        assert f"tracking: MLflow at {server.uri} failed" in text
        assert not outbox.exists()

        client = MlflowClient(server.uri)
        state = json.loads((sweep_dir / "sweep.json").read_text())
        parent = client.get_run(state["parent_run_id"])
        assert parent.info.status == "FINISHED"
        runs = children(client, state["parent_run_id"])
        trials = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
        assert len(runs) == len(trials) == 3
        exp = load_config(config)  # every explored setting is a param, under its one name
        assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(
            p.name.removeprefix("trial_") for p in sweep_dir.glob("trial_*")
        )
        for run in runs:  # every epoch of every trial, once, and the pruned model
            assert run.info.status == "FINISHED", run.data.tags
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "top1_pct")]
            assert steps == [1, 2, 3]
            assert run.data.metrics["fully_trained"] == 1.0
            assert set(run.data.params) == set(space.explored(exp.tunable_sections))
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"plan.json", "weights.pt", "search.json"} <= names
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"trials.parquet", "pareto.parquet", "pareto.png"} <= artifacts
        assert client.get_metric_history(parent.info.run_id, "hypervolume")
    finally:
        server.kill()
