"""The learned-mask peer: soft masks multiply the channels, and folding them is exact where
the module doc says so (softmax q/v, MLP)."""

from __future__ import annotations

import sys

import timm
import torch
from helpers import ROOT

import prune_core as pc
from prune_core.indicator import GateMode

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import learned_mask  # noqa: E402


def test_folded_hard_model_equals_the_soft_one_with_dropped_masks_zeroed() -> None:
    torch.manual_seed(0)
    model = pc.make_prunable(timm.create_model("deit_fm", depth=2), verbose=False).eval()
    gates = learned_mask.make_soft(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in gates:
            gate.mode = GateMode.SEARCH
            gate.logits.copy_(torch.rand(gate.logits.shape, generator=g) + 0.2)
            keep = gate.topk_mask(max(1, gate.channels // 2))
            gate.logits.mul_(keep)  # dropped units at 0: the soft model is the pruned one
            gate.hard_mask.copy_(keep)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        soft = model(x)
    for gate in gates:
        gate.mode = GateMode.HARD
    learned_mask.fold_masks(model)
    assert all(type(gate) is pc.ChannelGate for gate in gates)
    pc.prune(model)
    with torch.no_grad():
        assert torch.allclose(model(x), soft, atol=1e-5)
