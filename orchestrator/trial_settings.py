"""One trial's prune_core configs: the experiment's sections with the trial's sampled values.

``config`` is the trial config Tune passes to the trainable: the sampled parameters (and the
fixed ones, as Optuna constants), nested by section (``config["search"]["lr"]``). Each section
maps onto prune_core's config for its phase field by field, under the same names
(tests/test_orchestrator_config.py checks that the two cannot drift apart).
"""

from __future__ import annotations

from typing import Any

import prune_core
from orchestrator.schema import Experiment
from orchestrator.space import resolve

ORCHESTRATOR_ONLY = {"workers", "checkpoint"}  # in a section, but the orchestrator's own


def search_config(exp: Experiment, config: dict[str, Any]) -> prune_core.SearchConfig:
    """``exp.search`` with the trial's sampled values, and the experiment seed."""
    settings = resolve("search", exp.search, config)
    settings["groups"] = tuple(settings["groups"])
    return prune_core.SearchConfig(**settings, seed=exp.seed)


def finetune_config(exp: Experiment, config: dict[str, Any]) -> prune_core.TrainConfig:
    """``exp.finetune`` with the trial's sampled values, and the experiment seed."""
    settings = resolve("finetune", exp.finetune, config)
    for name in ORCHESTRATOR_ONLY:
        settings.pop(name, None)
    return prune_core.TrainConfig(**settings, seed=exp.seed)


def teacher_config(exp: Experiment) -> prune_core.TrainConfig:
    """``exp.teacher`` as a training run without distillation (it has no teacher of its own)."""
    return prune_core.TrainConfig(
        **exp.teacher.model_dump(exclude=ORCHESTRATOR_ONLY), seed=exp.seed
    )
