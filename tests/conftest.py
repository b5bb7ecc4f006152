"""Shared fixtures: tiny models and the digits data (no download, CPU, seconds)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.data import DataLoader

import prune_core
from prune_core.digits import digits_datasets

torch.set_num_threads(2)


def tiny_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    """flatten_vit_micro shrunk further: one linear and one softmax block, 8x8 input."""
    torch.manual_seed(seed)
    cfg = {
        "num_classes": 10,
        "img_size": 8,
        "patch_size": 2,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
    }
    cfg.update(kwargs)
    return timm.create_model("flatten_vit_micro", **cfg)


def random_masks(model: torch.nn.Module, keep: float = 0.5, seed: int = 0) -> None:
    """Hard masks with the same count per head at random positions (aligned where needed)."""
    g = torch.Generator().manual_seed(seed)
    for module in prune_core.gated_modules(model).values():
        for gate in module.gates.values():
            k = max(1, round(keep * gate.channels))
            mask = torch.zeros(gate.num_heads, gate.channels)
            rows = [torch.randperm(gate.channels, generator=g)[:k] for _ in range(gate.num_heads)]
            for h in range(gate.num_heads):
                mask[h, rows[0] if gate.aligned else rows[h]] = 1.0
            gate.set_hard(mask)


@pytest.fixture(scope="session")
def digits8():
    train_ds, test_ds = digits_datasets(img_size=8, seed=0)
    return (
        DataLoader(train_ds, batch_size=64, shuffle=True, drop_last=True),
        DataLoader(test_ds, batch_size=256),
    )
