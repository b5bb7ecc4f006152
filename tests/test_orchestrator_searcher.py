"""The sweep's searcher survives Tune's pickling and a resume with every sampler the config
offers: what Tune does to it when it builds the Tuner, snapshots the experiment and restores it.

Optuna 5.1's NSGA-II holds a ``threading.Lock`` and did not pickle at all; the resumed study
must carry on NSGA-II's generations (its population lives in the study) rather than start a
generation 0 again.
"""

from __future__ import annotations

import pickle
import typing

import optuna
import pytest
from helpers import minimal

from orchestrator import searcher as searcher_module
from orchestrator import space
from orchestrator.config import parse_config
from orchestrator.schema import SweepConfig
from orchestrator.tuner import make_searcher

GENERATION = "NSGAIISampler:generation"
SAMPLERS = typing.get_args(SweepConfig.model_fields["sampler"].annotation)


def _experiment(sampler: str, tmp_path):
    return parse_config(
        minimal(
            search={"target": {"low": 0.3, "high": 0.8}, "sim_temperature": [0.5, 2.0]},
            sweep={"sampler": sampler, "population_size": 2, "num_samples": 8},
            storage={"path": str(tmp_path / "results")},
        ),
        "x.yaml",
    )


def _run(searcher, first: int, count: int) -> None:
    """``count`` trials, one after another, each scored on its own MAC target."""
    for i in range(first, first + count):
        config = searcher.suggest(f"t{i}")
        target = config["search"]["target"]
        result = {"top1": 100 * target, "macs": target, "macs_ratio": target, "fully_trained": 1}
        searcher.on_trial_complete(f"t{i}", result)


def _generations(searcher) -> list[int | None]:
    return [t.system_attrs.get(GENERATION) for t in searcher._ot_study.trials]


def test_the_config_offers_exactly_the_samplers_tested_here():
    assert set(SAMPLERS) == {"nsga2", "tpe", "random"}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_pickles_and_resumes_where_it_stopped(tmp_path, sampler):
    exp = _experiment(sampler, tmp_path)
    searcher = make_searcher(exp)
    pickle.loads(pickle.dumps(searcher))  # Tuner(...) pickles the searcher before any trial
    _run(searcher, 0, 3)
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's experiment snapshot

    resumed = make_searcher(exp)
    resumed.restore(str(tmp_path / "searcher.pkl"))  # --resume
    assert [t.params for t in resumed._ot_study.trials] == [
        t.params for t in searcher._ot_study.trials
    ]
    _run(resumed, 3, 3)
    trials = resumed._ot_study.trials
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    assert type(resumed._ot_study.sampler).__name__ == type(searcher._ot_study.sampler).__name__


def test_a_resumed_nsga2_study_carries_on_its_generations(tmp_path):
    exp = _experiment("nsga2", tmp_path)
    searcher = make_searcher(exp)
    _run(searcher, 0, 4)  # population 2: generations 0 and 1 complete
    before = _generations(searcher)
    assert before == [0, 0, 1, 1]
    searcher.save(str(tmp_path / "searcher.pkl"))

    resumed = make_searcher(exp)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    _run(resumed, 4, 2)
    # generation 2, bred from the population so far; a lost population would restart at 0
    assert _generations(resumed) == [0, 0, 1, 1, 2, 2]


def _dashboard_study(exp) -> optuna.Study:
    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp.sweep_dir}/optuna.db")


def test_every_ended_trial_is_copied_to_optuna_db_once_across_a_resume(tmp_path):
    """optuna.db (study_db.py): complete, early-stopped and failed trials with their exact
    settings, distributions and both objectives; a resumed searcher adds to the same study and
    never twice (issue 28)."""
    exp = _experiment("nsga2", tmp_path)
    searcher = make_searcher(exp)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    searcher.on_trial_complete(
        "t0",
        {"top1": 81.5, "macs": 10, "macs_ratio": 0.42, "fully_trained": 1, "training_iteration": 3},
    )
    searcher.on_trial_complete(
        "t1",
        {"top1": 40.0, "macs": 12, "macs_ratio": 0.55, "fully_trained": 0, "training_iteration": 2},
    )
    searcher.on_trial_complete("t2", {"top1": float("nan"), "macs": 9, "failed": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    trials = _dashboard_study(exp).trials
    assert [t.user_attrs["tune_trial_id"] for t in trials] == ["t0", "t1", "t2"]
    assert [t.user_attrs["status"] for t in trials] == ["complete", "early_stopped", "failed"]
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials[0].values == [81.5, 0.42] and trials[1].intermediate_values == {2: 40.0}
    for t in trials:
        sampled = space.flatten_point(configs[t.user_attrs["tune_trial_id"]])
        assert set(t.params) == set(space.explored(exp.tunable_sections))
        assert t.params == {name: sampled[name] for name in t.params}
        assert t.distributions["search/target"] == optuna.distributions.FloatDistribution(0.3, 0.8)
    study = _dashboard_study(exp)
    assert study.metric_names == ["top1_pct", "macs_ratio"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]

    resumed = make_searcher(exp)  # --resume, in a new driver process
    resumed.restore(str(tmp_path / "searcher.pkl"))
    searcher_module._STUDY_DBS.clear()  # a new process: nothing open, the file is the truth
    resumed.on_trial_complete("t0", {"top1": 1.0, "macs": 1, "macs_ratio": 0.1})  # again
    resumed.suggest("t3")
    resumed.on_trial_complete(
        "t3", {"top1": 70.0, "macs": 8, "macs_ratio": 0.3, "fully_trained": 1}
    )
    trials = _dashboard_study(exp).trials
    assert [t.user_attrs["tune_trial_id"] for t in trials] == ["t0", "t1", "t2", "t3"]
    assert trials[0].values == [81.5, 0.42]


def test_a_study_db_that_cannot_be_written_warns_once_and_the_search_goes_on(tmp_path, monkeypatch):
    warned = []
    monkeypatch.setattr(searcher_module.driver_output, "warn", warned.append)
    exp = _experiment("random", tmp_path)
    (exp.sweep_dir / "optuna.db").mkdir(parents=True)  # a folder where the file should be
    searcher = make_searcher(exp)
    _run(searcher, 0, 3)
    assert len(warned) == 1 and "optuna.db: trial t0 not copied" in warned[0]
    assert len(searcher._ot_study.trials) == 3 and all(
        t.state.name == "COMPLETE" for t in searcher._ot_study.trials
    )
