"""The driver's tracking at scale, without a sweep: the Tune callback fed synthetic trials, MLflow
on SQLite. Rebuilds of the tables coalesce (many completions, few rebuilds, the last one
complete), the outbox appends and is compacted on replay, and a restored logger reads its
table back from MLflow once (issue 25)."""

from __future__ import annotations

import os
import pickle
import stat

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from benchmarks._fake_trial import FakeTrial
from orchestrator import outbox, tracking
from orchestrator.trial_logger import TrialLogger

PARAMS = ["search/target", "search/init_mode"]


def _result(i: int, it: int, epochs: int = 2) -> dict:
    ratio = 0.1 + 0.8 * ((i * 37) % 100) / 100
    return {
        "top1": 50 + 40 * ratio + it,
        "macs": int(1e6 * ratio),
        "macs_ratio": ratio,
        "params": 1000,
        "fully_trained": float(it == epochs + 1),
        "training_iteration": it,
        "timestamp": 1.0e9 + it,
    }


def _trial(i: int) -> FakeTrial:
    return FakeTrial(f"{i:04d}", {"search": {"target": 0.1 + i / 100, "init_mode": "magnitude"}})


def _run(logger: TrialLogger, trial: FakeTrial, i: int, epochs: int = 2) -> None:
    logger.on_trial_start(iteration=0, trials=[], trial=trial)
    for it in range(1, epochs + 2):
        trial.last_result = _result(i, it, epochs)
        logger.on_trial_result(iteration=0, trials=[], trial=trial, result=trial.last_result)
    logger.on_trial_complete(iteration=0, trials=[], trial=trial)
    logger.on_step_end(iteration=0, trials=[])


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.experiment_id(uri, "scale", tmp_path / "artifacts")
    parent = tracking.start_parent(uri, exp_id, "scale", {"name": "scale"}, [])
    sweep_dir = tmp_path / "scale"
    sweep_dir.mkdir()
    return uri, parent, str(sweep_dir)


def test_many_completions_cost_few_rebuilds_and_the_last_one_is_complete(store):
    uri, parent, sweep_dir = store
    logger = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False,
                         refresh_every_s=3600)  # fmt: skip
    pending = []
    for i in range(30):
        _run(logger, _trial(i), i)
        pending.append(logger.pending_rebuilds())
    logger.wait()
    assert max(pending) <= 1
    assert len(logger.rebuild_times()) <= 2  # the first completion's, then none for an hour
    summary = logger.summary()  # the end: once more, with every trial
    assert len(logger.rebuild_times()) <= 3
    table = pq.read_table(f"{sweep_dir}/trials.parquet").to_pylist()
    assert len(table) == 30 and {r["status"] for r in table} == {"TERMINATED"}
    assert all(r["iterations"] == 3 and r["fully_trained"] for r in table)
    assert summary["finished"] == 30
    c = MlflowClient(uri)
    history = c.get_metric_history(parent, "hypervolume")
    assert max(m.step for m in history) == 30
    assert summary["hypervolume"] == pytest.approx(history[-1].value)
    # the in-memory table is what MLflow holds, row for row
    from_mlflow = tracking.trial_rows(uri, parent)
    assert [{k: r[k] for k in sorted(r)} for r in from_mlflow] == [
        {k: r[k] for k in sorted(r)} for r in table
    ]


def test_a_restored_logger_reads_its_table_from_mlflow_once(store):
    uri, parent, sweep_dir = store
    first = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False)
    for i in range(4):
        _run(first, _trial(i), i)
    running = _trial(4)
    first.on_trial_start(iteration=0, trials=[], trial=running)
    running.last_result = _result(4, 1)
    first.on_trial_result(iteration=0, trials=[], trial=running, result=running.last_result)
    first.wait()
    blob = pickle.dumps(first)  # as in tuner.pkl

    # --resume: a new driver process; its own logger, then Tune's unpickled copy
    from orchestrator import trial_logger

    trial_logger._LIVE.clear()
    driver = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False,
                         resume=True)  # fmt: skip
    restored = pickle.loads(blob)
    assert restored.writer is driver.writer  # one live state per sweep in a process
    for it in (1, 2, 3):  # Tune reports iteration 1 again after the restore: logged once
        running.last_result = _result(4, it)
        restored.on_trial_result(iteration=0, trials=[], trial=running, result=running.last_result)
    restored.on_trial_complete(iteration=0, trials=[], trial=running)
    _run(restored, _trial(5), 5)
    summary = driver.summary()
    table = pq.read_table(f"{sweep_dir}/trials.parquet").to_pylist()
    assert [r["trial_id"] for r in table] == [f"{i:04d}" for i in range(6)]
    assert summary["finished"] == 6
    c = MlflowClient(uri)
    runs = tracking.children(uri, parent)
    assert len(runs) == 6  # no run created twice
    run4 = next(r for r in runs if r.data.tags["trial_id"] == "0004")
    steps = [m.step for m in c.get_metric_history(run4.info.run_id, "top1_pct")]
    assert steps == [1, 2, 3]
    assert max(m.step for m in c.get_metric_history(parent, "hypervolume")) == 6


def test_an_outage_is_appended_and_replayed_compacted(store, monkeypatch):
    uri, parent, sweep_dir = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False)
    w = logger.writer
    w.uri = w.runs.uri = w.table.uri = "http://127.0.0.1:9"  # MLflow goes away
    reads = []
    pending = outbox.Outbox.pending
    monkeypatch.setattr(outbox.Outbox, "pending", lambda box: reads.append(1) or pending(box))
    for i in range(3):
        _run(logger, _trial(i), i, epochs=4)
    logger.wait()
    assert len(reads) <= 1  # each buffered operation an append: the file is not read back
    monkeypatch.setattr(outbox.Outbox, "pending", pending)
    box = outbox.Outbox(sweep_dir)
    ops = box.pending()
    assert [op["op"] for op in ops].count("result") == 15 and len(ops) == 21
    assert stat.S_IMODE(os.stat(box.path).st_mode) == 0o600
    merged = outbox.compact(ops)
    assert [op["op"] for _, op in merged] == ["complete"] * 3  # a trial's ops: one batch
    assert [len(op["results"]) for _, op in merged] == [5, 5, 5]
    assert sorted(i for indices, _ in merged for i in indices) == list(range(21))
    w.uri = w.runs.uri = w.table.uri = uri  # back
    assert logger.flush()
    assert not box.path.exists()
    runs = tracking.children(uri, parent)
    assert len(runs) == 3
    c = MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED"
        history = c.get_metric_history(run.info.run_id, "top1_pct")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert set(run.data.params) == set(PARAMS)


def test_the_outbox_appends_past_a_torn_line_and_compacts_to_what_is_left(tmp_path):
    box = outbox.Outbox(tmp_path)
    box.append({"op": "start", "trial": "a"})
    with box.path.open("a") as f:  # a driver killed mid-append
        f.write('{"op": "res')
    box.append({"op": "complete", "trial": "a", "result": {}})
    assert [op["op"] for op in box.pending()] == ["start", "complete"]
    box.replace([{"op": "complete", "trial": "a", "result": {}}])
    assert [op["op"] for op in box.pending()] == ["complete"]
    assert stat.S_IMODE(box.path.stat().st_mode) == 0o600
    box.replace([])
    assert not box.path.exists() and list(tmp_path.iterdir()) == []


def test_the_mirror_pushes_only_new_or_changed_files_and_the_log_at_the_end(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from orchestrator import mirror

    class Exp:  # what push reads of an experiment
        sweep_dir = tmp_path / "sweep"

    remote = tmp_path / "bucket"
    remote.mkdir()
    monkeypatch.setattr(mirror, "mirror_uri", lambda exp: "s3://bucket/x.driver")
    monkeypatch.setattr(mirror, "_remote", lambda uri: (pafs.LocalFileSystem(), str(remote)))
    Exp.sweep_dir.mkdir()
    for name in ("sweep.json", "trials.parquet", "ray.log"):
        (Exp.sweep_dir / name).write_text(name)
    assert mirror.push(Exp, logs=False) == 2  # after a trial: not the growing log
    assert mirror.push(Exp, logs=False) == 0  # nothing changed: nothing copied
    (Exp.sweep_dir / "trials.parquet").write_text("one more trial")
    assert mirror.push(Exp, logs=False) == 1
    assert (remote / "trials.parquet").read_text() == "one more trial"
    assert mirror.push(Exp) == 1 and (remote / "ray.log").read_text() == "ray.log"  # the end


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_during_an_outage_is_warned_once_and_the_loss_counted(store, monkeypatch):
    """MLflow away and the outbox refused (ENOSPC): operations stay in memory, one warning;
    at the end they are written if the disk has room again, else counted as lost (the sweep
    says so and exits 1, orchestrator.sweep_run.run)."""
    from orchestrator import _atomic, driver_output

    uri, parent, sweep_dir = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    warned = []
    monkeypatch.setattr(driver_output, "warn", warned.append)
    logger = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False)
    w = logger.writer
    w.uri = w.runs.uri = w.table.uri = "http://127.0.0.1:9"  # MLflow goes away
    monkeypatch.setattr(outbox.Outbox, "append", _disk_full)
    monkeypatch.setattr(_atomic, "atomic_write", _disk_full)
    monkeypatch.setattr(outbox, "atomic_write", _disk_full)
    for i in range(2):
        _run(logger, _trial(i), i, epochs=1)
    assert not logger.end_sweep("FINISHED", say=lambda line: None)
    assert sum("cannot write" in line and "No space left" in line for line in warned) == 1
    left, lost = logger.unlogged()
    assert left == lost == len(w.held) > 0
    assert not outbox.Outbox(sweep_dir).path.exists()
    monkeypatch.undo()  # room on the disk again: the end writes them, nothing is lost
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    left_now, lost_now = logger.unlogged()
    assert (left_now, lost_now) == (left, 0)
    ops = outbox.Outbox(sweep_dir).pending()
    assert len(ops) == left and [op["op"] for op in ops].count("result") == 4


def test_a_full_disk_loses_nothing_when_mlflow_comes_back(store, monkeypatch):
    uri, parent, sweep_dir = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = TrialLogger(uri, parent, sweep_dir, "scale", PARAMS, print_fronts=False)
    w = logger.writer
    w.uri = w.runs.uri = w.table.uri = "http://127.0.0.1:9"
    monkeypatch.setattr(outbox.Outbox, "append", _disk_full)
    for i in range(2):
        _run(logger, _trial(i), i, epochs=1)
    logger.wait()
    assert w.held
    w.uri = w.runs.uri = w.table.uri = uri  # MLflow back, the disk still full
    assert logger.flush()
    assert logger.unlogged() == (0, 0)
    runs = tracking.children(uri, parent)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def test_a_sweep_that_lost_tracking_records_exits_1(tmp_path, monkeypatch):
    """The driver's exit status carries the loss the run found at its end (its steps are a
    sweep; here they end with the count end_sweep left, as ``SweepRun._close`` sets it)."""
    from orchestrator import sweep_run
    from orchestrator.config import load_config
    from tests.helpers import write_config

    exp = load_config(write_config(tmp_path, "lost"))
    for lost, code, expected in [(3, 0, 1), (0, 0, 0), (3, 130, 130)]:

        def ran(self, lost=lost, code=code):
            self.lost = lost
            return code

        monkeypatch.setattr(sweep_run.SweepRun, "run", ran)
        assert sweep_run.run(exp, "sqlite:///x.db", address=None, resume=False, source="x") == (
            expected
        )
    line = sweep_run.unlogged_line("http://u:pw@h", 5, 2, tmp_path)
    assert "did not take 5 tracking record(s); 2 of them could not be written" in line
