"""MAC model against torch's counter: per module, whole models, masked and pruned."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers import random_masks, tiny_vit
from torch.utils.flop_counter import FlopCounterMode

import prune_core as pc
from prune_core import MacModel, count_macs, make_prunable, prunable_modules, prune
from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.indicator import GateMode


def torch_macs(model: torch.nn.Module, input_size) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2


def test_module_formulas_match_torch_per_module() -> None:
    model = tiny_vit(img_size=16).eval()
    macs = MacModel(model, (3, 16, 16))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 16))
    per_module = counter.get_flop_counts()
    assert len(macs.sites) == 4
    for name, site in macs.sites.items():
        counted = sum(per_module[f"FlattenViT.{name}"].values()) // 2
        predicted = site.module.macs(site.module.full_widths(), site.tokens, site.batch)
        assert predicted == counted, name


def _build(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    torch.manual_seed(0)
    if name == "flatten_vit_micro":
        return timm.create_model(name, num_classes=10).eval(), (3, 16, 16)
    if name == "flatten_swin_tiny":
        return timm.create_model(name).eval(), (3, 224, 224)
    return make_prunable(timm.create_model(name, pretrained=False)).eval(), (3, 224, 224)


@pytest.mark.parametrize(
    "name",
    [
        "flatten_vit_micro",
        "deit_tiny_patch16_224",
        "swin_tiny_patch4_window7_224",
        "flatten_swin_tiny",
    ],
)
def test_count_macs_agrees_with_torch_unpruned_and_pruned(name: str) -> None:
    model, size = _build(name)
    full = count_macs(model, size)
    assert abs(full - torch_macs(model, size)) <= 0.01 * full
    random_masks(model, keep=0.5, seed=1)
    predicted = MacModel(model, size).total()
    assert predicted < 0.75 * full
    assert count_macs(model, size) == predicted
    prune(model)
    assert count_macs(model, size) == predicted
    assert abs(torch_macs(model, size) - predicted) <= 0.01 * predicted


def test_soft_macs_are_differentiable_in_the_logits() -> None:
    model = tiny_vit()
    macs = MacModel(model, (3, 8, 8))
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            gate.mode = GateMode.SEARCH
    (macs.soft_total() / macs.full).backward()
    grads = [g.logits.grad for m in prunable_modules(model).values() for g in m.gates.values()]
    assert all(g is not None and torch.all(g > 0) for g in grads)  # keeping more costs more


def test_linear_attention_order_follows_the_pruned_widths() -> None:
    """Few tokens: (QKᵀ)V at full width; a narrow pruned layer may prefer Q(KᵀV)."""
    torch.manual_seed(0)
    attn = FocusedLinearAttention(64, 1, 16, (4, 4)).eval()
    assert not attn._kv_first(16)  # 2·16·64·64 > 16²·128
    assert attn._kv_first(16, 4, 4)  # 2·16·4·4 < 16²·8
    mask = torch.zeros(1, 64)
    mask[0, :4] = 1
    attn.gates["qk"].set_hard(mask)
    attn.gates["v"].set_hard(mask)

    class TokenModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(1, 64)
            self.attn = attn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(self.embed(x.flatten(2).transpose(1, 2)))

    model = TokenModel().eval()
    predicted = MacModel(model, (1, 4, 4)).total()
    prune(model)
    assert torch_macs(model, (1, 4, 4)) == predicted


def test_plain_timm_vits_count_on_cpu_through_sdpa() -> None:
    """timm's Attention calls F.scaled_dot_product_attention (the CPU flash kernel); the count
    must include it and equal the prunable twin's analytic count (issue: it raised TypeError)."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5)
    assert pc.count_macs(model, (3, 32, 32)) == 5_033_664
    twin = pc.make_prunable(copy.deepcopy(model), verbose=False)
    assert pc.count_macs(twin, (3, 32, 32)) == 5_033_664


def test_attention_pool_head_is_left_intact_and_counted() -> None:
    """SigLIP-style ``global_pool='map'`` (timm's AttentionPoolLatent passes its latent query, a
    parameter, as a module input; torch's module tracker failed on it under no_grad)."""
    model = timm.create_model(
        "vit_small_patch16_224", global_pool="map", img_size=32, depth=2, num_classes=5
    ).eval()
    size = (3, 32, 32)
    full = pc.count_macs(model, size)
    assert full == 21_571_968
    assert all(p.requires_grad for p in model.parameters())  # switched back after the count
    twin = pc.make_prunable(copy.deepcopy(model), verbose=False).eval()
    assert pc.count_macs(twin, size) == full
    x = torch.randn(2, *size)
    assert (twin(x) - model(x)).abs().max() < 1e-5
    pc.apply_plan(twin, pc.magnitude_plan(twin, 0.5))
    masked, predicted = twin(x), pc.count_macs(twin, size)
    pc.prune(twin)
    assert pc.count_macs(twin, size) == predicted < full
    assert (twin(x) - masked).abs().max() < 1e-4


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("flatten_vit_micro", {"img_size": 28, "in_chans": 1, "patch_size": 7}, (1, 28, 28)),
        ("flatten_swin_tiny", {}, (3, 224, 224)),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}, (3, 64, 64)),
        ("deit_tiny_patch16_224", {"img_size": 32, "in_chans": 1, "depth": 2}, (1, 32, 32)),
        ("resnet10t", {}, (3, 176, 176)),  # no patch embedding: timm's data config
    ],
)
def test_input_size_defaults_to_the_size_the_model_was_built_for(name, kwargs, size) -> None:
    """timm's data config alone would say (3, 224, 224) for every ViT above: it ignores img_size."""
    model = timm.create_model(name, **kwargs)
    assert pc.default_input_size(model) == size
    if name == "deit_tiny_patch16_224":
        assert pc.count_macs(model) == pc.count_macs(model, size)
        twin = pc.make_prunable(copy.deepcopy(model), verbose=False)
        assert pc.count_macs(twin) == pc.count_macs(model, size) == pc.MacModel(twin).full
