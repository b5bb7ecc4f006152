"""One trial's settings: the sampled values, and the prune_core configs they make with the
experiment's fixed schedules (``search``, ``finetune``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import prune_core
from orchestrator.schema import Experiment


@dataclass(frozen=True)
class TrialParams:
    """The sampled (or fixed) values of one trial; names are the search-space fields."""

    mac_target: float
    sim_temperature: float
    init_mode: str
    init_scale: float
    mac_loss_weight: float
    search_lr: float
    logit_lr: float
    finetune_lr: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialParams:
        return cls(**{f.name: config[f.name] for f in fields(cls)})


# prune_core settings the search space samples, under their search-space names. Every other
# field of SearchConfig / TrainConfig comes from the experiment's schedule section of the same
# name (tests/test_orchestrator_config.py checks that the two cannot drift apart).
SAMPLED_SEARCH = {
    "target": "mac_target",
    "lr": "search_lr",
    "logit_lr": "logit_lr",
    "mac_loss_weight": "mac_loss_weight",
    "sim_temperature": "sim_temperature",
}
SAMPLED_FINETUNE = {"lr": "finetune_lr"}
NOT_SEARCH_SETTINGS = {"theta0"}  # in `search:` but read by prune_core.initialize
NOT_TRAIN_SETTINGS = {"workers", "checkpoint"}  # the orchestrator's own


def search_config(exp: Experiment, p: TrialParams) -> prune_core.SearchConfig:
    """``exp.search`` (fixed) + the sampled values of ``p`` + the experiment seed."""
    fixed = exp.search.model_dump(exclude=NOT_SEARCH_SETTINGS)
    fixed["groups"] = tuple(fixed["groups"])
    sampled = {field: getattr(p, name) for field, name in SAMPLED_SEARCH.items()}
    return prune_core.SearchConfig(**fixed, **sampled, seed=exp.seed)


def finetune_config(exp: Experiment, p: TrialParams) -> prune_core.TrainConfig:
    """``exp.finetune`` (fixed) + the sampled fine-tune lr + the experiment seed."""
    fixed = exp.finetune.model_dump(exclude=NOT_TRAIN_SETTINGS)
    sampled = {field: getattr(p, name) for field, name in SAMPLED_FINETUNE.items()}
    return prune_core.TrainConfig(**fixed, **sampled, seed=exp.seed)


def teacher_config(exp: Experiment) -> prune_core.TrainConfig:
    """``exp.teacher`` as a training run without distillation (it has no teacher of its own)."""
    return prune_core.TrainConfig(
        **exp.teacher.model_dump(exclude=NOT_TRAIN_SETTINGS), seed=exp.seed
    )
