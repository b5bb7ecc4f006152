"""Finalize: the learned widths -> hard, head-aligned masks within the MAC target (method.md §5).

``finalize`` turns the learned widths into hard, head-aligned masks that meet the target. When
the learned widths miss the target by more than the tolerance (few search steps), it first
scales every group's learned width by one common factor, so neutral scores give balanced
widths; then it takes single width steps by importance per MAC — drop the least while over
budget, restore the most while under by more than the tolerance. A step's importance is the
sum of e = w·s over the units it moves (one per head, so aligned and per-head groups are on one
scale), divided by the MACs it changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from prune_core.indicator import ChannelGate, GateMode
from prune_core.macs import MacModel, check_target
from prune_core.prunable import GROUPS, check_groups, check_widths, prunable_modules
from prune_core.surgery import Plan, current_plan


def _legal_widths(channels: int, round_to: int, min_keep: int) -> list[int]:
    """Widths a head may keep: multiples of ``round_to`` (and the full width), >= min_keep."""
    step = round_to if channels >= round_to else 1
    legal = {w for w in range(step, channels + 1, step) if w >= min_keep} | {channels}
    return sorted(legal)


def _nearest(options: list[int], k: float) -> int:
    return min(options, key=lambda w: (abs(w - k), w))


def _learned_width(gate: ChannelGate) -> float:
    """The width a gate learned (unrounded K in SEARCH mode), clamped to [min_keep, d]."""
    if gate.mode is not GateMode.SEARCH:
        return float(gate.kept_per_head())
    return float(gate.soft_keep_per_head().detach().clamp(gate.min_keep, gate.channels))


def finalize(
    model: nn.Module,
    input_size: tuple[int, int, int],
    target: float,
    *,
    tolerance: float = 0.02,
    round_to: int = 1,
    groups: Iterable[str] | None = None,
    min_width: dict[str, int] | None = None,
) -> Plan:
    """Hard, head-aligned masks from the learned scores, within [t - tol, t] of full MACs.

    Args:
        target: MAC target t in (0, 1]; tolerance: how far under t the result may land.
        round_to: widths are multiples of this (or the full width).
        groups: the groups that may lose channels (None: all); the others keep full width.
        min_width: minimum channels per head per group (default 1).
    Returns:
        The plan the gates now encode (every gate HARD or OFF).
    Raises:
        ValueError: the target is below what the model can reach at minimum widths; a
            ``min_width`` above a head's channels or a ``round_to`` that does not divide them
            (``prunable.check_widths``, naming the module).
    """
    check_target(target)
    groups = tuple(GROUPS if groups is None else groups)
    check_groups(groups, min_width)
    check_widths(model, groups, min_width, round_to)
    macs = MacModel(model, input_size)
    gates: dict[tuple[str, str], ChannelGate] = {}
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            gate.min_keep = max(1, min(int((min_width or {}).get(g, 1)), gate.channels))
            if g in groups:
                gates[(name, g)] = gate
    legal = {
        key: _legal_widths(gate.channels, round_to, gate.min_keep) for key, gate in gates.items()
    }
    learned = {key: _learned_width(gate) for key, gate in gates.items()}
    widths = {
        name: {
            g: (gate.kept_per_head() if gate.mode is GateMode.HARD else gate.channels)
            for g, gate in module.gates.items()
        }
        for name, module in prunable_modules(model).items()
    }
    budget = target * macs.full
    slack = tolerance * macs.full

    def scaled(alpha: float) -> dict[str, dict[str, int]]:
        out = {n: dict(w) for n, w in widths.items()}
        for (name, g), k in learned.items():
            out[name][g] = _nearest(legal[(name, g)], min(gates[(name, g)].channels, alpha * k))
        return out

    def largest_alpha(lo: float, hi: float, limit: float) -> float:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs.total(scaled(mid)) <= limit else (lo, mid)
        return lo

    # 1. one common factor on every learned width, when they are off by more than tolerance
    if macs.total(scaled(0.0)) > budget:
        floor = macs.total(scaled(0.0)) / macs.full
        raise ValueError(
            f"MAC target {target} is below what this model can reach "
            f"({floor:.3f} of full MACs with every head at its minimum width)"
        )
    alpha = 1.0
    if macs.total(scaled(1.0)) > budget + slack:
        alpha = largest_alpha(0.0, 1.0, budget + slack)
    elif macs.total(scaled(1.0)) < budget - slack:
        alpha = largest_alpha(
            1.0, max(g.channels / max(learned[k], 1e-3) for k, g in gates.items()), budget
        )
    widths = scaled(alpha)

    # 2. single width steps by importance per MAC: drop while over, restore while too far under
    unit_e = {key: gate.unit_ranking().detach() for key, gate in gates.items()}
    order = {
        key: gate.ranking().detach().argsort(dim=1, descending=True, stable=True)
        for key, gate in gates.items()
    }

    def importance(key: tuple[str, str], lo_w: int, hi_w: int) -> float:
        """Σ e of the units ranked between lo_w and hi_w (each head its own ranking)."""
        return float(unit_e[key].gather(1, order[key][:, lo_w:hi_w]).sum())

    def best_step(direction: int, current: int):
        best = None
        for key, gate in gates.items():
            options = legal[key]
            i = options.index(widths[key[0]][key[1]])
            if not 0 <= i + direction < len(options):
                continue
            new = options[i + direction]
            trial = {n: dict(v) for n, v in widths.items()}
            trial[key[0]][key[1]] = new
            cost = macs.total(trial)
            delta = abs(cost - current)
            if delta == 0 or (direction > 0 and cost > budget):
                continue
            per_mac = importance(key, min(new, options[i]), max(new, options[i])) / delta
            fraction = options[i] / gate.channels
            # drop the least importance per MAC saved (ties: the fullest group first);
            # restore the most per MAC spent (ties: the most pruned group first)
            rank = (per_mac, -fraction, key) if direction < 0 else (-per_mac, fraction, key)
            if best is None or rank < best[0]:
                best = (rank, key, new, cost)
        return best

    current = macs.total(widths)
    while current > budget:
        step = best_step(-1, current)
        if step is None:
            raise ValueError(f"MAC target {target} is below what this model can reach")
        _, key, w, current = step
        widths[key[0]][key[1]] = w
    while current < budget - slack:
        step = best_step(+1, current)
        if step is None:
            break
        _, key, w, current = step
        widths[key[0]][key[1]] = w
    for key, gate in gates.items():
        gate.set_hard(gate.topk_mask(widths[key[0]][key[1]]))
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            if (name, g) not in gates and gate.mode is GateMode.SEARCH:
                gate.mode = GateMode.OFF
    return current_plan(model)
