"""Prunable MLPs: timm's ``Mlp`` (fc1 → act → fc2) and its gated-linear-unit variants
(``SwiGLU``, ``GluMlp``), each with a gate on the hidden channels."""

from __future__ import annotations

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


class PrunableMlp(PrunableModule):
    """timm ``Mlp`` (fc1 → act → fc2) with a mask on the hidden channels (one "head")."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)
        self.gates = nn.ModuleDict({"mlp": ChannelGate(1, hidden_features)})

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x))
        if self.tap is not None:
            self.tap["mlp"] = h.detach().unsqueeze(1)  # (B, 1, N, hidden): one "head"
        m = self.gates["mlp"]()
        if m is not None:  # linear in m: a dropped unit still gets its task gradient
            h = h * m[0]
        return self.drop2(self.fc2(self.drop1(h)))

    def input_weights(self) -> Tensor:
        """(hidden, in) |W| of the input projection of each unit, for magnitude scores."""
        return self.fc1.weight.abs()

    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        return batch * tokens * widths["mlp"] * (self.fc1.in_features + self.fc2.out_features)

    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        check_kept("mlp", kept["mlp"], 1, self.hidden_features, False)
        index = torch.tensor(kept["mlp"][0], dtype=torch.long)
        slice_rows(self.fc1, index)
        slice_cols(self.fc2, index)
        shrink_gate(self.gates["mlp"], kept["mlp"])
        self.hidden_features = len(index)


class PrunableGluMlp(PrunableModule):
    """timm ``SwiGLU`` / ``GluMlp``: act(fc1_g x) ⊙ fc1_x x → fc2, a mask on the hidden units.

    A hidden unit j is the pair (row j of fc1_g, row j of fc1_x) and column j of fc2: the
    product is elementwise, so dropping the pair removes the unit exactly. timm's ``GluMlp``
    packs the two halves in one ``fc1`` (value half first unless ``gate_last=False``); the
    converter splits it into ``fc1_g`` / ``fc1_x`` so both layouts are one module here.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] = nn.SiLU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)
        self.gates = nn.ModuleDict({"mlp": ChannelGate(1, hidden_features)})

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1_g(x)) * self.fc1_x(x)
        if self.tap is not None:
            self.tap["mlp"] = h.detach().unsqueeze(1)  # (B, 1, N, hidden): one "head"
        m = self.gates["mlp"]()
        if m is not None:
            h = h * m[0]
        return self.drop2(self.fc2(self.drop1(h)))

    def input_weights(self) -> Tensor:
        """(hidden, in) |W| of both input projections of each unit, for magnitude scores."""
        return self.fc1_g.weight.abs() + self.fc1_x.weight.abs()

    def macs(self, widths: dict[str, MacValue], tokens: int, batch: int = 1) -> MacValue:
        return batch * tokens * widths["mlp"] * (2 * self.in_features + self.fc2.out_features)

    def shrink_(self, kept: dict[str, list[list[int]]]) -> None:
        check_kept("mlp", kept["mlp"], 1, self.hidden_features, False)
        index = torch.tensor(kept["mlp"][0], dtype=torch.long)
        slice_rows(self.fc1_g, index)
        slice_rows(self.fc1_x, index)
        slice_cols(self.fc2, index)
        shrink_gate(self.gates["mlp"], kept["mlp"])
        self.hidden_features = len(index)
