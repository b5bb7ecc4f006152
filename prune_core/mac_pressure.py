"""The MAC term of the search: the penalty on the soft MAC ratio, and its step in proportion
to cost (docs/method.md §4; ``pruning_search.search`` uses both).

**MAC pressure in proportion to cost.** Adam normalises each parameter's step, so a MAC gradient
that is 1.5× larger for a costlier unit would move it exactly as far as a cheap one. With
``mac_step="cost_proportional"`` the MAC gradient is a plain gradient step instead, normalised
once by the mean cost sensitivity at the start (so ``logit_lr`` means the same on every model
size): a unit whose removal saves twice the MACs feels twice the pressure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prune_core.macs import MacModel

PENALTIES = ("squared", "one_sided", "log")


def mac_penalty(ratio: Tensor, target: float, kind: str) -> Tensor:
    """Penalty of the soft MAC ratio against the running target (dimensionless)."""
    if kind == "squared":  # pulls from both sides: neither over- nor under-shoots
        return (ratio - target) ** 2
    if kind == "one_sided":
        return F.relu(ratio - target) ** 2
    return (torch.log(ratio) - math.log(target)) ** 2


class MacPressure:
    """The MAC penalty's gradient step on the logits, in proportion to each unit's cost.

    ``scale`` is the mean |∂(MACs/MACs_full)/∂θ| over the active units when the search starts,
    so a step of ``lr · λ · penalty'`` moves the *average* unit by that much on any model size,
    and a unit that saves twice the MACs by twice that.
    """

    def __init__(self, macs: MacModel, logits: list[nn.Parameter]) -> None:
        self.macs, self.logits = macs, logits
        grads = torch.autograd.grad(macs.soft_total() / macs.full, logits, allow_unused=True)
        sensitivity = torch.cat([g.abs().flatten() for g in grads if g is not None])
        self.scale = float(sensitivity.mean()) if sensitivity.numel() else 1.0
        if not self.scale > 0:
            raise ValueError("no prunable unit changes the MACs: nothing to search")

    def loss(self, target_now: float, weight: float, kind: str) -> tuple[Tensor, Tensor]:
        """(soft MAC ratio, λ · penalty(ratio, t_s)) for ``weight`` λ and penalty ``kind``."""
        ratio = self.macs.soft_total() / self.macs.full
        return ratio, weight * mac_penalty(ratio, target_now, kind)

    @torch.no_grad()
    def step(self, loss_mac: Tensor, lr: float) -> None:
        grads = torch.autograd.grad(loss_mac, self.logits, allow_unused=True)
        for theta, g in zip(self.logits, grads, strict=True):
            if g is not None:
                theta.sub_(lr * g / self.scale)
