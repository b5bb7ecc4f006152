"""Shared fixtures: tiny models and the digits data (no download, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from prune_core.digits import digits_datasets

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits8():
    train_ds, test_ds = digits_datasets(img_size=8, seed=0)
    return (
        DataLoader(train_ds, batch_size=64, shuffle=True, drop_last=True),
        DataLoader(test_ds, batch_size=256),
    )
