"""FLatten-Swin: architecture facts of the paper, timm registration, official-checkpoint loading."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import timm
import torch
from helpers import random_masks
from timm.models.swin_transformer import SwinTransformerBlock
from torch.utils.flop_counter import FlopCounterMode

from prune_core import MacModel, count_macs, count_params, prune
from prune_core.attention import SoftmaxAttention
from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.models.flatten_swin import (
    FlattenSwinBlock,
    FlattenSwinTransformer,
    load_flatten_checkpoint,
    shift_mask,
)


def micro(seed: int = 0, **kwargs) -> FlattenSwinTransformer:
    torch.manual_seed(seed)
    return timm.create_model("flatten_swin_micro", **{"num_classes": 10, **kwargs}).eval()


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as the official code saves them: no pruning state, but the
    persistent buffers the official modules register (shift masks, relative position index)."""
    sd = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if ".gates." not in k and "_reweight." not in k
    }
    for name, module in model.named_modules():
        if isinstance(module, FlattenSwinBlock) and module.attn_mask is not None:
            sd[f"{name}.attn_mask"] = module.attn_mask.clone()
        if isinstance(module, SoftmaxAttention):
            sd[f"{name}.relative_position_index"] = module.relative_position_index.clone()
    return sd


@pytest.fixture(scope="module")
def tiny() -> FlattenSwinTransformer:
    torch.manual_seed(0)
    return timm.create_model("flatten_swin_tiny", num_classes=1000).eval()


def test_micro_forward_and_window_clamping() -> None:
    model = micro()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    blocks = [b for layer in model.layers for b in layer.blocks]
    # stage maps 16, 8, 4, 2: the linear window 56 becomes the whole map, unshifted
    assert [(b.window, b.shift) for b in blocks] == [(16, 0), (8, 0), (2, 0), (2, 1), (2, 0)]
    assert isinstance(blocks[0].attn, FocusedLinearAttention)
    assert blocks[0].attn.positional_encoding.shape == (1, 256, 32)
    assert isinstance(blocks[3].attn, SoftmaxAttention)
    assert blocks[3].attn_mask.shape == (4, 4, 4)  # the shifted block is masked
    assert "attn_mask" not in model.state_dict()  # rebuilt, never loaded
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("resolution,window,shift", [((14, 14), 7, 3), ((8, 8), 2, 1)])
def test_shift_mask_equals_timm_swin(resolution, window, shift) -> None:
    ref = SwinTransformerBlock(8, resolution, num_heads=1, window_size=window, shift_size=shift)
    expected = ref.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(shift_mask(resolution, window, shift), expected)


def test_tiny_forward_params_macs_and_official_shapes(tiny) -> None:
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    params = count_params(tiny)  # trained weights only; gates and reweights excluded
    print(f"flatten_swin_tiny params: {params}")
    assert 27e6 <= params <= 31e6  # paper: 29 M
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny(torch.zeros(1, 3, 224, 224))
    macs = counter.get_total_flops() // 2
    print(f"flatten_swin_tiny MACs at 224: {macs}")
    assert abs(macs - 4.5e9) <= 0.1 * 4.5e9  # paper: 4.5 G
    shapes = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert shapes["layers.0.blocks.0.attn.positional_encoding"] == (1, 3136, 96)
    assert shapes["layers.1.blocks.1.attn.positional_encoding"] == (1, 784, 192)
    assert shapes["layers.0.blocks.0.attn.scale"] == (1, 1, 96)
    assert shapes["layers.0.blocks.0.attn.dwc.weight"] == (32, 1, 5, 5)
    assert shapes["layers.2.blocks.1.attn.relative_position_bias_table"] == (169, 12)
    assert shapes["layers.0.downsample.reduction.weight"] == (192, 384)
    assert shapes["layers.2.downsample.norm.weight"] == (1536,)
    assert "layers.3.downsample.norm.weight" not in shapes
    assert shapes["head.weight"] == (1000, 768)
    blocks = [b for layer in tiny.layers for b in layer.blocks]
    # stage 4's 7x7 map is a single window: no shift there, as in the official code
    assert [b.shift for b in blocks] == [0] * 5 + [3, 0, 3, 0, 3, 0, 0]


def test_pretrained_true_points_to_the_loader() -> None:
    with pytest.raises(ValueError, match="load_flatten_checkpoint"):
        timm.create_model("flatten_swin_tiny", pretrained=True)


def test_official_checkpoint_round_trip(tmp_path) -> None:
    source = micro(seed=1)
    with torch.no_grad():  # make the FLatten-only parameters non-trivial
        for name, p in source.named_parameters():
            if name.endswith(("scale", "positional_encoding", "relative_position_bias_table")):
                p.normal_(0, 0.5)
    sd = {f"module.{k}": v for k, v in official_state_dict(source).items()}
    path = tmp_path / "flatten_swin_micro.pth"
    torch.save({"model": sd, "epoch": 299, "max_accuracy": 82.1}, path)
    target = micro(seed=2)
    gates_before = {k: v.clone() for k, v in target.state_dict().items() if ".gates." in k}
    assert load_flatten_checkpoint(target, path) is target
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (target(x) - source(x)).abs().max() <= 1e-6
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in gates_before.items())


@pytest.mark.parametrize("fault", ["missing", "unexpected"])
def test_checkpoint_key_errors_name_the_keys_and_file(tmp_path, fault: str) -> None:
    sd = official_state_dict(micro())
    if fault == "missing":
        del sd["layers.2.blocks.1.attn.relative_position_bias_table"]
        key = "layers.2.blocks.1.attn.relative_position_bias_table"
    else:
        key = "layers.0.blocks.0.attn.extra_table"
        sd[key] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)  # a bare state dict is accepted too
    with pytest.raises(ValueError, match=fault) as err:
        load_flatten_checkpoint(micro(), path)
    assert key in str(err.value) and "bad.pth" in str(err.value)


def test_head_mismatch_needs_drop_head(tmp_path) -> None:
    source = micro(seed=1)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": official_state_dict(source)}, path)
    target = micro(seed=2, num_classes=5)
    with pytest.raises(
        ValueError, match=r"head.weight: checkpoint \(10, 256\) vs model \(5, 256\)"
    ):
        load_flatten_checkpoint(target, path)
    head = target.head.weight.clone()
    load_flatten_checkpoint(target, path, drop_head=True)
    assert torch.equal(target.head.weight, head)
    assert torch.equal(target.norm.weight, source.norm.weight)


@dataclass
class TrainingConfig:  # stands in for the yacs config the official trainer pickles
    lr: float = 1e-3


def test_checkpoint_with_pickled_objects_is_refused_clearly(tmp_path) -> None:
    path = tmp_path / "full.pth"
    torch.save({"model": official_state_dict(micro()), "config": TrainingConfig()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_flatten_checkpoint(micro(), path)


def test_masked_model_prunes_exactly() -> None:
    model = micro()
    random_masks(model, keep=0.5, seed=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = model(x)
    predicted = MacModel(model, (3, 32, 32)).total()
    prune(model)
    with torch.no_grad():
        assert (model(x) - masked).abs().max() <= 1e-4
    assert count_macs(model, (3, 32, 32)) == predicted


@pytest.mark.parametrize(
    "name,params_m,macs_g,embed",
    [("flatten_swin_small", 51, 8.7, 96), ("flatten_swin_base", 89, 15.4, 128)],
)
def test_small_and_base_match_the_paper_and_load_the_official_layout(
    tmp_path, name: str, params_m: float, macs_g: float, embed: int
) -> None:
    """The paper's headline models: parameter and MAC counts as published (FLatten paper,
    Table: S 51 M / 8.7 G, B 89 M / 15.4 G), and a checkpoint in the official layout loads
    strictly into a fresh model and reproduces it."""
    torch.manual_seed(0)
    source = timm.create_model(name).eval()
    assert abs(count_params(source) - params_m * 1e6) <= 0.02 * params_m * 1e6
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        want = source(x)
    assert abs(counter.get_total_flops() // 2 - macs_g * 1e9) <= 0.02 * macs_g * 1e9
    blocks = [len(layer.blocks) for layer in source.layers]
    assert blocks == [2, 2, 18, 2] and source.head.weight.shape == (1000, 8 * embed)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": official_state_dict(source)}, path)
    torch.manual_seed(1)
    target = load_flatten_checkpoint(timm.create_model(name).eval(), path)
    with torch.no_grad():
        assert (target(x) - want).abs().max() <= 1e-5
