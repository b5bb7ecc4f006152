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


def search_config(exp: Experiment, p: TrialParams):

    s = exp.search
    return prune_core.SearchConfig(
        target=p.mac_target,
        steps=s.steps,
        lr=p.search_lr,
        logit_lr=p.logit_lr,
        mac_loss_weight=p.mac_loss_weight,
        penalty=s.penalty,
        ramp_fraction=s.ramp_fraction,
        sim_temperature=p.sim_temperature,
        sim_every=s.sim_every,
        distill_alpha=s.distill_alpha,
        distill_temperature=s.distill_temperature,
        use_reweight=s.use_reweight,
        tolerance=s.tolerance,
        round_to=s.round_to,
        seed=exp.seed,
        weight_decay=s.weight_decay,
        logit_optimizer=s.logit_optimizer,
        mac_step=s.mac_step,
        reweight_lr=s.reweight_lr,
        similarity_to=s.similarity_to,
        qk_reweight_init=s.qk_reweight_init,
        groups=tuple(s.groups),
        min_width=dict(s.min_width),
    )


def finetune_config(exp: Experiment, p: TrialParams):

    f = exp.finetune
    return prune_core.TrainConfig(
        epochs=f.epochs,
        lr=p.finetune_lr,
        weight_decay=f.weight_decay,
        warmup_epochs=f.warmup_epochs,
        label_smoothing=f.label_smoothing,
        distill_alpha=f.distill_alpha,
        distill_temperature=f.distill_temperature,
        seed=exp.seed,
    )
