"""The MLflow pyfunc of a pruned model, logged as code (MLflow's "models from code": this file
is copied into the model and run when it is loaded; nothing is pickled).

Artifacts: ``arch`` (model.json: the timm name, num_classes, img_size, kwargs), ``plan``
(plan.json) and ``weights`` (weights.pt, read with ``weights_only=True``). Loading needs torch,
timm and this project's ``prune_core`` (the model's own layers); the ONNX model logged beside it
needs onnxruntime only. ``predict`` takes a float32 array (batch, C, H, W) and returns the logits
(batch, classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np


def build(arch: dict, plan, weights):
    """A fresh prunable model of ``arch`` (as ``orchestrator.model.create_model`` builds it,
    without a checkpoint), shrunk to ``plan`` and holding ``weights``, in eval mode."""
    import timm

    import prune_core

    model = timm.create_model(
        arch["name"],
        pretrained=False,
        num_classes=arch["num_classes"],
        img_size=arch["img_size"],
        **arch.get("kwargs", {}),
    )
    return prune_core.load_pruned(prune_core.make_prunable(model), plan, weights).eval()


class PrunedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        arch = json.loads(Path(context.artifacts["arch"]).read_text())
        self.model = build(arch, context.artifacts["plan"], context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(x).numpy()


mlflow.models.set_model(PrunedModel())
