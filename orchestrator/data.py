"""Datasets for a sweep: digits, Fashion-MNIST, an ImageFolder tree, or Parquet shards.

Digits ships with scikit-learn, so the embedded sweep and the tests run on real images with no
download; Fashion-MNIST (``prune_core.fashion_mnist``: 28×28 clothing, from the Debian package
``dataset-fashion-mnist`` or ``$FASHION_MNIST_DIR``) is the laptop-sized step up: harder, still
minutes per trial. ImageFolder and Parquet (a column of encoded image bytes, or of ``{bytes,
path}`` structs, plus an integer label: the layout of the common Parquet exports of ImageNet)
get timm's usual train/eval transforms. Images are read as 8-bit RGB by
:mod:`~orchestrator.image_decode`; Parquet is streamed by :mod:`~orchestrator.parquet_images`.

``python -m orchestrator.data export-digits OUT`` writes digits as Parquet shards (PNG bytes),
so the Parquet path can be exercised on real images anywhere.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from timm.data import create_transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from orchestrator import hf_model
from orchestrator._atomic import atomic_write
from orchestrator.augment import training_transform
from orchestrator.image_decode import load_image
from orchestrator.parquet_images import ParquetImages
from orchestrator.schema import Experiment, resolve_split
from prune_core.digits import DigitsDataset, digits_datasets
from prune_core.fashion_mnist import FashionMnistDataset, fashion_mnist_datasets


@dataclass
class Datasets:
    train: Dataset
    val: Dataset
    calib: Tensor  # un-augmented training images for the indicator initialisation


# ----------------------------------------------------------------------------- transforms
def transforms(config: Experiment, training: bool):
    """timm's standard transforms at the model's input size (ImageNet mean/std; a
    ``model.source: hf`` model's own, from its image processor config, whose size
    ``preflight`` checks is ``model.img_size``); the training one through
    ``augment.training_transform``, which no image makes raise."""

    d = config.data
    size = config.input_size
    norm = {}
    if config.model.source == "hf":
        prep = hf_model.preprocessing(config.model.name)
        norm = {"mean": prep.mean, "std": prep.std}
    if training:
        return training_transform(
            size,
            scale=(d.crop_scale_min, 1.0),
            hflip=d.hflip,
            auto_augment=d.auto_augment,
            interpolation=d.interpolation,
            re_prob=d.re_prob,
            **norm,
        )
    return create_transform(
        size, is_training=False, crop_pct=d.crop_pct, interpolation=d.interpolation, **norm
    )


def unknown_classes(split_dir: str | Path, classes: list[str]) -> list[str]:
    """Class folders of ``split_dir`` that are not in ``classes`` (the training split's)."""
    return sorted(set(find_classes(str(split_dir))[0]) - set(classes))


class SplitFolder(ImageFolder):
    """An ImageFolder split labelled with the *training* split's class list.

    torchvision numbers each tree's own sorted folders, so a val split lacking class ``b`` of
    {a, b, c} would score its ``c`` images as ``b`` without a word. Here the indices come from
    ``classes``: a class missing from this split is fine (it has no images), a class the
    training split lacks is a ValueError (the model has no output for it).
    """

    def __init__(self, root: str | Path, classes: list[str], **kwargs) -> None:
        self.train_classes = list(classes)
        extra = unknown_classes(root, self.train_classes)
        if extra:
            raise ValueError(
                f"{root}: class folder(s) {', '.join(map(repr, extra))} not in the training "
                f"split ({len(self.train_classes)} classes)"
            )
        super().__init__(str(root), allow_empty=True, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self.train_classes, {c: i for i, c in enumerate(self.train_classes)}


# ----------------------------------------------------------------------------- building
def _calibration(dataset: Dataset, count: int, seed: int) -> Tensor:
    """``count`` images from a (non-augmented) view of the training split, fixed by the seed."""
    if isinstance(dataset, IterableDataset):
        images = []
        for image, _ in dataset:
            images.append(image)
            if len(images) == count:
                break
        return torch.stack(images)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    return torch.stack([dataset[i][0] for i in idx])


def build_datasets(config: Experiment, *, distributed: bool = False) -> Datasets:
    """Train/val datasets and the calibration batch that every trial of a sweep shares."""
    d = config.data
    if d.kind == "digits":
        train, val = digits_datasets(
            config.model.img_size, seed=config.seed, test_fraction=d.test_fraction
        )
        plain = DigitsDataset(train.images, train.labels, augment=False)
        return Datasets(train, val, _calibration(plain, d.calib_images, config.seed))
    if d.kind == "fashion_mnist":
        train, val = fashion_mnist_datasets(
            config.model.img_size,
            in_chans=config.input_size[0],
            train_subset=d.train_subset,
            seed=config.seed,
            root=d.root,
        )
        plain = FashionMnistDataset(train.images, train.labels, augment=False)
        return Datasets(train, val, _calibration(plain, d.calib_images, config.seed))
    train_tf, eval_tf = transforms(config, training=True), transforms(config, training=False)
    if d.kind == "imagefolder":
        train_dir, val_dir = resolve_split(d, "train")[0], resolve_split(d, "val")[0]
        loader = partial(load_image, background=tuple(d.alpha_background))
        train = ImageFolder(str(train_dir), transform=train_tf, loader=loader)
        val = SplitFolder(val_dir, train.classes, transform=eval_tf, loader=loader)
        calib = _calibration(
            ImageFolder(str(train_dir), transform=eval_tf, loader=loader),
            d.calib_images,
            config.seed,
        )
        return Datasets(train, val, calib)
    train_files, val_files = resolve_split(d, "train"), resolve_split(d, "val")
    common = {
        "image_column": d.image_column,
        "label_column": d.label_column,
        "background": tuple(d.alpha_background),
    }
    train = ParquetImages(
        train_files,
        transform=train_tf,
        shuffle=True,
        seed=config.seed,
        buffer=d.shuffle_buffer,
        equal_split=distributed,
        **common,
    )
    val = ParquetImages(val_files, transform=eval_tf, shuffle=False, equal_split=False, **common)
    calib_view = ParquetImages(
        train_files, transform=eval_tf, shuffle=False, equal_split=False, **common
    )
    return Datasets(train, val, _calibration(calib_view, d.calib_images, config.seed))


def loaders(config: Experiment, datasets: Datasets):
    """(train, eval) DataLoaders with the config's batch sizes."""

    d = config.data
    shuffle = not isinstance(datasets.train, IterableDataset)
    train = DataLoader(
        datasets.train,
        batch_size=d.batch_size,
        shuffle=shuffle,
        drop_last=True,
        num_workers=d.num_workers,
        persistent_workers=False,
    )
    val = DataLoader(datasets.val, batch_size=d.eval_batch_size, num_workers=d.num_workers)
    return train, val


# ----------------------------------------------------------------------------- digits export
def export_digits(
    out: str | Path,
    *,
    shards: int = 3,
    seed: int = 0,
    test_fraction: float = 0.25,
    row_group_size: int = 100,
) -> dict[str, list[Path]]:
    """Write scikit-learn digits as ``train/`` and ``val/`` Parquet shards of PNG bytes.

    The split is the same stratified split as ``prune_core.digits_datasets`` (same seed), and
    the layout is the Hugging Face one: ``image: struct<bytes, path>``, ``label: int64``.
    """

    # here, not at the top: every trial process imports this module, and scikit-learn
    # (~0.7 s) is only needed to export digits
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    pixels = np.clip(data.images * 16, 0, 255).astype(np.uint8)
    train_idx, val_idx = train_test_split(
        np.arange(len(data.target)),
        test_size=test_fraction,
        random_state=seed,
        stratify=data.target,
    )
    written: dict[str, list[Path]] = {}
    for split, idx, n in (("train", train_idx, shards), ("val", val_idx, 1)):
        directory = Path(out) / split
        directory.mkdir(parents=True, exist_ok=True)
        written[split] = []
        for s, part in enumerate(np.array_split(idx, n)):
            images = []
            for i in part:
                buf = io.BytesIO()
                Image.fromarray(pixels[i], mode="L").save(buf, format="PNG")
                images.append({"bytes": buf.getvalue(), "path": f"digit_{i:04d}.png"})
            table = pa.table({"image": images, "label": pa.array(data.target[part], pa.int64())})
            path = directory / f"{split}-{s:05d}-of-{n:05d}.parquet"
            atomic_write(  # a torn shard must not look like data
                path, lambda p, t=table: pq.write_table(t, p, row_group_size=row_group_size)
            )
            written[split].append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.data", description="dataset utilities"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export-digits", help="write scikit-learn digits as Parquet shards")
    exp.add_argument("out", help="output directory (gets train/ and val/)")
    exp.add_argument("--shards", type=int, default=3)
    exp.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = export_digits(args.out, shards=args.shards, seed=args.seed)
    for split, files in written.items():
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        print(f"{split}: {len(files)} shard(s), {rows} images -> {files[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
