"""The "no head alignment" ablation, composed from prune_core's public pieces.

prune_core's gates always keep the same count in every head (§3.3), because a head-split
reshape needs equal widths. The ablation lets each gate keep its best ``K = round(Σ s)`` units
*anywhere* in the layer (every head keeps at least one), so heads end up with different widths
and, for FLatten's value path, different positions. Such a model runs only *masked*: it cannot
be turned into a dense multi-head model, so it has no real speed-up. Its MACs are what a
(hypothetical) ragged implementation would cost: the MAC model evaluated at the *mean* width
per head. That is exact for every term linear in the per-head widths (projections, q·kᵀ,
attn·v, MLP) and an approximation only for FLatten's K·V product (Σ_h k_qk,h·k_v,h).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune_core import ChannelGate, GateMode, MacModel, prunable_modules


class FreeGate(ChannelGate):
    """A gate whose kept units are the layer-wide top-K by e = w·s, heads unconstrained."""

    def _free_mask(self, k_total: int, ranking: Tensor) -> Tensor:
        H = self.num_heads
        k_total = max(H, min(H * self.channels, k_total))
        e = ranking.clone()
        mask = torch.zeros_like(e)
        best = e.argmax(dim=1)  # every head keeps at least its best unit
        mask[torch.arange(H), best] = 1.0
        e[torch.arange(H), best] = float("-inf")
        rest = k_total - H
        if rest > 0:
            mask.view(-1)[e.view(-1).topk(rest).indices] = 1.0
        return mask

    def ranking(self) -> Tensor:  # no cross-head summing: positions are free per head
        return self.similarity * self.keep_scores()

    def soft_total(self) -> Tensor:
        """Units kept in the whole layer: H · K, with K the relative width of ChannelGate."""
        return self.soft_keep_per_head() * self.num_heads

    def kept_per_head(self) -> float:  # type: ignore[override]  (mean width, for MACs)
        if self.mode is GateMode.OFF:
            return float(self.channels)
        if self.mode is GateMode.HARD:
            return float(self.hard_mask.sum().item()) / self.num_heads
        return float(round(self.soft_total().item())) / self.num_heads

    def search_mask(self, scores: Tensor) -> Tensor:  # the layer-wide top-K, K = round(Σ scores)
        return self._free_mask(round(float(scores.sum().detach())), self.ranking().detach())


def make_unaligned(model: nn.Module) -> nn.Module:
    """Turn every gate into a :class:`FreeGate`, in place (state and parameters are kept)."""
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            gate.__class__ = FreeGate
            gate.aligned = False
    return model


def mean_widths(model: nn.Module) -> dict[str, dict[str, float]]:
    return {
        name: {g: gate.kept_per_head() for g, gate in m.gates.items()}
        for name, m in prunable_modules(model).items()
    }


def masked_macs(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """(MACs of the masked unaligned model, MACs of the full model)."""
    macs = MacModel(model, input_size)
    return macs.total(mean_widths(model)), macs.full


@torch.no_grad()
def finalize_unaligned(
    model: nn.Module, input_size: tuple[int, int, int], target: float, tolerance: float = 0.02
) -> float:
    """Hard unaligned masks within [t - tol, t] of full MACs; returns the MAC ratio.

    Mirrors ``prune_core.finalize``: start from each gate's learned K, drop the globally
    lowest-ranked unit while over budget, restore the best dropped one while too far under.
    """
    macs = MacModel(model, input_size)
    gates = [g for m in prunable_modules(model).values() for g in m.gates.values()]
    for gate in gates:
        gate.hard_mask.copy_(gate._free_mask(round(gate.soft_total().item()), gate.ranking()))
        gate.mode = GateMode.HARD
    budget = target * macs.full

    def total() -> int:
        return macs.total(mean_widths(model))

    scores = [gate.ranking() for gate in gates]
    while total() > budget:
        best = None
        for i, gate in enumerate(gates):
            kept = gate.hard_mask.bool() & (gate.hard_mask.sum(1, keepdim=True) > 1)
            if kept.any():
                s = scores[i].masked_fill(~kept, float("inf"))
                j = int(s.view(-1).argmin())
                if best is None or s.view(-1)[j] < best[0]:
                    best = (float(s.view(-1)[j]), i, j)
        if best is None:
            raise ValueError(f"MAC target {target} is below what this model can reach")
        gates[best[1]].hard_mask.view(-1)[best[2]] = 0.0
    while total() < (target - tolerance) * macs.full:
        options = []
        for i, gate in enumerate(gates):
            dropped = ~gate.hard_mask.bool()
            if dropped.any():
                s = scores[i].masked_fill(~dropped, float("-inf"))
                j = int(s.view(-1).argmax())
                options.append((float(s.view(-1)[j]), i, j))
        placed = False
        for _, i, j in sorted(options, reverse=True):
            gates[i].hard_mask.view(-1)[j] = 1.0
            if total() <= budget:
                placed = True
                break
            gates[i].hard_mask.view(-1)[j] = 0.0
        if not placed:
            break
    return total() / macs.full
