"""The sweep's Optuna searcher: picklable samplers, and failed trials told to Optuna as FAIL.

**Picklable samplers.** Tune pickles the searcher when it builds the Tuner and in every
experiment snapshot, and unpickles it on ``--resume``. Optuna 5.1's genetic samplers
(``NSGAIISampler``, through ``optuna/samplers/_ga/_base.py``) hold a ``threading.Lock``, which
pickle refuses (``TypeError: cannot pickle '_thread.lock' object``). The samplers here are
Optuna's own, unchanged, with a ``__getstate__`` that leaves out every lock the sampler (or a
sampler it holds, e.g. NSGA-II's fallback ``RandomSampler``) keeps and a ``__setstate__`` that
makes a fresh one. The lock only guards a cache rebuilt from the study, so nothing of the
search is lost: the generation numbers and the population live in the study's trials
(``NSGAIISampler:generation`` system attrs), which OptunaSearch pickles with the sampler.

**Failed trials.** A trial whose loss went NaN ends with a terminal report (``failed = 1``,
``top1 = NaN``) rather than an exception, so it is not retried. Ray tells a finished trial's
last values with state COMPLETE, Optuna refuses NaN in a COMPLETE trial, and Ray only logs that
refusal: the study would keep an orphan RUNNING trial. Routing it through Ray's own error path
records FAIL.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from orchestrator import driver_output
from orchestrator.study_db import StudyDatabase
from orchestrator.tracking import first_line

# the lock types by the name stored in a pickle (a lock's type cannot itself be pickled)
_LOCK_KINDS = {type(threading.Lock()): "lock", type(threading.RLock()): "rlock"}
_NEW_LOCK = {"lock": threading.Lock, "rlock": threading.RLock}


def _without_locks(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``state`` less its lock values, and ``{attribute: "lock" | "rlock"}`` for those."""
    locks = {n: _LOCK_KINDS[type(v)] for n, v in state.items() if type(v) in _LOCK_KINDS}
    return {n: v for n, v in state.items() if n not in locks}, locks


class _PicklableSampler:
    """Mixin: pickles an Optuna sampler without its thread locks and makes new ones on load."""

    def __getstate__(self) -> dict[str, Any]:
        state, locks = _without_locks(self.__dict__)
        for name, value in state.items():
            if isinstance(value, optuna.samplers.BaseSampler) and not isinstance(
                value, _PicklableSampler
            ):
                state[name] = _SamplerState(value)  # a held sampler may carry a lock too
        state["_picklable_locks"] = locks
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop("_picklable_locks", {})
        for name, value in state.items():
            if isinstance(value, _SamplerState):
                state[name] = value.sampler
        self.__dict__.update(state)
        for name, kind in locks.items():
            setattr(self, name, _NEW_LOCK[kind]())


class _SamplerState:
    """A held sampler of a class we did not subclass, pickled through its ``__dict__`` with
    its locks left out (the same rule as :class:`_PicklableSampler`)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def __reduce__(self):
        state, locks = _without_locks(self.sampler.__dict__)
        return (_rebuild, (type(self.sampler), state, locks))


def _rebuild(cls: type, state: dict[str, Any], locks: dict[str, str]) -> _SamplerState:
    sampler = cls.__new__(cls)
    sampler.__dict__.update(state)
    for name, kind in locks.items():
        setattr(sampler, name, _NEW_LOCK[kind]())
    return _SamplerState(sampler)


class NSGAIISampler(_PicklableSampler, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II (multi-objective genetic search), picklable."""


class TPESampler(_PicklableSampler, optuna.samplers.TPESampler):
    """Optuna's TPE, picklable whatever a future release adds."""


class RandomSampler(_PicklableSampler, optuna.samplers.RandomSampler):
    """Optuna's random sampler, picklable whatever a future release adds."""


def make_sampler(kind: str, *, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    """The sampler named by ``sweep.sampler`` (``nsga2``, ``tpe`` or ``random``), seeded.

    Cost per suggestion at scale (Optuna 5.1, the digits space: 7 explored settings, one of
    them conditional; CPU per ``ask`` with every setting suggested, with 16 and 1,000 finished
    trials, ``python -m benchmarks.sampler_cost``): ``nsga2`` stays flat (1.4 -> 1.6 ms),
    ``random`` does no work, ``tpe`` grows linearly (16 -> 75-81 ms), on Tune's event loop.
    Define-by-run suggests one setting at a time, and for each one TPE splits *all* finished
    trials (a non-dominated sort of both objectives) and builds its two Parzen estimators over
    all of them: no ``TPESampler`` option bounds the trials it reads (``gamma`` only caps the
    "good" side at 25, ``n_ei_candidates`` the candidates scored). ``multivariate=True,
    group=True`` splits once per suggestion instead of once per setting: 7 -> 33-42 ms, half
    the default's cost, still linear, an experimental option that changes what TPE proposes;
    so TPE keeps its defaults here. At 1,000 trials that is ~80 s over the sweep against
    ~5.5 s between finished trials on digits (under 1.5 %); NSGA-II, the default, is the
    sampler for long sweeps.

    Raises:
        ValueError: an unknown kind (the schema allows only these three).
    """
    if kind == "nsga2":
        return NSGAIISampler(population_size=population_size, seed=seed)
    if kind == "tpe":
        return TPESampler(seed=seed)
    if kind == "random":
        return RandomSampler(seed=seed)
    raise ValueError(f"sweep.sampler: unknown sampler {kind!r} (nsga2, tpe, random)")


# open optuna.db files by path: the searcher is pickled by Tune (its __dict__), the SQLAlchemy
# engine stays in the process
_STUDY_DBS: dict[str, StudyDatabase] = {}


class FailureAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells a failed trial as FAIL (its result holds ``failed``) and copies
    every ended trial into the sweep's ``optuna.db`` (``study_db``) when ``study_db`` is given.
    """

    def __init__(self, *args, study_db: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._study_db_path = study_db
        self._study_db_warned = False

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ended, failed = result, error
        if result and result.get("failed"):
            result, error = None, True
        known = trial_id in self._ot_trials and trial_id not in self._completed_trials
        super().on_trial_complete(trial_id, result=result, error=error)
        if known and getattr(self, "_study_db_path", None):
            self._copy_to_study_db(trial_id, ended, failed)

    def _copy_to_study_db(self, trial_id: str, result: dict | None, error: bool) -> None:
        path = self._study_db_path
        try:
            db = _STUDY_DBS.get(path)
            if db is None:
                db = _STUDY_DBS[path] = StudyDatabase(path, self._study_name)
            ot_trial = self._ot_trials[trial_id]
            db.add(trial_id, ot_trial.params, ot_trial.distributions, result, error)
        except Exception as err:  # any error, on purpose: the dashboard's copy never costs
            if not self._study_db_warned:  # the sweep; said once
                self._study_db_warned = True
                driver_output.warn(f"{path}: trial {trial_id} not copied ({first_line(err)})")
