"""What every digits benchmark shares: data, one cached teacher per seed, the machine line.

The teacher is the expensive, method-independent part: it is trained once per (seed, epochs,
image size) and cached under ``benchmarks/.cache`` (git-ignored), so every method is compared
against, and distilled from, the very same unpruned model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

import prune_core as pc

CACHE = Path(__file__).resolve().parent / ".cache"
MODEL = "flatten_vit_micro"


@dataclass
class Digits:
    train: DataLoader
    test: DataLoader
    calib: torch.Tensor  # first 128 training images, fixed: initialisation and similarity
    input_size: tuple[int, int, int]


def digits(img_size: int, seed: int) -> Digits:
    """The demo's data: a stratified split fixed by the seed, batch 64, calibration batch 128."""
    train_ds, test_ds = pc.digits_datasets(img_size, seed=seed)
    train = DataLoader(train_ds, batch_size=64, shuffle=True, drop_last=True)
    test = DataLoader(test_ds, batch_size=256)
    calib = next(iter(DataLoader(train_ds, batch_size=128, shuffle=False)))[0]
    return Digits(train, test, calib, (3, img_size, img_size))


def new_model(img_size: int) -> nn.Module:
    return timm.create_model(MODEL, num_classes=10, img_size=img_size)


def teacher(
    data: Digits,
    seed: int,
    epochs: int,
    lr: float = 2e-3,
    *,
    cache: Path = CACHE,
    progress: bool = True,
) -> tuple[nn.Module, float]:
    """The unpruned model for ``seed``, trained once (demo recipe) and cached; and its top-1."""
    img = data.input_size[-1]
    path = cache / f"teacher_{MODEL}_img{img}_e{epochs}_lr{lr:g}_s{seed}.pt"
    model = new_model(img)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        torch.manual_seed(seed)
        model = new_model(img)  # same init as the demo: seeded right before creation
        pc.train(
            model, data.train, pc.TrainConfig(epochs=epochs, lr=lr, seed=seed), progress=progress
        )
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    model.eval()
    return model, pc.accuracy(model, data.test, "cpu")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming what a number was measured on (for RESULTS.md)."""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"timm {timm.__version__}, Python {platform.python_version()}, "
        f"{_dt.date.today().isoformat()}"
    )


def positive_threads(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError
    return n


def parse_shard(parser: argparse.ArgumentParser, value: str) -> tuple[int, int]:
    """``--shard i/n`` -> (i, n) with 0 <= i < n; a parser error (exit 2) otherwise."""
    try:
        i, n = (int(v) for v in value.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be i/n with 0 <= i < n, got {value!r}")
    return i, n
