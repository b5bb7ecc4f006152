"""The two Fashion-attention benchmark models: shapes, tokens, prunability, MACs vs torch."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import random_masks
from torch.utils.flop_counter import FlopCounterMode

import prune_core as pc
from prune_core.attention import SoftmaxAttention, attention_modules
from prune_core.focused_linear_attention import FocusedLinearAttention

SIZE = (1, 28, 28)


def torch_macs(model: torch.nn.Module) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *SIZE))
    return counter.get_total_flops() // 2


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return pc.make_prunable(timm.create_model(name), verbose=False).eval()


def test_flatten_swin_fm_is_the_hybrid_the_issue_asks_for() -> None:
    model = build("flatten_swin_fm")
    blocks = [b for layer in model.layers for b in layer.blocks]
    assert len(blocks) == 6
    # stage 1: 14x14 map (196 tokens) in 7x7 windows of 49, every second block shifted by 3
    assert [(b.resolution, b.window, b.shift) for b in blocks[:2]] == [((14, 14), 7, 0)] * 1 + [
        ((14, 14), 7, 3)
    ]
    assert all(isinstance(b.attn, FocusedLinearAttention) for b in blocks[:2])
    assert blocks[0].attn.tokens == 49
    # stage 2: one 7x7 softmax window with a 13x13 relative position table
    assert all(isinstance(b.attn, SoftmaxAttention) for b in blocks[2:])
    assert all(b.resolution == (7, 7) and b.window == 7 for b in blocks[2:])
    assert blocks[2].attn.relative_position_bias_table.shape == (169, 4)
    assert all(m.qk_dim == 16 for m in attention_modules(model).values())
    tokens = []
    model.patch_embed.register_forward_hook(lambda m, i, o: tokens.append(o.shape[1]))
    assert model(torch.randn(2, *SIZE)).shape == (2, 10)
    assert tokens == [196]


def test_deit_fm_is_a_deit_shaped_vit() -> None:
    plain = timm.create_model("deit_fm")
    assert type(plain).__name__ == "VisionTransformer"
    assert plain.patch_embed.num_patches == 49 and plain.cls_token is not None
    model = build("deit_fm")
    attns = list(attention_modules(model).values())
    assert len(attns) == 6
    assert all(a.num_heads == 4 and a.qk_dim == 16 for a in attns)
    assert model(torch.randn(2, *SIZE)).shape == (2, 10)


@pytest.mark.parametrize("name", ["flatten_swin_fm", "deit_fm"])
def test_count_macs_equals_torch_full_masked_and_pruned(name: str) -> None:
    model = build(name)
    full = pc.count_macs(model, SIZE)
    assert full == torch_macs(model)
    random_masks(model, keep=0.5, seed=1)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        masked = model(x)
    predicted = pc.MacModel(model, SIZE).total()
    assert predicted < 0.75 * full
    pc.prune(model)
    assert pc.count_macs(model, SIZE) == predicted == torch_macs(model)
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_pretrained_weights_are_refused() -> None:
    for name in ("flatten_swin_fm", "deit_fm"):
        with pytest.raises(ValueError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)
