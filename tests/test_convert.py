"""make_prunable: timm ViT/DeiT/Swin become prunable with the same outputs, and masks bite."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import timm
import torch
from timm.layers import Mlp
from timm.layers.attention import Attention
from torch import nn

from prune_core import PrunableMlp, SoftmaxAttention, make_prunable, prunable_modules, prune
from prune_core.convert import TimmBlockAttention, supported_modules


def _build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _kinds(model: nn.Module) -> dict[str, int]:
    kinds = list(supported_modules(model).values())
    return {k: kinds.count(k) for k in sorted(set(kinds))}


def _convert_quietly(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a supported model converts without any warning
        return make_prunable(model, verbose=False)


SMALL_VIT = {"depth": 2, "img_size": 64}
CASES = {
    "deit_tiny": ("deit_tiny_patch16_224", {}, 224, 2, {"attention": 12, "mlp": 12}),
    "vit_small_depth2": ("vit_small_patch16_224", SMALL_VIT, 64, 2, {"attention": 2, "mlp": 2}),
    "swin_tiny": ("swin_tiny_patch4_window7_224", {}, 224, 1, {"mlp": 12, "window_attention": 12}),
    "vit_nobias_tanh": (
        "vit_small_patch16_224",
        dict(SMALL_VIT, qkv_bias=False, act_layer="gelu_tanh"),
        64,
        2,
        {"attention": 2, "mlp": 2},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_identical_before_pruning(case: str) -> None:
    name, kwargs, size, batch, expected = CASES[case]
    model = _build(name, **kwargs)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        before = model(x)
    assert _kinds(model) == expected
    timm_index = {
        n: b.clone()
        for n, b in model.named_buffers(remove_duplicate=False)
        if n.endswith("relative_position_index")
    }
    assert _convert_quietly(model) is model
    prunable = prunable_modules(model)
    assert len(prunable) == sum(expected.values())
    assert supported_modules(model) == {}
    with torch.no_grad():
        after = model(x)
    diff = (before - after).abs().max().item()
    print(f"{case}: max abs diff {diff:.3g}")
    assert diff <= 1e-5
    ours = dict(model.named_buffers(remove_duplicate=False))
    for n, index in timm_index.items():
        assert torch.equal(ours[n], index), n  # recomputed index is timm's


def test_attributes_act_dropout_mode_and_dtype_are_kept() -> None:
    model = (
        _build(
            "vit_small_patch16_224",
            **SMALL_VIT,
            qkv_bias=False,
            act_layer=partial(nn.GELU, approximate="tanh"),
            attn_drop_rate=0.1,
            proj_drop_rate=0.2,
        )
        .double()
        .train()
    )
    qkv_weight = model.blocks[0].attn.qkv.weight
    _convert_quietly(model)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert isinstance(attn, TimmBlockAttention) and isinstance(mlp, PrunableMlp)
    assert attn.qkv.weight is qkv_weight  # the live parameter, not a copy
    assert attn.qkv.bias is None and attn.proj.bias is not None
    assert attn.attn_drop.p == 0.1 and attn.proj_drop.p == 0.2
    assert mlp.drop1.p == 0.2 and mlp.drop2.p == 0.2
    assert isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "tanh"
    assert all(m.training for m in model.modules())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(b.dtype == torch.float64 for b in model.buffers() if b.is_floating_point())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_is_kept() -> None:
    model = _build("vit_small_patch16_224", **SMALL_VIT).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        before = model(x)
        after = _convert_quietly(model)(x)
    assert all(t.is_cuda for t in [*model.parameters(), *model.buffers()])
    assert (before - after).abs().max().item() <= 1e-4  # SDPA kernels, not bitwise


def test_attn_mask_and_causal_calls_match_timm() -> None:
    torch.manual_seed(0)
    timm_attn = Attention(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 6, 32)
    bool_mask = torch.rand(2, 1, 6, 6) > 0.3
    bool_mask[..., 0] = True  # every row keeps a key
    with torch.no_grad():
        expected = [timm_attn(x, attn_mask=bool_mask), timm_attn(x, is_causal=True), timm_attn(x)]
        ours = make_prunable(timm_attn, verbose=False)  # the root itself is converted
        assert isinstance(ours, TimmBlockAttention)
        got = [ours(x, attn_mask=bool_mask), ours(x, is_causal=True), ours(x)]
    for e, g in zip(expected, got, strict=True):
        assert (e - g).abs().max().item() <= 1e-5


def test_unsupported_variant_is_left_alone_and_named() -> None:
    model = _build("vit_small_patch16_224", **SMALL_VIT)
    torch.manual_seed(1)
    model.blocks[1].attn = Attention(
        384, num_heads=6, qkv_bias=True, scale_norm=True, norm_layer=nn.LayerNorm
    ).eval()
    model.blocks[1].mlp = Mlp(384, 96, norm_layer=nn.LayerNorm).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    with pytest.warns(UserWarning, match=r"blocks\.1\.attn: scale_norm") as record:
        make_prunable(model, verbose=False)
    message = str(record[0].message)
    assert "blocks.1.mlp: Mlp with a hidden norm" in message and "blocks.0" not in message
    assert type(model.blocks[1].attn) is Attention and type(model.blocks[1].mlp) is Mlp
    assert isinstance(model.blocks[0].attn, SoftmaxAttention)
    with torch.no_grad():
        assert (before - model(x)).abs().max().item() <= 1e-5


class ForeignAttention(nn.Module):
    """Someone's own attention, named like timm's (below): not something make_prunable knows."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        return self.qkv(x)[..., :8]


ForeignAttention.__name__ = ForeignAttention.__qualname__ = "Attention"


def test_an_unknown_class_is_named_in_full_not_by_a_supported_bare_name() -> None:
    """A foreign ``Attention`` is not timm.layers' ``Attention``: the message must say which."""
    model = nn.Sequential(ForeignAttention(), Mlp(8, 16))
    with pytest.raises(ValueError, match=r"unsupported attention class test_convert\.Attention"):
        make_prunable(model, verbose=False)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: _build("resnet10t"), id="resnet10t"),
        pytest.param(lambda: nn.Sequential(nn.Linear(8, 8), Mlp(8, 16)), id="sequential"),
    ],
)
def test_model_without_attention_raises_and_is_untouched(model) -> None:
    model = model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"make_prunable: {type(model).__name__} has no attention"):
        make_prunable(model, verbose=False)
    assert not prunable_modules(model)  # nothing half-converted (the Sequential's Mlp stays timm's)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_idempotent_and_prunable_models_left_as_they_are() -> None:
    model = _convert_quietly(_build("vit_small_patch16_224", **SMALL_VIT))
    modules = dict(model.named_modules())
    _convert_quietly(model)
    assert dict(model.named_modules()) == modules
    flatten = _build("flatten_vit_micro", num_classes=10)
    before = dict(flatten.named_modules())
    assert dict(_convert_quietly(flatten).named_modules()) == before


def _random_half_masks(model: nn.Module, seed: int = 0) -> int:
    g = torch.Generator().manual_seed(seed)
    count = 0
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            k = max(1, gate.channels // 2)
            mask = torch.zeros(gate.num_heads, gate.channels)
            first = torch.randperm(gate.channels, generator=g)[:k]
            for h in range(gate.num_heads):
                rows = first if gate.aligned else torch.randperm(gate.channels, generator=g)[:k]
                mask[h, rows] = 1.0
            gate.set_hard(mask)
            count += 1
    return count


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("vit_small_patch16_224", SMALL_VIT, 64),
        (
            "swin_tiny_patch4_window7_224",
            {
                "embed_dim": 32,
                "depths": (2, 2),
                "num_heads": (2, 4),
                "window_size": 4,
                "img_size": 64,
            },
            64,
        ),
    ],
)
def test_masks_change_outputs_and_gradients_reach_qkv(name: str, kwargs: dict, size: int) -> None:
    model = _convert_quietly(_build(name, **kwargs))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        full = model(x)
    assert _random_half_masks(model) == 3 * 2 * len(kwargs.get("depths", (2,)))
    out = model(x)
    assert out.shape == full.shape and torch.isfinite(out).all()
    assert (out - full).abs().max().item() > 1e-3  # the gates are wired into the forward
    out.square().mean().backward()
    for module in prunable_modules(model).values():
        weight = module.qkv.weight if isinstance(module, SoftmaxAttention) else module.fc1.weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        masked = model(x)
        assert (prune(model)(x) - masked).abs().max().item() <= 1e-4  # surgery takes it over
