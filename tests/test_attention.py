"""Prunable modules: exact masking, exact surgery, exact reweight folding, STE gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import random_masks, tiny_vit

from prune_core import (
    FocusedLinearAttention,
    GateMode,
    PrunableMlp,
    SoftmaxAttention,
    current_plan,
    prunable_modules,
    prune,
)

MODULES = {
    "softmax": lambda: SoftmaxAttention(32, 4),
    "window": lambda: SoftmaxAttention(32, 4, window_size=(4, 4)),
    "linear": lambda: FocusedLinearAttention(32, 4, 16, (4, 4)),
    "mlp": lambda: PrunableMlp(32, 48),
}


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial values for parameters that start at 0/1 (bias tables, scale, reweights)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "reweight" in name:
                p.uniform_(0.5, 1.5)
            elif name in ("scale", "positional_encoding", "relative_position_bias_table"):
                p.normal_(0, 0.5)


@pytest.mark.parametrize("kind", MODULES)
def test_pruned_module_equals_masked(kind: str) -> None:
    torch.manual_seed(0)
    module = MODULES[kind]().eval()
    _randomise(module)
    x = torch.randn(3, 16, 32)
    full = module(x)
    random_masks(module, keep=0.5)
    masked = module(x)
    assert (masked - full).abs().max() > 1e-3  # the masks do act
    plan = {g: gate.kept_indices() for g, gate in module.gates.items()}
    module.fold_reweight_()
    assert (module(x) - masked).abs().max() <= 1e-5  # folding changes nothing
    module.shrink_(plan)
    assert (module(x) - masked).abs().max() <= 1e-5
    for gate in module.gates.values():
        assert gate.mode is GateMode.OFF and gate.channels == len(plan[gate_name(module, gate)][0])


def gate_name(module, gate) -> str:
    return next(n for n, g in module.gates.items() if g is gate)


def test_window_attention_with_shift_mask_prunes_exactly() -> None:
    torch.manual_seed(0)
    module = SoftmaxAttention(32, 4, window_size=(2, 2)).eval()
    _randomise(module)
    mask = torch.zeros(2, 4, 4)
    mask[1, :2, 2:] = -100.0
    mask[1, 2:, :2] = -100.0
    x = torch.randn(4, 4, 32)  # 2 images x 2 windows of 4 tokens
    random_masks(module, keep=0.25)
    masked = module(x, mask)
    prune_plan = {g: gate.kept_indices() for g, gate in module.gates.items()}
    module.fold_reweight_()
    module.shrink_(prune_plan)
    assert (module(x, mask) - masked).abs().max() <= 1e-5


def test_linear_attention_zeroes_masked_channels_before_the_focusing_norm() -> None:
    """The norm over C must see only kept channels: masked == pruned proves it."""
    torch.manual_seed(1)
    module = FocusedLinearAttention(32, 2, 16, (4, 4)).eval()
    _randomise(module)
    x = torch.randn(2, 16, 32)
    random_masks(module, keep=0.25)
    masked = module(x)
    plan = {g: gate.kept_indices() for g, gate in module.gates.items()}
    module.fold_reweight_()
    module.shrink_(plan)
    assert module.qk_dim == 4 and module.v_dim == 4
    assert module.scale.shape[-1] == 8 and module.positional_encoding.shape[-1] == 8
    assert module.dwc.weight.shape[0] == 4
    assert (module(x) - masked).abs().max() <= 1e-5


def test_whole_model_prune_matches_masked_and_heads_are_equal() -> None:
    model = tiny_vit().eval()
    for m in prunable_modules(model).values():
        _randomise(m)
    x = torch.randn(4, 3, 8, 8)
    random_masks(model, keep=0.5, seed=3)
    masked = model(x)
    plan = current_plan(model)
    prune(model)
    assert (model(x) - masked).abs().max() <= 1e-4
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            assert gate.mode is GateMode.OFF
            assert gate.channels == len(plan.layers[name][g][0])
        if hasattr(module, "qk_dim"):
            assert module.qkv.out_features == module.num_heads * (2 * module.qk_dim + module.v_dim)
            assert module.proj.in_features == module.num_heads * module.v_dim


def test_straight_through_estimator_reaches_logits() -> None:
    model = tiny_vit()
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            gate.mode = GateMode.SEARCH
            with torch.no_grad():
                gate.logits.normal_(0, 1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            assert gate.logits.grad is not None, f"{name}.{g}"
            assert gate.logits.grad.abs().sum() > 0, f"{name}.{g}"


def test_search_mask_keeps_equal_counts_per_head() -> None:
    module = SoftmaxAttention(32, 4)
    gate = module.gates["qk"]
    gate.mode = GateMode.SEARCH
    with torch.no_grad():
        gate.logits.copy_(torch.linspace(-4, 4, 32).reshape(4, 8))  # head 0 low, head 3 high
    mask = gate().detach()
    counts = mask.round().sum(1)
    assert torch.all(counts == counts[0]) and counts[0] == gate.count_from_scores()


def test_gate_rejects_unequal_or_empty_heads() -> None:
    gate = SoftmaxAttention(32, 4).gates["qk"]
    bad = torch.ones(4, 8)
    bad[0, :3] = 0
    with pytest.raises(ValueError, match="same, non-zero"):
        gate.set_hard(bad)
    with pytest.raises(ValueError, match="head would be"):
        gate.topk_mask(0)
