"""Default training transforms never raise, with the installed Pillow.

Pillow ≥ 12 refuses to posterize to 0 bits, which timm's RandAugment asks for about 14 times in
10,000 under the default ``rand-m9-mstd0.5-inc1``: an ImageNet epoch always died. Each data
kind's default training pipeline runs 20,000 times here on random images (at that rate the old
code fails with probability 1 − e⁻²⁸), and every timm op runs at every magnitude.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment

from orchestrator import augment
from orchestrator.config import parse_config
from orchestrator.data import build_datasets, transforms
from orchestrator.schema import DataConfig
from prune_core.digits import DigitsDataset
from prune_core.fashion_mnist import FashionMnistDataset, fashion_mnist_datasets

DRAWS = 20_000
MODES = ("RGB", "L", "RGBA", "P", "I;16", "LA")  # what a folder or a Parquet export may hold


def _random_image(rng: np.random.Generator, mode: str) -> Image.Image:
    h, w = rng.integers(12, 48, size=2)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))  # I;16
    bands = {"RGB": 3, "RGBA": 4, "LA": 2}.get(mode, 1)
    pixels = rng.integers(0, 256, (h, w, bands) if bands > 1 else (h, w), dtype=np.uint8)
    image = Image.fromarray(pixels)  # the mode follows the bands: L, LA, RGB, RGBA
    image = image.convert("P") if mode == "P" else image
    assert image.mode == mode
    return image


def _experiment(kind: str, **data):
    return parse_config(
        {
            "name": "t",
            "model": {"name": "flatten_vit_micro", "num_classes": 2, "img_size": 16},
            "data": {"kind": kind, "calib_images": 2, **data},
            "teacher": {"epochs": 1},
            "search": {"target": 0.5},
            "finetune": {"epochs": 1},
        },
        "x.yaml",
    )


def _draw(dataset, count: int) -> int:
    """Index ``dataset`` ``count`` times at random; the number of draws that raised."""
    rng = random.Random(0)
    errors = 0
    for _ in range(count):
        try:
            dataset[rng.randrange(len(dataset))]
        except Exception:  # noqa: BLE001 - counting every kind of failure is the point
            errors += 1
    return errors


def test_the_default_policy_is_the_one_that_reaches_posterize_zero_bits():
    # the test below is only worth something while the default can ask for 0 bits
    assert DataConfig.model_fields["auto_augment"].default == "rand-m9-mstd0.5-inc1"


def test_posterize_matches_pillow_and_keeps_no_bits_as_black():
    image = _random_image(np.random.default_rng(0), "RGB")
    for bits in range(1, 9):
        assert np.array_equal(
            np.asarray(augment.posterize(image, bits)), np.asarray(ImageOps.posterize(image, bits))
        )
    black = augment.posterize(image, 0)
    assert black.mode == image.mode and black.size == image.size
    assert np.asarray(black).max() == 0  # Pillow < 12: 0 most significant bits kept


@pytest.mark.parametrize(
    "policy", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "original", "v0", "augmix-m5-w4-d2"]
)
def test_every_op_of_a_policy_is_total_at_every_magnitude(policy):
    """Each op timm's policies use, on RGB (what the pipelines feed), at magnitudes 0..10."""
    transform = augment.training_transform((3, 16, 16), auto_augment=policy)
    ops = augment._augment_ops(transform)
    assert ops and not [op.name for op in ops if op.aug_fn is auto_augment.posterize]
    image = _random_image(np.random.default_rng(1), "RGB")
    for op in ops:
        for magnitude in np.linspace(0, 10, 21):
            op.prob, op.magnitude, op.magnitude_std = 1.0, float(magnitude), 0
            op(image)


def test_imagefolder_default_training_transform_never_raises(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i, mode in enumerate(MODES):
                _random_image(rng, mode).save(folder / f"{c}_{i}.png")
    exp = _experiment("imagefolder", train=str(tmp_path / "train"), val=str(tmp_path / "val"))
    train = build_datasets(exp).train
    assert _draw(train, DRAWS) == 0


def test_parquet_default_training_transform_never_raises(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        images = []
        for i in range(48):
            buf = io.BytesIO()
            _random_image(rng, MODES[i % len(MODES)]).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        (tmp_path / split).mkdir()
        table = pa.table({"image": images, "label": pa.array([i % 2 for i in range(48)])})
        pq.write_table(table, tmp_path / split / "part-0.parquet", row_group_size=16)
    exp = _experiment("parquet", train=str(tmp_path / "train"), val=str(tmp_path / "val"))
    train = build_datasets(exp).train
    assert train.transform is not None
    errors, seen = 0, 0
    while seen < DRAWS:  # the stream as training reads it: decode, then the transform
        for unit in train.units:
            for row in train._read(unit):
                try:
                    train._sample(row)
                except Exception:  # noqa: BLE001
                    errors += 1
                seen += 1
    assert errors == 0


def test_the_same_training_transform_serves_imagefolder_and_parquet():
    exp = _experiment("parquet", train=".", val=".")
    assert repr(transforms(exp, training=True)) == repr(
        augment.training_transform(
            exp.input_size,
            scale=(exp.data.crop_scale_min, 1.0),
            hflip=exp.data.hflip,
            auto_augment=exp.data.auto_augment,
            interpolation=exp.data.interpolation,
            re_prob=exp.data.re_prob,
        )
    )


def test_digits_and_fashion_mnist_default_augmentation_never_raises():
    torch.manual_seed(0)
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    assert _draw(DigitsDataset(images, labels, augment=True), DRAWS) == 0
    images = torch.rand(64, 1, 28, 28)
    assert _draw(FashionMnistDataset(images, labels, augment=True), DRAWS) == 0
    # and the real training split as a sweep builds it (fails when the data is not installed)
    train, _ = fashion_mnist_datasets(28, train_subset=64, seed=0)
    assert train.augment and _draw(train, DRAWS) == 0
