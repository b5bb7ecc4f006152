"""Deployment: a pruned model out of the Python process, as ONNX.

``export_onnx`` uses torch's own exporter (``torch.onnx.export(..., dynamo=True)``: the graph
from ``torch.export``, translated by onnxscript) with a dynamic batch axis, so one file serves
batch 1 and batch 64. Pruned models are plain dense modules after ``prune`` (reweights folded,
gates off), so nothing of the method is left in the graph. Needs ``pip install onnx onnxscript``
(the ``deploy`` extra); onnxruntime only to run the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prune_core.macs import default_input_size


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int] | None = None,
    *,
    opset: int | None = None,
) -> Path:
    """Write ``model`` (eval mode, CPU, float32) to ``path`` as ONNX; returns the path.

    Args:
        input_size: (C, H, W) of one image; default :func:`prune_core.default_input_size`.
        opset: ONNX opset version (None: the exporter's default).
    Input ``images`` (batch, C, H, W) with a dynamic batch; output ``logits`` (batch, classes).
    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install flatten-prune[deploy]``).
    """
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ImportError(
                f"export_onnx needs {package}: pip install onnx onnxscript "
                "(or the project's [deploy] extra)"
            ) from None
    size = default_input_size(model) if input_size is None else tuple(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(2, *size, device=next(model.parameters()).device)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
    finally:
        model.train(was_training)
    return path
