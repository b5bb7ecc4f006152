"""The MLflow pyfunc of a pruned model, logged as code (MLflow's "models from code": this file
is copied into the model and run when it is loaded; nothing is pickled).

Artifacts: ``arch`` (model.json: the timm name, num_classes, img_size, kwargs; for a
transformers model ``source: hf`` and ``config``), ``plan`` (plan.json), ``weights``
(weights.pt, read with ``weights_only=True``) and, for a transformers model, ``hf_config``
(its config.json, built with ``from_config``: nothing is downloaded). Loading needs torch,
timm (or transformers) and this project's ``prune_core`` (the model's own layers); the ONNX
model logged beside it needs onnxruntime only. ``predict`` takes a float32 array
(batch, C, H, W) and returns the logits (batch, classes), also of a transformers model (the
``logits`` of its output object).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np


def _architecture(arch: dict, hf_config: dict | None):
    """The unpruned model of ``arch``, random weights (nothing read or downloaded)."""
    if arch.get("source", "timm") == "hf":
        import transformers

        if hf_config is None:
            raise ValueError(
                "build: model.json describes a transformers model: pass hf_config (the "
                f"{arch.get('config', 'config.json')} beside it)"
            )
        config = transformers.AutoConfig.for_model(**hf_config)
        return transformers.AutoModelForImageClassification.from_config(
            config, **arch.get("kwargs", {})
        )
    import timm

    return timm.create_model(
        arch["name"],
        pretrained=False,
        num_classes=arch["num_classes"],
        img_size=arch["img_size"],
        **arch.get("kwargs", {}),
    )


def build(arch: dict, plan, weights, hf_config: dict | None = None):
    """A fresh prunable model of ``arch`` (as ``orchestrator.model.create_model`` builds it,
    without a checkpoint), shrunk to ``plan`` and holding ``weights``, in eval mode.
    ``hf_config``: a transformers model's config (a ``config.json`` mapping), which its
    ``arch`` (``source: hf``) needs. ValueError when it is missing."""
    import prune_core

    model = _architecture(arch, hf_config)
    return prune_core.load_pruned(prune_core.make_prunable(model), plan, weights).eval()


class PrunedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        files = context.artifacts
        arch = json.loads(Path(files["arch"]).read_text())
        hf_config = (
            json.loads(Path(files["hf_config"]).read_text()) if "hf_config" in files else None
        )
        self.model = build(arch, files["plan"], files["weights"], hf_config=hf_config)

    # np.ndarray: a hint MLflow takes without inferring a schema from it (the signature comes
    # from the logged input example), which also silences its "add type hints" warning
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        from prune_core.training import logits_of

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return logits_of(self.model(x)).numpy()


mlflow.models.set_model(PrunedModel())
