"""The search space as an Optuna define-by-run function.

Define-by-run (rather than a Tune ``param_space``) keeps the space in Optuna's hands, so the
searcher's metric/mode lists stay the only objective definition: a Tune ``param_space`` plus a
``TuneConfig`` metric would silently make the study single-objective. Fixed values are returned
as constants, which OptunaSearch merges into the trial config without creating a parameter.
The object is a picklable class instance because ``Tuner.restore`` unpickles the searcher.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import FloatSpace, InitModeSpace, SearchSpace


class DefineByRun:
    """``space(trial) -> constants``: suggests every ranged parameter of a :class:`SearchSpace`."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space.model_dump()

    def __call__(self, trial: Any) -> dict[str, Any]:
        constants: dict[str, Any] = {}
        for name, spec in self.space.items():
            if spec.get("value") is not None:
                constants[name] = spec["value"]
            elif spec.get("choices") is not None:
                trial.suggest_categorical(name, list(spec["choices"]))
            else:
                trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"],
                                    step=spec["step"])
        return constants


def describe(space: SearchSpace) -> list[tuple[str, str]]:
    """(parameter, human description) rows, for ``--dry-run`` and the parent run."""
    rows = []
    for name in SearchSpace.model_fields:
        spec: FloatSpace | InitModeSpace = getattr(space, name)
        rows.append((name, spec.describe()))
    return rows


def explored(space: SearchSpace) -> list[str]:
    """Names of the parameters Optuna actually samples (not fixed)."""
    return [name for name in SearchSpace.model_fields if getattr(space, name).value is None]
