"""The search space: its schema (ranges, fixed values, choices) and Optuna define-by-run.

Define-by-run (rather than a Tune ``param_space``) keeps the space in Optuna's hands, so the
searcher's metric/mode lists stay the only objective definition: a Tune ``param_space`` plus a
``TuneConfig`` metric would silently make the study single-objective. Fixed values are returned
as constants, which OptunaSearch merges into the trial config without creating a parameter.
The object is a picklable class instance because ``Tuner.restore`` unpickles the searcher.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

# prune_core.INIT_MODES, repeated so that validating a YAML does not import torch (seconds);
# tests/test_orchestrator_config.py checks the two stay equal.
INIT_MODES = ("uniform", "magnitude", "attn_single", "attn_leave_out")


class Strict(BaseModel):
    """Unknown keys are errors: a silently ignored typo costs a whole sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _interval(lo: float | None, lo_open: bool, hi: float | None, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return (
        f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
    )


class FloatSpace(Strict):
    """One float hyper-parameter: a fixed ``value``, a ``low``/``high`` range, or ``choices``."""

    BOUNDS: ClassVar[tuple[float | None, bool, float | None, bool]] = (None, False, None, False)

    value: float | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[float] | None = None

    @classmethod
    def _check(cls, x: float) -> float:
        lo, lo_open, hi, hi_open = cls.BOUNDS
        ok = math.isfinite(x)
        if lo is not None:
            ok = ok and (x > lo if lo_open else x >= lo)
        if hi is not None:
            ok = ok and (x < hi if hi_open else x <= hi)
        if not ok:
            raise ValueError(f"must be in {_interval(*cls.BOUNDS)}, got {x:g}")
        return x

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # A ValueError, not a TypeError: pydantic reports ValueErrors with the field's name.
        if isinstance(data, bool):
            raise ValueError(f"expected a number, a range or choices, got {data!r}")
        if isinstance(data, (int, float)):
            cls._check(float(data))
            return {"value": data}
        if isinstance(data, list):
            return {"choices": data}
        return data

    @field_validator("value", "low", "high")
    @classmethod
    def _in_bounds(cls, x: float | None) -> float | None:
        return None if x is None else cls._check(x)

    @field_validator("choices")
    @classmethod
    def _choices_in_bounds(cls, xs: list[float] | None) -> list[float] | None:
        if xs is not None:
            if not xs:
                raise ValueError("must not be empty")
            for x in xs:
                cls._check(x)
        return xs

    @model_validator(mode="after")
    def _one_form(self) -> FloatSpace:
        forms = [
            self.value is not None,
            self.low is not None or self.high is not None,
            self.choices is not None,
        ]
        if sum(forms) != 1:
            raise ValueError("give exactly one of: a value, low+high, or choices")
        if forms[1]:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("step and log cannot be combined (Optuna)")
        elif self.log or self.step is not None:
            raise ValueError("log and step only apply to a low/high range")
        return self

    def describe(self) -> str:
        if self.value is not None:
            return f"{self.value:g} (fixed)"
        if self.choices is not None:
            return "choice of " + ", ".join(f"{c:g}" for c in self.choices)
        scale = "log " if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{scale}range [{self.low:g}, {self.high:g}]{step}"


class Fraction(FloatSpace):
    BOUNDS = (0.0, True, 1.0, False)


class Positive(FloatSpace):
    BOUNDS = (0.0, True, None, False)


class NonNegative(FloatSpace):
    BOUNDS = (0.0, False, None, False)


class InitModeSpace(Strict):
    """prune_core's initialisation mode: one fixed mode or a list of choices."""

    value: str | None = None
    choices: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            cls._check(data)
            return {"value": data}
        if isinstance(data, list):
            return {"choices": data}
        return data

    @staticmethod
    def _check(mode: str) -> str:
        if mode not in INIT_MODES:
            raise ValueError(f"must be one of {', '.join(INIT_MODES)}, got {mode!r}")
        return mode

    @field_validator("value")
    @classmethod
    def _known(cls, mode: str | None) -> str | None:
        return None if mode is None else cls._check(mode)

    @field_validator("choices")
    @classmethod
    def _known_all(cls, modes: list[str] | None) -> list[str] | None:
        if modes is not None:
            if not modes:
                raise ValueError("must not be empty")
            for mode in modes:
                cls._check(mode)
        return modes

    @model_validator(mode="after")
    def _one_form(self) -> InitModeSpace:
        if (self.value is None) == (self.choices is None):
            raise ValueError("give exactly one of: a mode or choices")
        return self

    def describe(self) -> str:
        return f"{self.value} (fixed)" if self.value else "choice of " + ", ".join(self.choices)


class SearchSpace(Strict):
    """Everything Optuna explores; field names are the Optuna parameter names."""

    mac_target: Fraction
    sim_temperature: Positive = Positive(value=1.0)
    init_mode: InitModeSpace = InitModeSpace(value="attn_leave_out")
    init_scale: NonNegative = NonNegative(value=1.0)
    mac_loss_weight: Positive = Positive(value=10.0)
    search_lr: Positive = Positive(value=5e-4)
    logit_lr: Positive = Positive(value=0.1)
    finetune_lr: Positive = Positive(value=1e-3)


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
                trial.suggest_float(
                    name, spec["low"], spec["high"], log=spec["log"], step=spec["step"]
                )
        return constants


def check_point(space: SearchSpace, point: dict[str, Any]) -> None:
    """Raises ValueError unless ``point`` sets explored parameters to values they can take.

    A point of ``sweep.points_to_evaluate`` is enqueued in the Optuna study as is (Ray's
    ``OptunaSearch(points_to_evaluate=...)``); parameters it leaves out are sampled.
    """
    names = explored(space)
    for name, value in point.items():
        if name not in names:
            raise ValueError(
                f"{name!r} is not an explored parameter (explored: {', '.join(names) or 'none'})"
            )
        spec = getattr(space, name)
        if spec.choices is not None:
            if value not in spec.choices:
                raise ValueError(f"{name}: {value!r} is not one of the choices {spec.choices}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        elif not spec.low <= value <= spec.high:
            raise ValueError(f"{name}: {value:g} is outside [{spec.low:g}, {spec.high:g}]")


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
