"""The model of a sweep, built the same way wherever it is needed: the teacher's task, every
trial's student, the data-parallel fine-tune workers and the front's timing (``speed.py``).

A timm model (``timm.create_model``; weights from ``teacher.checkpoint`` or
``model.checkpoint``, strictly) or a transformers classifier (``model.source: hf``,
``hf_model.py``), always made prunable (``prune_core.make_prunable``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import load_checkpoint
from torch import nn

import prune_core
from orchestrator import hf_model
from orchestrator.schema import Experiment
from prune_core.models.flatten_swin import load_flatten_checkpoint


def create_model(config: Experiment, *, load_checkpoint: bool = True) -> nn.Module:
    """The model of the config, made prunable: a timm model with weights from the model's
    checkpoint, or (``model.source: hf``) a transformers classifier, pretrained from
    ``model.name`` when ``load_checkpoint`` (else its architecture alone)."""

    m = config.model
    if m.source == "hf":
        model = hf_model.create(m.name, m.kwargs, pretrained=load_checkpoint)
        return prune_core.make_prunable(model)
    model = timm.create_model(
        m.name, pretrained=False, num_classes=m.num_classes, img_size=m.img_size, **m.kwargs
    )
    path = config.teacher.checkpoint or m.checkpoint
    if load_checkpoint and path is not None:
        _load_weights(model, Path(path))
    return prune_core.make_prunable(model)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Strict loading: a silently partial load would prune a half-random model."""
    if type(model).__module__.startswith("prune_core"):  # FLatten models: official keys
        load_flatten_checkpoint(model, path)
        return

    load_checkpoint(model, str(path), strict=True, weights_only=True)


def load_teacher(config: Experiment, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh prunable model holding the teacher's weights (no checkpoint file read)."""
    model = create_model(config, load_checkpoint=False)
    model.load_state_dict(state, strict=True)
    return model
