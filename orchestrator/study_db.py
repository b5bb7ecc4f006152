"""The sweep's finished trials as an Optuna study in ``<sweep folder>/optuna.db``.

``optuna-dashboard sqlite:///<sweep folder>/optuna.db`` then shows the study a person knows
from Optuna: the Pareto front, parallel coordinates of the explored settings, their
importances and each trial's settings. The searcher's own study stays in memory (Tune pickles
it with the searcher; an RDB there would slow every suggestion and tie a resume to a database
file), so each trial is *copied* here when it ends (``FailureAwareOptunaSearch``), with Optuna's
public ``create_trial``:

- a fully trained trial is ``COMPLETE`` with the values (top-1 %, MACs ratio);
- a trial the scheduler stopped early (ASHA) is ``PRUNED``, its last top-1 as the
  intermediate value at its last iteration (Optuna's meaning of pruned; the searcher itself
  was told its partial values, as OptunaSearch does);
- a failed trial is ``FAIL``.

Each carries its exact sampled settings and their distributions (the searcher's), and the user
attributes ``tune_trial_id``, ``status`` (complete / early_stopped / failed), ``macs`` and
``top1_pct``. A trial already in the file (by Tune trial id) is not added twice, so a resumed
sweep goes on in the same study. A failure to write never costs the sweep: one warning.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.mlflow_names import trial_status  # one rule, as the child run's tag says

STUDY_DB = "optuna.db"
OBJECTIVES = ("top1_pct", "macs_ratio")  # the study's metric names, as the dashboard shows
DIRECTIONS = ("maximize", "minimize")


class StudyDatabase:
    """``optuna.db`` of one sweep: the study named after it, opened on first use.

    Raises nothing from :meth:`add` that the caller must handle beyond ``Exception`` (the
    searcher catches and warns); ``optuna.exceptions.StorageInternalError`` or ``ValueError``
    (a value outside its distribution) are the likely ones.
    """

    def __init__(self, path: str | Path, study_name: str) -> None:
        self.path, self.study_name = Path(path), study_name
        self._study: optuna.Study | None = None
        self._known: set[str] = set()

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
            try:  # on the driver's console
                self._study = optuna.create_study(
                    storage=f"sqlite:///{self.path.resolve()}",
                    study_name=self.study_name,
                    directions=list(DIRECTIONS),
                    load_if_exists=True,
                )
            finally:
                optuna.logging.set_verbosity(verbosity)
            if self._study.metric_names is None:
                with warnings.catch_warnings():  # experimental since Optuna 3.2, still there
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._study.set_metric_names(list(OBJECTIVES))
            self._known = {
                str(t.user_attrs.get("tune_trial_id"))
                for t in self._study.get_trials(deepcopy=False)
            }
        return self._study

    def add(
        self,
        tune_trial_id: str,
        params: dict[str, Any],
        distributions: dict[str, optuna.distributions.BaseDistribution],
        result: dict[str, Any] | None,
        error: bool = False,
    ) -> bool:
        """Copy one ended trial in; False when it is there already (a resumed sweep)."""
        study = self.study
        if tune_trial_id in self._known:
            return False
        status = trial_status(result, error)
        result = result or {}
        attrs: dict[str, Any] = {"tune_trial_id": tune_trial_id, "status": status}
        for key, name in (("macs", "macs"), ("top1", "top1_pct")):
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                attrs[name] = value
        values, intermediate = None, {}
        if status == "complete":
            state, values = TrialState.COMPLETE, [result["top1"], result["macs_ratio"]]
        elif status == "early_stopped":
            state = TrialState.PRUNED
            intermediate = {int(result.get("training_iteration", 0)): float(result["top1"])}
        else:
            state = TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                values=values,
                params=params,
                distributions=distributions,
                user_attrs=attrs,
                intermediate_values=intermediate,
            )
        )
        self._known.add(tune_trial_id)
        return True
