"""The learned-mask peer (``learned_mask``): ViT-Slim-style soft channel masks, same steps as ours.

ViT-Slim (Chavan et al., CVPR 2022) multiplies every prunable dimension by a real-valued soft
mask (initialised to 1), trains masks and weights together under an ℓ1 sparsity penalty on
the masks, then keeps the dimensions with the largest |mask| under the budget and fine-tunes.
Here, composed from prune_core's public pieces so that it searches the very same units as the
method (qk, v and MLP channels, equal width in every head):

- every gate becomes a :class:`SoftMaskGate`: in the search its multiplier *is* the mask m
  (its ``logits``, set to 1), not a binary top-k with a straight-through gradient;
- the sparsity penalty is prune_core's MAC penalty on the masks' ℓ1 mass: the soft width of a
  head is K = d · Σ|m| / Σ|m₀|, so ∂penalty/∂m_u = 2λ (MACs(K)/MACs − t_s) · cost_u · sign(m_u)
  / MACs: an ℓ1 penalty weighted by each unit's MAC cost, whose strength is driven by the
  distance to the running budget t_s (the same ramp to t as the method's);
- no similarity weights, no attention-difference init, no reweight module (ViT-Slim has none);
- ``prune_core.finalize`` keeps each head's top-|m| units at widths that land in [t − tol, t];
- the kept units' mask values are folded into the weights where that is exact (softmax q and
  v, via the reweights; the MLP, via fc2's columns) or nearly so (FLatten's v: its depthwise
  conv saw m twice); FLatten's qk masks act after the focusing power and are not folded (a
  kept channel goes back to 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import prune_core as pc
from prune_core import ChannelGate, GateMode
from prune_core.attention import SoftmaxAttention
from prune_core.focused_linear_attention import FocusedLinearAttention


class SoftMaskGate(ChannelGate):
    """A gate whose search multiplier is the real-valued mask ``logits`` (ViT-Slim)."""

    def keep_scores(self) -> Tensor:
        return self.logits.abs()

    def forward(self) -> Tensor | None:
        if self.mode is GateMode.OFF:
            return None
        if self.mode is GateMode.HARD:
            return self.hard_mask
        return self.logits


def make_soft(model: nn.Module) -> list[SoftMaskGate]:
    """Every gate becomes a :class:`SoftMaskGate` with masks 1 and neutral similarity."""
    gates = []
    with torch.no_grad():
        for module in pc.prunable_modules(model).values():
            for gate in module.gates.values():
                gate.__class__ = SoftMaskGate
                gate.logits.fill_(1.0)
                gate.similarity.fill_(1.0)
                gates.append(gate)
    return gates


@torch.no_grad()
def fold_masks(model: nn.Module) -> None:
    """Fold the kept units' mask values into the weights (module doc), then plain gates."""
    for module in pc.prunable_modules(model).values():
        for g, gate in module.gates.items():
            m = gate.logits.detach() * gate.hard_mask
            keep = gate.hard_mask.bool()
            if g == "mlp":
                module.fc2.weight.mul_(torch.where(keep[0], m[0], torch.ones_like(m[0])))
            elif g == "v" or isinstance(module, SoftmaxAttention):
                reweight = getattr(module, f"{g}_reweight")
                reweight.param.mul_(torch.where(keep, m, torch.ones_like(m)))
            elif not isinstance(module, FocusedLinearAttention):
                raise TypeError(f"no mask fold for {type(module).__name__}.{g}")
            gate.__class__ = ChannelGate


def search(
    student: nn.Module,
    loader,
    input_size: tuple[int, int, int],
    target: float,
    *,
    steps: int,
    seed: int,
    teacher: nn.Module,
    calib: Tensor,
    lr: float,
    mask_lr: float,
    tolerance: float,
) -> pc.Plan:
    """Search soft masks for ``steps`` (weights trained too), finalize, fold; the plan."""
    make_soft(student)
    config = pc.SearchConfig(
        target=target,
        steps=steps,
        sim_temperature=math.inf,
        sim_every=0,
        seed=seed,
        lr=lr,
        logit_lr=mask_lr,
        use_reweight=False,
        tolerance=tolerance,
    )
    pc.search(
        student,
        loader,
        input_size,
        config,
        teacher=teacher,
        calib=calib,
        device="cpu",
        progress=False,
    )
    plan = pc.finalize(student, input_size, target, tolerance=tolerance)
    fold_masks(student)
    return plan
