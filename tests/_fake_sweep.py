"""A finished sweep's pieces without running one, for the pick and Hugging Face tests: a tiny
``transformers`` ViT folder as ``save_pretrained`` writes it, and pruned trials logged to
MLflow as the driver logs them (child runs with ``plan.json`` + ``weights.pt``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import transformers as tf

import prune_core as pc
from orchestrator.tracking import PARENT_TAG


def save_tiny_hf_vit(path: Path, **processor) -> Path:
    """A random-init ``ViTForImageClassification`` for 8x8 digits (10 labels) and its image
    processor (``processor``: e.g. ``image_mean`` / ``image_std``) saved in ``path``."""
    config = tf.ViTConfig(
        image_size=8,
        patch_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    torch.manual_seed(0)
    tf.ViTForImageClassification(config).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 8, "width": 8}, **processor).save_pretrained(path)
    return path


def log_pruned_trial(
    c,
    exp_id: str,
    parent: str,
    trial: str,
    teacher: torch.nn.Module,
    keep: float,
    top1: float,
    folder: Path,
    size: tuple[int, int, int],
    iterations: int,
    params: dict,
) -> tuple[torch.nn.Module, dict]:
    """``teacher`` magnitude-pruned to ``keep``, saved in ``folder`` and logged as trial
    ``trial``'s child run of ``parent`` (with ``params``); returns the pruned model and its
    row as ``pareto.trials_table`` takes it (a fully trained, complete trial)."""
    model = copy.deepcopy(teacher)
    plan = pc.magnitude_plan(model, keep)
    pc.prune(pc.apply_plan(model, plan))
    pc.save_pruned(model.eval(), plan, folder)
    run_id = c.create_run(exp_id, tags={PARENT_TAG: parent, "trial_id": trial}).info.run_id
    for name, value in params.items():
        c.log_param(run_id, name, value)
    for name in ("plan.json", "weights.pt"):
        c.log_artifact(run_id, str(folder / name))
    c.set_terminated(run_id)
    macs = pc.count_macs(model, size)
    row = {
        "trial_id": trial,
        "status": "COMPLETE",
        "fully_trained": True,
        "top1": top1,
        "macs": macs,
        "macs_ratio": macs / pc.count_macs(teacher, size),
        "params": pc.count_params(model),
        "iterations": iterations,
        "run_id": run_id,
    }
    return model, row
