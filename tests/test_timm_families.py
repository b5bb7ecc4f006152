"""The newer timm attention families under the same contract as ViT/Swin: qk-norm ViT, BEiT
and BEiTv2, Swin V2, EVA-02 (rotary, SwiGLU), GLU MLPs.

Contract: converted outputs equal the original (<= 1e-5); masks bite; masked == pruned
(<= 1e-4); the MAC model equals torch's count of the pruned model (<= 1 %; measured exact);
every head keeps the same width; layers that transform q/k over the head keep q/k whole.
"""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import make_prunable_checked, off_init, search_and_prune
from timm.layers import GluMlp, SwiGLUPacked
from torch import nn

import prune_core as pc
from prune_core.timm_attention import EvaAttention

SMALL_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 5}
SMALL_BEIT = {**SMALL_VIT, "embed_dim": 96, "num_heads": 4}
SMALL_EVA = {"img_size": 28, "depth": 2, "num_classes": 5}
# name: (timm model, kwargs, kinds make_prunable converts, attention layers keeping q/k whole)
CASES = {
    "vit_qk_norm": (
        "vit_small_patch16_224",
        {**SMALL_VIT, "qk_norm": True},
        {"attention": 2, "mlp": 2},
        2,
    ),
    "vit_swiglu_packed": (
        "vit_small_patch16_224",
        {**SMALL_VIT, "mlp_layer": SwiGLUPacked, "mlp_ratio": 2},
        {"attention": 2, "glu_mlp": 2},
        0,
    ),
    "vit_glu_gate_last": (
        "vit_small_patch16_224",
        {**SMALL_VIT, "mlp_layer": GluMlp, "act_layer": nn.Sigmoid, "mlp_ratio": 2},
        {"attention": 2, "glu_mlp": 2},
        0,
    ),
    "beit": ("beit_base_patch16_224", SMALL_BEIT, {"beit": 2, "mlp": 2}, 0),
    "beit_shared_bias": (
        "beit_base_patch16_224",
        {**SMALL_BEIT, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True},
        {"beit": 2, "mlp": 2},
        0,
    ),
    "beitv2": ("beitv2_base_patch16_224", SMALL_BEIT, {"beit": 2, "mlp": 2}, 0),
    "swinv2": (
        "swinv2_tiny_window8_256",
        {
            "img_size": 64,
            "window_size": 4,
            "embed_dim": 32,
            "depths": (2, 2),
            "num_heads": (2, 4),
            "num_classes": 5,
        },
        {"swin_v2": 4, "mlp": 4},
        4,
    ),
    "eva02": ("eva02_tiny_patch14_224", SMALL_EVA, {"eva_rope": 2, "glu_mlp": 2}, 2),
    "eva02_separate_qkv": (
        "eva02_tiny_patch14_224",
        {**SMALL_EVA, "qkv_fused": False},
        {"eva_rope": 2, "glu_mlp": 2},
        2,
    ),
    "eva_without_rope": (
        "eva02_tiny_patch14_224",
        {**SMALL_EVA, "use_rot_pos_emb": False},
        {"eva": 2, "glu_mlp": 2},
        0,
    ),
}


def build(name: str, kwargs: dict) -> nn.Module:
    """A small model with every parameter moved off its init: zero-initialised biases and
    bias tables (BEiT, Swin V2) would otherwise make a wrong conversion look exact."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    return off_init(model)


@pytest.mark.parametrize("case", list(CASES))
def test_family_keeps_the_contract(case: str) -> None:
    name, kwargs, kinds, whole = CASES[case]
    model = build(name, kwargs)
    size = pc.default_input_size(model)
    x = torch.randn(2, *size)
    with torch.no_grad():
        original = model(x)
    model = make_prunable_checked(model, kinds, whole)
    with torch.no_grad():
        assert (model(x) - original).abs().max().item() <= 1e-5

    pc.apply_plan(model, pc.random_plan(model, 0.5))  # half of every head, random
    macs = pc.MacModel(model, size)
    predicted = float(macs.total(macs.current_widths()))
    with torch.no_grad():
        masked = model(x)
        assert (masked - original).abs().max().item() > 1e-2  # the gates are in the forward
        pc.prune(model)
        assert (model(x) - masked).abs().max().item() <= 1e-4
    assert abs(predicted - pc.count_macs(model, size)) <= 0.01 * predicted
    for module in pc.prunable_modules(model).values():
        if isinstance(module, pc.SoftmaxAttention):  # equal widths: one qk_dim, one v_dim
            rows = module.num_heads * (2 * module.qk_dim + module.v_dim)
            assert module.qkv.weight.shape[0] == rows
            assert module.proj.weight.shape[1] == module.num_heads * module.v_dim
            assert ("qk" in module.gates) == (module.qk_prunable)


@pytest.mark.parametrize("case", ["beit", "eva02", "swinv2"])
def test_search_plan_meets_the_target_on_the_family(case: str) -> None:
    """The whole method runs on the family: calibration taps, init scores, search, finalize."""
    name, kwargs, _, _ = CASES[case]
    teacher = build(name, kwargs)
    model = pc.make_prunable(build(name, kwargs), verbose=False)
    plan, _ = search_and_prune(model, teacher, pc.default_input_size(teacher))
    for path, module in pc.prunable_modules(model).items():
        assert set(plan.layers[path]) == set(module.gates)  # no qk entry where q/k stay whole


def test_a_rope_never_reaches_a_prunable_qk_group() -> None:
    """Rotation mixes channel pairs: an EvaAttention built with a qk gate refuses a rope."""
    attn = EvaAttention(32, 2, qkv_bias=True)
    assert attn.qk_prunable
    with pytest.raises(ValueError, match="rotary embedding reached an EvaAttention"):
        attn(torch.randn(1, 5, 32), rope=torch.randn(4, 32))


def test_magnitude_plan_on_a_qk_norm_model_prunes_v_and_mlp_only() -> None:
    name, kwargs, _, _ = CASES["vit_qk_norm"]
    model = pc.make_prunable(build(name, kwargs), verbose=False)
    plan = pc.magnitude_plan(model, 0.5)
    attn = {k: v for k, v in plan.layers.items() if k.endswith("attn")}
    assert attn and all(set(groups) == {"v"} for groups in attn.values())
    pc.apply_plan(model, plan)
    pc.prune(model)
    assert model.blocks[0].attn.qk_dim == 64 and model.blocks[0].attn.v_dim == 32
