"""The sweep's searcher survives Tune's pickling and a resume with every sampler the config
offers: what Tune does to it when it builds the Tuner, snapshots the experiment and restores it.

Optuna 5.1's NSGA-II holds a ``threading.Lock`` and did not pickle at all; the resumed study
must carry on NSGA-II's generations (its population lives in the study) rather than start a
generation 0 again.
"""

from __future__ import annotations

import pickle
import typing

import pytest
from helpers import minimal

from orchestrator.config import parse_config
from orchestrator.schema import SweepConfig
from orchestrator.tuner import make_searcher

GENERATION = "NSGAIISampler:generation"
SAMPLERS = typing.get_args(SweepConfig.model_fields["sampler"].annotation)


def _experiment(sampler: str):
    return parse_config(
        minimal(
            search={"target": {"low": 0.3, "high": 0.8}, "sim_temperature": [0.5, 2.0]},
            sweep={"sampler": sampler, "population_size": 2, "num_samples": 8},
        ),
        "x.yaml",
    )


def _run(searcher, first: int, count: int) -> None:
    """``count`` trials, one after another, each scored on its own MAC target."""
    for i in range(first, first + count):
        config = searcher.suggest(f"t{i}")
        target = config["search"]["target"]
        searcher.on_trial_complete(f"t{i}", {"top1": 100 * target, "macs": target})


def _generations(searcher) -> list[int | None]:
    return [t.system_attrs.get(GENERATION) for t in searcher._ot_study.trials]


def test_the_config_offers_exactly_the_samplers_tested_here():
    assert set(SAMPLERS) == {"nsga2", "tpe", "random"}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_pickles_and_resumes_where_it_stopped(tmp_path, sampler):
    exp = _experiment(sampler)
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
    exp = _experiment("nsga2")
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
