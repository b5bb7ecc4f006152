"""Tunable settings: a leaf of the ``search:`` or ``finetune:`` section is a constant or a
distribution (Ray's ``param_space`` idea), and Optuna samples the distributions by define-by-run.

A setting has one name wherever it appears: ``search/lr`` is the Optuna parameter, the MLflow
param and the Pareto table's column, ``config["search"]["lr"]`` in the trial (Ray unflattens
``/``), the YAML path ``search.lr`` and the prune_core field ``SearchConfig.lr``. A leaf reads

    lr: 0.0005                          # fixed
    lr: {low: 1e-4, high: 1e-3, log: true}   # a range (``step`` for a grid)
    init_mode: [uniform, attn_leave_out]     # choices

so making a setting explorable is one line of YAML, and making a new prune_core setting
explorable is one line of schema (its type becomes a space below).

Define-by-run (rather than a Tune ``param_space``) keeps the space in Optuna's hands, so the
searcher's metric/mode lists stay the only objective definition: a Tune ``param_space`` plus a
``TuneConfig`` metric would silently make the study single-objective. Fixed values are returned
as constants, which OptunaSearch merges into the trial config without creating a parameter.
The object is a picklable class instance because ``Tuner.restore`` unpickles the searcher.
This module and schema.py stay torch-free, so ``--dry-run`` validates a file in a second.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

# prune_core's choices, repeated so that validating a YAML does not import torch (seconds);
# tests/test_orchestrator_config.py checks they stay equal.
INIT_MODES = ("uniform", "magnitude", "attn_single", "attn_leave_out")
PENALTIES = ("squared", "one_sided", "log")
LOGIT_OPTIMIZERS = ("adamw", "sgd")
MAC_STEPS = ("joint", "cost_proportional")
SIMILARITY_TO = ("all", "kept")
QK_REWEIGHT_INITS = ("one", "sqrt_ratio")

SEP = "/"  # Ray's delimiter: a define-by-run "search/lr" becomes config["search"]["lr"]
TUNABLE_SECTIONS = ("search", "finetune")

# A parameter that means nothing for some value of another is not sampled there (Optuna's
# conditional space): the initial logits' spread is moot when every score is zero.
SAMPLED_ONLY_WHEN = {"search/init_scale": ("search/init_mode", lambda mode: mode != "uniform")}


class Strict(BaseModel):
    """Unknown keys are errors: a silently ignored typo costs a whole sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _interval(lo: float | None, lo_open: bool, hi: float | None, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return (
        f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
    )


class _Space(Strict):
    """A setting's leaf: its ``choices``, when given, are not empty and each passes the
    subclass's ``_check`` (the one a fixed value passes too)."""

    @classmethod
    def _check(cls, x: Any) -> Any:
        """The one value check of a leaf kind; every concrete subclass defines it (FloatSpace,
        the ChoiceSpace kinds). _Space itself is never a field's type."""
        raise NotImplementedError(f"{cls.__name__} defines no _check")

    @field_validator("choices", check_fields=False)
    @classmethod
    def _each_choice(cls, xs: list | None) -> list | None:
        if xs is not None:
            if not xs:
                raise ValueError("must not be empty")
            for x in xs:
                cls._check(x)
        return xs


class FloatSpace(_Space):
    """One float setting: a fixed ``value``, a ``low``/``high`` range, or ``choices``.

    Subclasses set ``BOUNDS`` (low, low open, high, high open): every value a leaf can take
    is checked against them, fixed or sampled.
    """

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
        if isinstance(data, bool) or isinstance(data, str):
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

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, x: Any) -> str | None:
        """None if a sampled value ``x`` is one this leaf can take, else why not."""
        if self.choices is not None:
            return None if x in self.choices else f"{x!r} is not one of the choices {self.choices}"
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return f"expected a number, got {x!r}"
        if not self.low <= x <= self.high:
            return f"{x:g} is outside [{self.low:g}, {self.high:g}]"
        return None


class Fraction(FloatSpace):
    BOUNDS = (0.0, True, 1.0, False)


class UnitInterval(FloatSpace):
    BOUNDS = (0.0, False, 1.0, False)


class Positive(FloatSpace):
    BOUNDS = (0.0, True, None, False)


class NonNegative(FloatSpace):
    BOUNDS = (0.0, False, None, False)


class ChoiceSpace(_Space):
    """One categorical setting: a fixed ``value`` or a list of ``choices``, all in ``ALLOWED``."""

    ALLOWED: ClassVar[tuple[str, ...]] = ()

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

    @classmethod
    def _check(cls, value: str) -> str:
        if value not in cls.ALLOWED:
            raise ValueError(f"must be one of {', '.join(cls.ALLOWED)}, got {value!r}")
        return value

    @field_validator("value")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else cls._check(value)

    @model_validator(mode="after")
    def _one_form(self) -> ChoiceSpace:
        if (self.value is None) == (self.choices is None):
            raise ValueError("give exactly one of: a value or choices")
        return self

    def describe(self) -> str:
        return f"{self.value} (fixed)" if self.value else "choice of " + ", ".join(self.choices)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, x: Any) -> str | None:
        return None if x in self.choices else f"{x!r} is not one of the choices {self.choices}"


class InitMode(ChoiceSpace):
    ALLOWED = INIT_MODES


class Penalty(ChoiceSpace):
    ALLOWED = PENALTIES


class LogitOptimizer(ChoiceSpace):
    ALLOWED = LOGIT_OPTIMIZERS


class MacStep(ChoiceSpace):
    ALLOWED = MAC_STEPS


class SimilarityTo(ChoiceSpace):
    ALLOWED = SIMILARITY_TO


class QkReweightInit(ChoiceSpace):
    ALLOWED = QK_REWEIGHT_INITS


Leaf = FloatSpace | ChoiceSpace


def leaves(sections: dict[str, BaseModel]) -> dict[str, Leaf]:
    """``{"search/lr": leaf, ...}``: every tunable leaf of the sections, in field order."""
    return {
        f"{section}{SEP}{name}": value
        for section, model in sections.items()
        for name in type(model).model_fields
        if isinstance(value := getattr(model, name), FloatSpace | ChoiceSpace)
    }


def explored(sections: dict[str, BaseModel]) -> list[str]:
    """Names of the parameters Optuna actually samples (not fixed)."""
    return [name for name, leaf in leaves(sections).items() if leaf.value is None]


def describe(sections: dict[str, BaseModel]) -> list[tuple[str, str]]:
    """(parameter, human description) rows, for ``--dry-run`` and the parent run."""
    return [(name, leaf.describe()) for name, leaf in leaves(sections).items()]


def resolve(section: str, model: BaseModel, trial_config: dict[str, Any]) -> dict[str, Any]:
    """The section's plain settings for one trial: fixed values, and the sampled ones from
    ``trial_config[section]``. A parameter left unsampled by ``SAMPLED_ONLY_WHEN`` is omitted
    (prune_core's default applies; it has no effect there)."""
    sampled = trial_config.get(section, {})
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, FloatSpace | ChoiceSpace):
            if value.value is not None:
                out[name] = value.value
            elif name in sampled:
                out[name] = sampled[name]
            elif f"{section}{SEP}{name}" not in SAMPLED_ONLY_WHEN:
                raise KeyError(f"trial config lacks the sampled {section}{SEP}{name}")
        elif isinstance(value, BaseModel):
            out[name] = value.model_dump()
        else:
            out[name] = value
    return out


class DefineByRun:
    """``space(trial) -> constants``: suggests every explored leaf of the sections."""

    def __init__(self, sections: dict[str, BaseModel]) -> None:
        self.leaves = leaves(sections)

    def __call__(self, trial: Any) -> dict[str, Any]:
        constants: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for name, leaf in self.leaves.items():
            condition = SAMPLED_ONLY_WHEN.get(name)
            if condition is not None and not condition[1](values.get(condition[0])):
                continue
            if leaf.value is not None:
                constants[name] = values[name] = leaf.value
            else:
                values[name] = leaf.suggest(trial, name)
        return constants


def flatten_point(point: dict[str, Any]) -> dict[str, Any]:
    """``{"search": {"target": 0.5}}`` → ``{"search/target": 0.5}``: a nested trial config
    or ``points_to_evaluate`` entry under the parameters' names. Raises ValueError if a
    section is not a mapping."""
    flat = {}
    for section, settings in point.items():
        if not isinstance(settings, dict):
            raise ValueError(f"{section!r}: expected a mapping of settings, got {settings!r}")
        for name, value in settings.items():
            flat[f"{section}{SEP}{name}"] = value
    return flat


def check_point(sections: dict[str, BaseModel], point: dict[str, Any]) -> None:
    """Raises ValueError unless ``point`` (nested, as in the YAML) sets explored parameters to
    values they can take.

    A point of ``sweep.points_to_evaluate`` is enqueued in the Optuna study as is (Ray's
    ``OptunaSearch(points_to_evaluate=...)``); parameters it leaves out are sampled.
    """
    names = explored(sections)
    all_leaves = leaves(sections)
    for name, value in flatten_point(point).items():
        if name not in names:
            shown = ", ".join(n.replace(SEP, ".") for n in names) or "none"
            raise ValueError(
                f"{name.replace(SEP, '.')!r} is not an explored parameter (explored: {shown})"
            )
        why = all_leaves[name].contains(value)
        if why is not None:
            raise ValueError(f"{name.replace(SEP, '.')}: {why}")
