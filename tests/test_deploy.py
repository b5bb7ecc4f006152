"""A pruned model leaves the Python process: ONNX export, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from helpers import off_init

import prune_core as pc

FAMILIES = {
    "flatten_vit": ("flatten_vit_micro", {"img_size": 28, "in_chans": 1, "patch_size": 7}),
    "flatten_swin": (
        "flatten_swin_tiny",
        {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1), "num_classes": 10},
    ),
    "timm_vit": ("deit_tiny_patch16_224", {"img_size": 32, "depth": 2, "num_classes": 10}),
    "timm_swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1), "num_classes": 10},
    ),
    "timm_vit_qk_norm": (
        "vit_small_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "qk_norm": True, "num_classes": 10},
    ),
    "timm_beitv2": (
        "beitv2_base_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 96, "num_heads": 4},
    ),
    "timm_swinv2": (
        "swinv2_tiny_window8_256",
        {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": (1, 1), "num_heads": (2, 4)},
    ),
    "timm_eva02": ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 2, "num_classes": 10}),
}


def pruned(family: str) -> torch.nn.Module:
    """The family's model, off its init (zero-initialised tables would hide an error), at half
    of every group's channels by magnitude, pruned."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    off_init(model)
    model = pc.make_prunable(model, verbose=False)
    pc.apply_plan(model, pc.magnitude_plan(model, 0.5))
    return pc.prune(model)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_export_of_a_pruned_model_matches_pytorch(family, tmp_path) -> None:
    model = pruned(family)
    size = pc.default_input_size(model)
    path = pc.export_onnx(model, tmp_path / "pruned.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, *size)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4


def test_trace_and_torch_export_match_eager_and_script_says_what_works() -> None:
    """torch.jit.trace and torch.export take a pruned model; torch.jit.script (in maintenance
    in PyTorch) is refused with one message naming the ways that work."""
    model = pruned("timm_vit")
    x, other = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert (traced(other) - model(other)).abs().max().item() <= 1e-5
        exported = torch.export.export(model, (x,)).module()
        assert (exported(x) - model(x)).abs().max().item() <= 1e-5
    with pytest.raises(RuntimeError, match="torch.jit.script does not support prune_core"):
        torch.jit.script(model)


def test_onnx_opset_is_honoured_or_refused_with_one_line(tmp_path) -> None:
    """The exporter wrote opset 18 for 13 or 17 and returned normally; now the file holds the
    opset asked for, or a ValueError names it and the supported range, and no file is left."""
    import onnx

    model = pruned("timm_vit")
    path = pc.export_onnx(model, tmp_path / "o20.onnx", opset=20)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [20]
    for opset in (13, 17, onnx.defs.onnx_opset_version() + 1):
        with pytest.raises(ValueError, match=f"opset {opset} is not supported: from 18"):
            pc.export_onnx(model, tmp_path / f"o{opset}.onnx", opset=opset)
    # only the one export (and the weights file its graph may name), nothing half-written
    assert {p.name for p in tmp_path.iterdir()} <= {"o20.onnx", "o20.onnx.data"}


def test_onnx_export_at_a_size_the_model_was_not_built_for_is_one_line(tmp_path) -> None:
    model = pruned("timm_vit")  # 32 px
    with pytest.raises(ValueError, match=r"does not take input_size \(3, 48, 48\)") as info:
        pc.export_onnx(model, tmp_path / "m.onnx", input_size=(3, 48, 48))
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())
