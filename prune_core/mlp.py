"""Prunable MLPs: timm's ``Mlp`` (fc1 → act → fc2) and its gated-linear-unit variants
(``SwiGLU``, ``GluMlp``), each with a gate on the hidden channels."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from prune_core.indicator import ChannelGate
from prune_core.prunable import (
    MacValue,
    PrunableModule,
    check_kept,
    shrink_gate,
    slice_cols,
    slice_rows,
)


class _HiddenUnitMlp(PrunableModule):
    """An MLP whose hidden units are pruned as one group ("mlp", one "head"): the input
    projections named by ``INPUTS`` (rows), an activation, ``fc2`` (columns), dropouts.

    Subclasses give ``INPUTS`` and ``_hidden`` (the pre-mask hidden activations). Modules are
    registered in timm's order (input projections, act, drop1, fc2, drop2, then the gates),
    so parameter order, and so a saved optimiser state, is what it always was.
    """

    INPUTS: ClassVar[tuple[str, ...]]
    DEFAULT_ACT: ClassVar[type[nn.Module]]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        for name in self.INPUTS:
            setattr(self, name, nn.Linear(in_features, hidden_features, bias=bias))
        self.act = (act_layer or self.DEFAULT_ACT)()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)
        self.gates = nn.ModuleDict({"mlp": ChannelGate(1, hidden_features)})

    @abstractmethod
    def _hidden(self, x: Tensor) -> Tensor:
        """(B, N, hidden) activations before the mask."""

    def forward(self, x: Tensor) -> Tensor:
        h = self._hidden(x)
        if self.tap is not None:
            self.tap["mlp"] = h.detach().unsqueeze(1)  # (B, 1, N, hidden): one "head"
        m = self.gates["mlp"]()
        if m is not None:  # linear in m: a dropped unit still gets its task gradient
            h = h * m[0]
        return self.drop2(self.fc2(self.drop1(h)))

    def input_weights(self) -> Tensor:
        """(hidden, in) |W| summed over the input projections of each unit (magnitude
        scores)."""
        return sum(getattr(self, name).weight.abs() for name in self.INPUTS)

    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        per_unit = len(self.INPUTS) * self.in_features + self.fc2.out_features
        return batch * tokens * widths["mlp"] * per_unit

    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        check_kept("mlp", kept["mlp"], 1, self.hidden_features, False)
        index = torch.tensor(kept["mlp"][0], dtype=torch.long)
        for name in self.INPUTS:
            slice_rows(getattr(self, name), index)
        slice_cols(self.fc2, index)
        shrink_gate(self.gates["mlp"], kept["mlp"])
        self.hidden_features = len(index)


class PrunableMlp(_HiddenUnitMlp):
    """timm ``Mlp`` (fc1 → act → fc2, GELU by default) with a mask on the hidden channels."""

    INPUTS = ("fc1",)
    DEFAULT_ACT = nn.GELU

    def _hidden(self, x: Tensor) -> Tensor:
        return self.act(self.fc1(x))


class PrunableGluMlp(_HiddenUnitMlp):
    """timm ``SwiGLU`` / ``GluMlp``: act(fc1_g x) ⊙ fc1_x x → fc2 (SiLU by default), a mask on
    the hidden units.

    A hidden unit j is the pair (row j of fc1_g, row j of fc1_x) and column j of fc2: the
    product is elementwise, so dropping the pair removes the unit exactly. timm's ``GluMlp``
    packs the two halves in one ``fc1`` (value half first unless ``gate_last=False``); the
    converter splits it into ``fc1_g`` / ``fc1_x`` so both layouts are one module here.
    """

    INPUTS = ("fc1_g", "fc1_x")
    DEFAULT_ACT = nn.SiLU

    def _hidden(self, x: Tensor) -> Tensor:
        return self.act(self.fc1_g(x)) * self.fc1_x(x)
