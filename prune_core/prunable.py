"""What every prunable module shares: its gates, its MAC formula, its own slicing.

Each prunable module owns one :class:`ChannelGate` per channel group (``qk`` and ``v`` for
attention, ``mlp`` for an MLP) and knows three things about itself: how the gates enter its
forward pass, its multiply-accumulate count as a function of the kept widths, and how to slice
its own parameters down to the kept channels (``shrink_``). Keeping the three together means a
new attention kind is one new class, and the pruned module is the *same* class with smaller
shapes — it runs with no patched forward. The slicing helpers below are shared by all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from prune_core.indicator import ChannelGate, GateMode
from prune_core.reweight import Reweight

MacValue = Tensor | float


def mac_value(x: MacValue) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


class PrunableModule(nn.Module, ABC):
    """Common interface of every prunable module."""

    gates: nn.ModuleDict
    # Parameter names (relative to the module) that weight decay must not touch: positional
    # tables and per-channel scales, as in the official recipes (timm's no_weight_decay()).
    no_weight_decay_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        # When a dict, forward() stores the pre-mask channel activations of each group here
        # (detached) for similarity weights and attention-difference initialisation.
        self.tap: dict[str, Tensor] | None = None

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` calls this first: refuse with the way that works instead.

        The forward passes use Python that TorchScript does not take (calibration taps,
        optional gates, keyword hooks), and TorchScript is in maintenance in PyTorch in favour
        of ``torch.export``. A pruned model leaves Python through ``prune_core.export_onnx``
        (torch.export + ONNX), ``torch.export.export`` or ``torch.jit.trace``; all three are
        tested to match the eager model (tests/test_deploy.py).
        """
        raise RuntimeError(
            f"torch.jit.script does not support prune_core's {type(self).__name__}: use "
            "prune_core.export_onnx(model, path), torch.export.export(model, (x,)) or "
            "torch.jit.trace(model, x) on the pruned model (after prune_core.prune)"
        )

    def widths(self) -> dict[str, int]:
        """Kept channels per head of every group under the gates' current mode."""
        return {name: gate.kept_per_head() for name, gate in self.gates.items()}

    def full_widths(self) -> dict[str, int]:
        return {name: gate.channels for name, gate in self.gates.items()}

    def pruning_parameters(self) -> list[nn.Parameter]:
        """Parameters that exist only for pruning (logits, reweights): not deployed weights."""
        params = list(self.gates.parameters())
        params += [p for m in self.children() if isinstance(m, Reweight) for p in m.parameters()]
        return params

    def soft_widths(self) -> dict[str, Tensor]:
        return {name: gate.soft_keep_per_head() for name, gate in self.gates.items()}

    @abstractmethod
    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        """Multiply-accumulates of one forward over ``batch`` sequences of ``tokens``."""

    @abstractmethod
    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        """Slice parameters down to the kept channels (per group, per head)."""

    def fold_reweight_(self) -> None:
        """Fold learnable reweights into the weights; outputs unchanged. No-op by default."""


def slice_rows(linear: nn.Linear, index: Tensor) -> None:
    """Keep output features ``index`` of a Linear (weight rows and bias)."""
    linear.weight = nn.Parameter(linear.weight.detach()[index].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[index].clone())
    linear.out_features = int(index.numel())


def slice_cols(linear: nn.Linear, index: Tensor) -> None:
    """Keep input features ``index`` of a Linear (weight columns)."""
    linear.weight = nn.Parameter(linear.weight.detach()[:, index].clone())
    linear.in_features = int(index.numel())


def flat_index(kept: list[list[int]], width: int, offset: int = 0) -> Tensor:
    """Channel positions per head -> positions in the flattened (H·width) layout."""
    return torch.tensor(
        [offset + h * width + c for h, row in enumerate(kept) for c in row], dtype=torch.long
    )


def shrink_gate(gate: ChannelGate, kept: list[list[int]]) -> None:
    """Shrink a gate to the kept units: the pruned layer keeps an all-ones, OFF gate."""
    k = len(kept[0])
    index = torch.tensor(kept, dtype=torch.long, device=gate.logits.device)
    # Frozen: a pruned layer's gate is off, and DDP refuses parameters that get no gradient.
    gate.logits = nn.Parameter(gate.logits.detach().gather(1, index).clone(), requires_grad=False)
    gate.similarity = gate.similarity.gather(1, index).clone()
    gate.hard_mask = torch.ones_like(gate.similarity)
    gate.anchor_mass = torch.tensor(float(gate.num_heads * k), device=gate.logits.device)
    gate.channels = k
    gate.min_keep = min(gate.min_keep, k)
    gate.mode = GateMode.OFF


def check_kept(name: str, kept: list[list[int]], heads: int, width: int, aligned: bool) -> None:
    """Validate a group's kept indices: one row per head, equal non-zero counts, in range.

    Raises:
        ValueError: naming ``name`` and what is wrong.
    """
    if len(kept) != heads:
        raise ValueError(f"{name}: plan has {len(kept)} heads, layer has {heads}")
    sizes = {len(row) for row in kept}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"{name}: every head must keep the same non-zero channel count, "
            f"got {[len(r) for r in kept]}"
        )
    for row in kept:
        if len(set(row)) != len(row) or not all(0 <= c < width for c in row):
            raise ValueError(f"{name}: channel indices must be distinct and in [0, {width})")
    if aligned and any(sorted(row) != sorted(kept[0]) for row in kept):
        raise ValueError(f"{name}: kept positions must be the same in every head")


def prunable_modules(model: nn.Module) -> dict[str, PrunableModule]:
    """Every prunable module of a model by qualified name, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PrunableModule)}


GROUPS = ("qk", "v", "mlp")  # the channel groups a prunable module may gate


def check_groups(groups: Iterable[str], min_width: dict[str, int] | None = None) -> None:
    """Raises ValueError naming the valid group names when one is unknown or a width < 1."""
    groups = tuple(groups)
    unknown = sorted(set(groups) - set(GROUPS)) + sorted(set(min_width or {}) - set(GROUPS))
    if unknown or not groups:
        raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {unknown or groups}")
    for g, w in (min_width or {}).items():
        if int(w) < 1:
            raise ValueError(f"min_width[{g!r}] must be >= 1, got {w}")


def check_widths(
    model: nn.Module,
    groups: Iterable[str],
    min_width: dict[str, int] | None = None,
    round_to: int = 1,
) -> None:
    """Raises ValueError naming the module, its group and the numbers when a width setting
    cannot hold for a head of a pruned group: ``min_width`` above its channels per head (the
    minimum could only be its full width), or a ``round_to`` that does not divide them (its
    widths could not all be multiples of it). Both were clamped without a word before."""
    groups = set(groups)
    if int(round_to) < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            if g not in groups:
                continue
            wanted = int((min_width or {}).get(g, 1))
            if wanted > gate.channels:
                raise ValueError(
                    f"min_width[{g!r}] = {wanted} is above the {gate.channels} channels per "
                    f"head of {name or type(module).__name__} ({g}): lower it, or leave {g!r} "
                    "out of groups"
                )
            if gate.channels % int(round_to):
                raise ValueError(
                    f"round_to = {round_to} does not divide the {gate.channels} channels per "
                    f"head of {name or type(module).__name__} ({g}): choose a divisor of it"
                )
