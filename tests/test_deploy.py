"""A pruned model leaves the Python process: ONNX export, run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

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
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_export_of_a_pruned_model_matches_pytorch(family, tmp_path) -> None:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = pc.make_prunable(timm.create_model(name, **kwargs), verbose=False).eval()
    pc.apply_plan(model, pc.magnitude_plan(model, 0.5))
    pc.prune(model)
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
