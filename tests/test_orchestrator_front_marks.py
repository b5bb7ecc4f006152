"""What MLflow's runs table shows of each trial (issue 30), without a sweep: the Tune callback
fed synthetic trials, MLflow on SQLite. ``trial_status`` tells complete, ASHA-stopped and
failed trials apart; ``pareto_front`` / ``pareto_rank`` follow the front as it changes, with
only the changed runs written, a bounded number per rebuild; metrics carry their units and
read back under Tune's keys; params are the explored settings, to 4 significant digits."""

from __future__ import annotations

import itertools

import pytest
from helpers import brute_force
from mlflow import MlflowClient

from benchmarks._fake_trial import FakeTrial
from orchestrator import mlflow_names, trial_artifacts, trial_table
from orchestrator.tracking import children, experiment_id, start_parent, trial_rows
from orchestrator.trial_logger import TrialLogger

PARAMS = ["search/target", "search/init_mode"]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = experiment_id(uri, "marks", tmp_path / "artifacts")
    parent = start_parent(uri, exp_id, "marks", {"name": "marks"}, [])
    sweep_dir = tmp_path / "marks"
    sweep_dir.mkdir()
    return uri, parent, str(sweep_dir)


def _logger(store) -> TrialLogger:
    uri, parent, sweep_dir = store
    logger = TrialLogger(uri, parent, sweep_dir, "marks", PARAMS, print_fronts=False,
                         refresh_every_s=0)  # fmt: skip
    logger.writer.table.clock = itertools.count(0, 3600).__next__  # every rebuild due at once
    return logger


def _ended(logger: TrialLogger, tid: str, finals: dict, *, target: float = 0.5) -> None:
    """A trial of two reports (the pruned model, then ``finals``), ended as Tune ends it: an
    ASHA-stopped one has ``fully_trained`` 0 in its last result."""
    trial = FakeTrial(tid, {"search": {"target": target, "init_mode": "magnitude"}})
    logger.on_trial_start(iteration=0, trials=[], trial=trial)
    first = {"top1": 10.0, "pruned_top1": 10.0, "fully_trained": 0.0, "training_iteration": 1}
    for result in (first, {**finals, "training_iteration": 2}):
        trial.last_result = {**result, "timestamp": 1.0e9 + result["training_iteration"]}
        logger.on_trial_result(iteration=0, trials=[], trial=trial, result=trial.last_result)
    logger.on_trial_complete(iteration=0, trials=[], trial=trial)
    logger.on_step_end(iteration=0, trials=[])
    logger.wait()


def _done(top1: float, ratio: float) -> dict:
    return {"top1": top1, "macs": int(1e6 * ratio), "macs_ratio": ratio, "fully_trained": 1.0}


def _marks(uri: str, parent: str) -> dict[str, tuple]:
    """trial id -> (trial_status, pareto_front, pareto_rank), as the runs table shows them."""
    return {
        r.data.tags["trial_id"]: (
            r.data.tags.get("trial_status"),
            r.data.tags.get("pareto_front"),
            r.data.metrics.get("pareto_rank"),
        )
        for r in children(uri, parent)
    }


def _ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting by its definition: peel the front off, again and again."""
    top1, macs = [p[0] for p in points], [p[1] for p in points]
    rank, left, depth = [0] * len(points), list(range(len(points))), 0
    while left:
        mask = brute_force([top1[i] for i in left], [macs[i] for i in left])
        for i, on in zip(left, mask, strict=True):
            rank[i] = depth if on else rank[i]
        left, depth = [i for i, on in zip(left, mask, strict=True) if not on], depth + 1
    return rank


def test_runs_show_how_each_trial_ended_and_the_front_as_it_changes(store):
    uri, parent, _ = store
    logger = _logger(store)
    table = logger.writer.table
    _ended(logger, "a", _done(70.0, 0.5), target=0.413108993050043)
    assert _marks(uri, parent)["a"] == ("complete", "true", 0.0)
    _ended(logger, "b", {"top1": 95.0, "fully_trained": 0.0})  # ASHA: partial, never front
    logger.on_trial_start(iteration=0, trials=[], trial=FakeTrial("c", {}))
    logger.on_trial_error(iteration=0, trials=[], trial=FakeTrial("c", {}))
    logger.wait()
    writes = table.marks.writes
    _ended(logger, "d", _done(80.0, 0.4))  # dominates a: a leaves the front, one rank down
    assert table.marks.writes - writes == 2  # d (true, 0) and a (false, 1): no other run
    assert _marks(uri, parent) == {
        "a": ("complete", "false", 1.0),
        "b": ("early_stopped", "false", None),
        "c": ("failed", "false", None),
        "d": ("complete", "true", 0.0),
    }
    writes = table.marks.writes
    _ended(logger, "e", _done(60.0, 0.7))  # behind a, itself behind d: rank 2, no one moves
    assert table.marks.writes - writes == 1
    assert _marks(uri, parent)["e"] == ("complete", "false", 2.0)
    logger.summary()
    runs = {r.data.tags["trial_id"]: r for r in children(uri, parent)}
    history = MlflowClient(uri).get_metric_history(runs["a"].info.run_id, "pareto_rank")
    assert [m.value for m in history] == [0.0, 1.0]  # on the front, then behind d
    assert runs["a"].data.params == {"search/target": "0.4131", "search/init_mode": "magnitude"}


def test_metrics_carry_units_and_read_back_under_tunes_keys_new_and_old(store):
    uri, parent, _ = store
    logger = _logger(store)
    _ended(logger, "a", {**_done(70.0, 0.5), "params": 1234, "lr": 1e-4, "throughput": 50.0})
    logger.summary()
    (run,) = children(uri, parent)
    m = run.data.metrics
    assert {"top1_pct", "top1_before_finetune_pct", "macs_count", "macs_ratio"} <= set(m)
    assert {"params_count", "finetune_lr_final", "throughput_img_per_s"} <= set(m)
    assert m["top1_pct"] == 70.0 and m["macs_count"] == 500000 and m["params_count"] == 1234
    assert not {"top1", "pruned_top1", "macs", "params", "lr", "throughput"} & set(m)
    (row,) = trial_rows(uri, parent)  # what trials.parquet and --resume read
    got = (row["top1"], row["macs"], row["params"], row["pruned_top1"])
    assert got == (70.0, 500000, 1234, 10.0)
    assert row["status"] == "TERMINATED"
    # a run of a sweep logged before the names changed reads the same
    old = {"top1": 70.0, "macs": 5e5, "params": 1234.0, "pruned_top1": 10.0, "lr": 1e-4}
    assert mlflow_names.tune_metrics(old) == old
    assert mlflow_names.tune_metrics({"top1": 1.0, "top1_pct": 2.0}) == {"top1": 2.0}
    assert mlflow_names.tune_status("ERROR") == "ERROR" and mlflow_names.is_lost("LOST")
    assert mlflow_names.teacher_metrics({"teacher_top1": 95.0, "teacher_macs_count": 8.0}) == {
        "top1": 95.0,
        "macs": 8.0,
    }


def test_front_marks_are_bounded_per_rebuild_and_complete_at_the_end(store, monkeypatch):
    """At most PER_REBUILD runs per rebuild; the rest wait for the next one and the sweep's
    last rebuild writes all of them: every run then holds its non-dominated sorting rank."""
    monkeypatch.setattr(trial_table, "PER_REBUILD", 3)
    uri, parent, _ = store
    logger = _logger(store)
    table = logger.writer.table
    written, write = [], table.marks.write
    table.marks.write = lambda *a, **k: written.append(write(*a, **k))
    points = [(60.0 + 3 * i, 0.2 + 0.05 * i) for i in range(5)]  # a front of five...
    points += [(p[0] - 1.0, p[1] + 0.01) for p in points]  # ...five behind it...
    points.append((99.0, 0.1))  # ...and one that dominates them all: every rank moves
    for i, (top1, ratio) in enumerate(points):
        _ended(logger, f"t{i:02d}", _done(top1, ratio))
    assert max(written) == 3 and table.marks.backlog > 0
    logger.summary()  # the end: every mark left over
    assert table.marks.backlog == 0 and written[-1] > 3
    marks = _marks(uri, parent)
    expected = {f"t{i:02d}": float(r) for i, r in enumerate(_ranks(points))}
    assert {t: m[2] for t, m in marks.items()} == expected
    assert {t for t, m in marks.items() if m[1] == "true"} == {"t10"}


def test_a_resumed_logger_writes_no_mark_mlflow_already_holds(store):
    uri, parent, sweep_dir = store
    first = _logger(store)
    for i, p in enumerate([(70.0, 0.5), (80.0, 0.4), (60.0, 0.7)]):
        _ended(first, f"t{i}", _done(*p))
    first.summary()
    from orchestrator import trial_logger

    trial_logger._LIVE.clear()  # --resume: a new driver process
    again = TrialLogger(uri, parent, sweep_dir, "marks", PARAMS, print_fronts=False,
                        resume=True)  # fmt: skip
    again.writer.runs.adopt()
    again.summary()
    assert again.writer.table.marks.writes == 0


def test_the_widths_plot_is_titled_with_the_tune_trial_id(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(
        trial_artifacts, "plot_widths", lambda rows, path, title: titles.append(title) or path
    )
    monkeypatch.setattr(trial_artifacts, "client", lambda uri: MlflowClient("sqlite://"))
    csv = tmp_path / "widths.csv"
    csv.write_text("name,keep_fraction,reference_fraction\nblocks.0,0.5,0.6\n")
    monkeypatch.setattr(MlflowClient, "log_artifact", lambda self, run_id, path: None)
    trial_artifacts.log_widths_plot("sqlite://", "0123456789abcdef", "ab12c_00003", csv)
    assert titles == ["learned widths (trial ab12c_00003)"]
