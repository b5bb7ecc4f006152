"""Hugging Face ``transformers`` vision models under the timm families' contract: ViT, DeiT,
Swin, Swin V2, DINOv2 (MLP and SwiGLU, with registers), BEiT (own and shared relative
position bias, layer scale), each as ``*Model`` and ``*ForImageClassification``, eager and SDPA;
and the older ``self`` / ``output`` attention code: Data2Vec-Vision (BEiT's: own and shared
bias), Donut-Swin and MaskFormer-Swin (Swin's).

Contract: converted outputs equal the original (<= 1e-5) and are the model's own output
object; masks bite; masked == pruned (<= 1e-4); count_macs equals torch's counter (original
model, and the pruned one against the MAC model's prediction); load_pruned on a model built
from the same config gives the pruned outputs back. Small random-init configs: no download.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from helpers import make_prunable_checked, off_init, search_and_prune
from torch import nn

import prune_core as pc
from prune_core.convert import supported_modules
from prune_core.macs import counting

VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2}
VIT = {**VIT, "num_attention_heads": 4, "intermediate_size": 64, "num_labels": 5}
SWIN = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [2, 2]}
SWIN = {**SWIN, "num_heads": [2, 4], "window_size": 4, "num_labels": 5}
DINO = {k: v for k, v in VIT.items() if k != "intermediate_size"}
DINO = {**DINO, "mlp_ratio": 2, "layerscale_value": 0.5}
BEIT = {**VIT, "use_relative_position_bias": True, "layer_scale_init_value": 0.1}
# the one bias table the model shares across layers instead of each layer's own
BEIT_SHARED_BIAS = {
    **BEIT,
    "use_relative_position_bias": False,
    "use_shared_relative_position_bias": True,
}
# kinds make_prunable converts, per kind the modules of the 2-layer models
ATTN_MLP = {"hf_attention": 2, "hf_mlp": 2}
ATTN_GLU = {"hf_attention": 2, "hf_glu_mlp": 2}
LEGACY_BEIT = {"hf_beit_legacy": 2, "hf_split_mlp": 2}
# name: (config class, its kwargs, kinds converted, attention layers keeping q/k whole); the
# model classes are the config's name without "Config": tf.BeitConfig -> tf.BeitModel, ...
CASES = {
    "vit": (tf.ViTConfig, VIT, ATTN_MLP, 0),
    "deit": (tf.DeiTConfig, VIT, ATTN_MLP, 0),
    "swin": (tf.SwinConfig, SWIN, {"hf_swin": 4, "hf_mlp": 4}, 0),
    "swinv2": (tf.Swinv2Config, SWIN, {"hf_swin_v2": 4, "hf_split_mlp": 4}, 4),
    "dinov2": (tf.Dinov2Config, DINO, ATTN_MLP, 0),
    "dinov2_swiglu": (tf.Dinov2Config, {**DINO, "use_swiglu_ffn": True}, ATTN_GLU, 0),
    "dinov2_registers": (
        tf.Dinov2WithRegistersConfig,
        {**DINO, "num_register_tokens": 4},
        ATTN_MLP,
        0,
    ),
    "beit": (tf.BeitConfig, BEIT, ATTN_MLP, 0),
    "beit_shared_bias": (tf.BeitConfig, BEIT_SHARED_BIAS, ATTN_MLP, 0),
    # the older self / output attention code, the same computation as BEiT's and Swin's
    "data2vec": (tf.Data2VecVisionConfig, BEIT, LEGACY_BEIT, 0),
    "data2vec_shared_bias": (tf.Data2VecVisionConfig, BEIT_SHARED_BIAS, LEGACY_BEIT, 0),
    "donut_swin": (tf.DonutSwinConfig, SWIN, {"hf_swin_legacy": 4, "hf_split_mlp": 4}, 0),
}
EAGER_ONLY = ("swinv2", "donut_swin")  # transformers has only their eager attention
HEADS = ("Model", "ForImageClassification")


def build(case: str, head: str = "ForImageClassification", attn: str | None = None) -> nn.Module:
    """A small model with every parameter moved off its init: zero-initialised tables, layer
    scales and biases would otherwise make a wrong conversion look exact."""
    config_class, kwargs, _, _ = CASES[case]
    prefix = config_class.__name__.removesuffix("Config")
    config = config_class(**kwargs, **({"attn_implementation": attn} if attn else {}))
    torch.manual_seed(0)
    model = getattr(tf, f"{prefix}{head}")(config).eval()
    return off_init(model)


def first(output) -> torch.Tensor:
    """The output object's first tensor (logits, or the base model's last hidden state)."""
    return output[0]


def torch_macs(model: nn.Module, size: tuple[int, int, int]) -> int:
    with counting(model) as counter:
        model(torch.zeros(1, *size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("case", list(CASES))
def test_family_keeps_the_contract(case: str, head: str) -> None:
    _, _, kinds, whole = CASES[case]
    model = build(case, head)
    size = pc.default_input_size(model)
    assert size == (3, 32, 32)
    x = torch.randn(2, *size)
    with torch.no_grad():
        original = model(x)
    full_macs = torch_macs(model, size)
    model = make_prunable_checked(model, kinds, whole)
    assert pc.count_macs(model, size) == full_macs
    with torch.no_grad():
        out = model(x)
    assert type(out) is type(original)  # the model's own output object
    assert (first(out) - first(original)).abs().max().item() <= 1e-5

    plan = pc.random_plan(model, 0.5)  # half of every head, random
    pc.apply_plan(model, plan)
    macs = pc.MacModel(model, size)
    predicted = macs.total(macs.current_widths())
    with torch.no_grad():
        masked = first(model(x))
        assert (masked - first(original)).abs().max().item() > 1e-2  # the gates bite
        pc.prune(model)
        pruned = first(model(x))
        assert (pruned - masked).abs().max().item() <= 1e-4
    assert pc.count_macs(model, size) == predicted == torch_macs(model, size)
    assert predicted < 0.8 * full_macs
    for module in pc.prunable_modules(model).values():
        if isinstance(module, pc.SoftmaxAttention):  # equal widths: one qk_dim, one v_dim
            rows = module.num_heads * (2 * module.qk_dim + module.v_dim)
            assert module.qkv.weight.shape[0] == rows


@pytest.mark.parametrize("case", list(CASES))
def test_eager_and_sdpa_models_convert_to_the_same_function(case: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    for attn in ("eager", "sdpa"):
        if case in EAGER_ONLY and attn == "sdpa":
            continue
        model = build(case, attn=attn)
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            original = model(x).logits
            model = pc.make_prunable(model, verbose=False)
            assert (model(x).logits - original).abs().max().item() <= 1e-5, attn


def test_load_pruned_restores_widths_on_a_model_built_from_the_same_config(tmp_path) -> None:
    """save_pretrained cannot express per-layer widths: save_pruned + a from_pretrained base."""
    model = pc.make_prunable(build("beit"), verbose=False)
    plan = pc.magnitude_plan(model, {"qk": 0.5, "v": 0.75, "mlp": 0.25})
    pc.apply_plan(model, plan)
    pc.prune(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x).logits
    pc.save_pruned(model, plan, tmp_path / "pruned")
    model.config.save_pretrained(tmp_path / "base")
    config = tf.AutoConfig.from_pretrained(tmp_path / "base")
    fresh = pc.make_prunable(tf.AutoModelForImageClassification.from_config(config), verbose=False)
    pc.load_pruned(fresh, tmp_path / "pruned" / "plan.json", tmp_path / "pruned" / "weights.pt")
    attn = fresh.beit.layers[0].attention
    assert (attn.qk_dim, attn.v_dim, fresh.beit.layers[0].mlp.hidden_features) == (4, 6, 16)
    with torch.no_grad():
        assert (fresh.eval()(x).logits - want).abs().max().item() == 0.0


@pytest.mark.parametrize("case", ["beit", "swinv2", "dinov2_swiglu"])
def test_search_plan_meets_the_target_with_the_pretrained_model_as_teacher(case: str) -> None:
    """The whole method on an HF model: logits from its output object, teacher included."""
    teacher = build(case)
    model = pc.make_prunable(build(case), verbose=False)
    _, loader = search_and_prune(model, teacher, (3, 32, 32))
    assert 0.0 <= pc.accuracy(model, loader) <= 100.0


def test_a_base_model_in_search_says_it_needs_a_classifier() -> None:
    model = pc.make_prunable(build("vit", "Model"), verbose=False)
    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="BaseModelOutputWithPooling.*ForImageClassification"):
        pc.accuracy(model, loader)


@pytest.mark.parametrize(
    "name, config",
    [
        ("ViTMSNForImageClassification", tf.ViTMSNConfig(**VIT)),
        ("IJepaForImageClassification", tf.IJepaConfig(**VIT)),
        ("ViTMAEModel", tf.ViTMAEConfig(**VIT, mask_ratio=0.0)),
    ],
)
def test_models_reusing_the_attention_code_convert_exactly(name: str, config) -> None:
    """Models the tests do not name, built from copies of ViT's attention and MLP."""
    torch.manual_seed(0)
    model = getattr(tf, name)(config).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)  # ViT-MAE draws its (here empty) masking noise
        original = first(model(x))
        model = pc.make_prunable(model, verbose=False)
        torch.manual_seed(1)
        assert (first(model(x)) - original).abs().max().item() <= 1e-5
    assert set(supported_modules(model)) == set()
    assert len(pc.prunable_modules(model)) == 4


def test_maskformer_swin_converts_exactly_and_keeps_the_contract() -> None:
    """MaskFormer-Swin (a backbone only: no *ForImageClassification) keeps Swin's older code."""
    torch.manual_seed(0)
    model = tf.MaskFormerSwinModel(tf.MaskFormerSwinConfig(**SWIN)).eval()
    off_init(model)
    x, size = torch.randn(2, 3, 32, 32), (3, 32, 32)
    with torch.no_grad():
        original = first(model(x))
    full_macs = torch_macs(model, size)
    assert list(supported_modules(model).values()).count("hf_swin_legacy") == 4
    model = pc.make_prunable(model, verbose=False)
    assert pc.count_macs(model, size) == full_macs
    with torch.no_grad():
        assert (first(model(x)) - original).abs().max().item() <= 1e-5
        pc.apply_plan(model, pc.random_plan(model, 0.5))
        masked = first(model(x))
        pc.prune(model)
        assert (first(model(x)) - masked).abs().max().item() <= 1e-4
    assert pc.count_macs(model, size) == torch_macs(model, size) < 0.8 * full_macs


def test_an_unsupported_transformers_model_is_refused_in_one_line_naming_the_class() -> None:
    """PVT v2's spatial-reduction attention is no supported family's: one line says so."""
    config = tf.PvtV2Config(
        hidden_sizes=[16, 32, 32, 32], depths=[1] * 4, num_attention_heads=[1, 2, 2, 2]
    )
    model = tf.PvtV2ForImageClassification(config)
    with pytest.raises(ValueError) as err:
        pc.make_prunable(model)
    message = str(err.value)
    assert "\n" not in message
    assert "PvtV2SelfAttention" in message
    assert "ViT, DeiT, DINOv2 (and with registers), BEiT, Swin and Swin V2" in message
    assert "Data2Vec-Vision, Donut-Swin and MaskFormer-Swin" in message


@pytest.mark.parametrize(
    "case", ["vit", "deit", "swin", "swinv2", "dinov2_registers", "beit", "data2vec", "donut_swin"]
)
def test_attention_weights_are_the_original_models(case: str) -> None:
    """output_attentions=True: the probabilities (B, heads, N, N) of every layer, as the
    original eager model returns them (Swin: the last block of each stage, per window), and
    still probabilities (rows summing to 1) after pruning."""
    model = build(case, attn="eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x, output_attentions=True).attentions
        model = pc.make_prunable(model, verbose=False)
        got = model(x, output_attentions=True).attentions
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and (g - w).abs().max().item() <= 1e-5
    windows = case in ("swin", "swinv2", "donut_swin")
    heads = [2, 4] if windows else [4, 4]
    # a 4x4 window; 16 patches + the class token (+ DeiT's distillation token, + 4 registers)
    tokens = 16 if windows else {"deit": 18, "dinov2_registers": 21}.get(case, 17)
    for w, h in zip(want, heads, strict=True):
        assert w.shape[1:] == (h, tokens, tokens)
    pc.prune(pc.apply_plan(model, pc.magnitude_plan(model, 0.5)))
    with torch.no_grad():
        out = model(x, output_attentions=True)
    for g, w in zip(out.attentions, want, strict=True):
        assert g.shape == w.shape
        assert (g.sum(-1) - 1).abs().max().item() <= 1e-5
    assert len(model(x, output_hidden_states=True).hidden_states) >= 3  # still recorded


@pytest.mark.parametrize(
    "case", ["vit", "deit", "swin", "swinv2", "dinov2_registers", "beit", "data2vec", "donut_swin"]
)
def test_onnx_export_of_a_pruned_model_matches_pytorch(case: str, tmp_path) -> None:
    import onnxruntime as ort

    model = pc.make_prunable(build(case), verbose=False)
    pc.apply_plan(model, pc.magnitude_plan(model, 0.5))
    pc.prune(model)
    path = pc.export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x).logits.numpy()
    assert abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("backbone", ["donut_swin", "maskformer_swin"])
def test_onnx_export_of_a_pruned_backbone_has_one_output_per_tensor_field(
    backbone: str, tmp_path
) -> None:
    """A base model's output object as ONNX outputs named by field; MaskFormer-Swin's also
    carries plain ints (its stages' sizes), which the graph leaves out (torch.export cannot
    return them)."""
    import onnxruntime as ort

    if backbone == "maskformer_swin":
        model = off_init(tf.MaskFormerSwinModel(tf.MaskFormerSwinConfig(**SWIN)).eval())
    else:
        model = build(backbone, head="Model")
    model = pc.make_prunable(model, verbose=False)
    pc.prune(pc.apply_plan(model, pc.magnitude_plan(model, 0.5)))
    session = ort.InferenceSession(str(pc.export_onnx(model, tmp_path / "model.onnx")))
    names = [o.name for o in session.get_outputs()]
    assert names == ["last_hidden_state", "pooler_output"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    for name, got in zip(names, session.run(None, {"images": x.numpy()}), strict=True):
        assert abs(got - want[name].numpy()).max() <= 1e-4
