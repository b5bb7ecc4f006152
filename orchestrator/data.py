"""Datasets for a sweep: digits, Fashion-MNIST, an ImageFolder tree, or Parquet shards.

Digits ships with scikit-learn, so the embedded sweep and the tests run on real images with no
download; Fashion-MNIST (``prune_core.fashion_mnist``: 28×28 clothing, from the Debian package
``dataset-fashion-mnist`` or ``$FASHION_MNIST_DIR``) is the laptop-sized step up: harder, still
minutes per trial. ImageFolder and Parquet (a column of encoded image bytes, or of ``{bytes,
path}`` structs, plus an integer label: the layout of the common Parquet exports of ImageNet)
get timm's usual train/eval transforms. Parquet is streamed row group by row group with a
shuffle buffer, because random access into large shards reads a whole row group per image.

``python -m orchestrator.data export-digits OUT`` writes digits as Parquet shards (PNG bytes),
so the Parquet path can be exercised on real images anywhere.
"""

from __future__ import annotations

import argparse
import io
import random
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
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from orchestrator import hf_model
from orchestrator._atomic import atomic_write
from orchestrator.augment import training_transform
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


# ----------------------------------------------------------------------------- decoding
DEFAULT_BACKGROUND = (124, 116, 104)  # schema.DataConfig.alpha_background's default (why: there)
_HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
_AS_RGB = ("1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV")  # PIL converts these exactly


def to_rgb(
    image: Image.Image, background: tuple[int, int, int] = DEFAULT_BACKGROUND, name: str = "image"
) -> Image.Image:
    """An 8-bit RGB image with what ``image`` shows, whatever its PIL mode.

    ``convert("RGB")`` clipped a 16-bit greyscale at 255 (a PNG of 0..65535 came out almost all
    white) and dropped alpha (content drawn on a transparent background came out black on
    black). Here high bit depths are scaled to 0..255 (16-bit integers by 65535 / 255, floats
    in [0, 1] by 255), alpha is composited on ``background`` (straight alpha: RGBA, LA, a
    palette with transparency; premultiplied: RGBa, La), and a mode with no faithful reading is
    a ValueError of one line naming ``name`` and the mode."""
    mode = image.mode
    if mode in ("P", "PA"):  # a palette: its transparency (if any) is alpha
        alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
        mode = image.mode
    if mode in _AS_RGB:
        return image if mode == "RGB" else image.convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        pixels = np.asarray(image, dtype=np.float32)
        colour, alpha = pixels[..., :-1], pixels[..., -1:] / 255.0
        if colour.shape[-1] == 1:
            colour = np.repeat(colour, 3, axis=-1)
        if mode in ("RGBA", "LA"):  # straight alpha: the colour is not yet weighted by it
            colour = colour * alpha
        out = colour + np.asarray(background, np.float32) * (1.0 - alpha)
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
    if mode in _HIGH_DEPTH or mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        top = 1.0 if mode == "F" else _HIGH_DEPTH[mode]
        if low < 0 or high > top or not np.isfinite(pixels).all():
            raise ValueError(
                f"{name}: PIL mode {mode!r} with values {low:g}..{high:g}, outside 0..{top:g}: "
                "no faithful 8-bit reading (convert it to 8- or 16-bit)"
            )
        grey = np.rint(pixels * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    raise ValueError(
        f"{name}: PIL mode {mode!r} is not decoded (supported: {', '.join(_AS_RGB)}, P, PA, "
        f"RGBA, LA, RGBa, La, {', '.join(_HIGH_DEPTH)}, F)"
    )


def load_image(path: str, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """ImageFolder's loader (its default is ``convert("RGB")``): :func:`to_rgb` of the file."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return to_rgb(image, background, name=str(path))


def decode(value: bytes | dict, background: tuple[int, int, int] = DEFAULT_BACKGROUND):
    """Encoded bytes, or a Hugging Face style ``{"bytes": ..., "path": ...}`` struct, as
    :func:`to_rgb` reads them."""
    raw = value["bytes"] if isinstance(value, dict) else value
    name = (value.get("path") if isinstance(value, dict) else None) or "a Parquet image"
    return to_rgb(Image.open(io.BytesIO(raw)), background, name=name)


# ----------------------------------------------------------------------------- parquet
class ParquetImages(IterableDataset):
    """Image/label rows streamed from Parquet shards, split over DataLoader workers and ranks.

    The unit of work is a (file, row group): units are shuffled per epoch (training), dealt out
    round-robin to ``rank × worker``, and rows pass through a shuffle buffer. With
    ``equal_split`` every rank yields exactly ``rows // world`` samples (cycling its units if
    short), because data-parallel ranks that run out of batches at different times deadlock.
    """

    def __init__(
        self,
        files: list[Path],
        image_column: str,
        label_column: str,
        transform,
        *,
        shuffle: bool,
        seed: int = 0,
        buffer: int = 10_000,
        equal_split: bool = True,
        background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    ) -> None:
        self.files = [str(f) for f in files]
        self.background = tuple(background)
        self.image_column, self.label_column = image_column, label_column
        self.transform = transform
        self.shuffle, self.seed, self.buffer, self.equal_split = shuffle, seed, buffer, equal_split
        self.units: list[tuple[int, int, int]] = []  # (file index, row group, rows)
        for i, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            names = set(meta.schema.to_arrow_schema().names)
            for column in (image_column, label_column):
                if column not in names:
                    raise ValueError(f"{f}: no column {column!r} (columns: {sorted(names)})")
            self.units += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self.rows = sum(u[2] for u in self.units)

    def _world(self) -> tuple[int, int]:
        dist = torch.distributed
        if self.equal_split and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.rows // self._world()[1]

    def _read(self, unit: tuple[int, int, int]) -> list[tuple[object, int]]:
        table = pq.ParquetFile(self.files[unit[0]]).read_row_group(
            unit[1], columns=[self.image_column, self.label_column]
        )
        return list(
            zip(
                table.column(self.image_column).to_pylist(),
                table.column(self.label_column).to_pylist(),
                strict=True,
            )
        )

    def _rows(self, units: list[tuple[int, int, int]], rng: random.Random):
        buffer: list[tuple[object, int]] = []
        for unit in units:
            rows = self._read(unit)
            if not self.shuffle:
                yield from rows
                continue
            buffer += rows
            while len(buffer) > self.buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        rank, world = self._world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # One epoch seed shared by the workers of a rank (torch draws a fresh base seed per
        # epoch, and prune_core seeds torch per epoch, so ranks agree and a resumed run repeats).
        epoch_seed = (info.seed - info.id) if info else int(torch.randint(0, 2**31 - 1, (1,)))
        units = list(self.units)
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch_seed}").shuffle(units)
        slot, slots = rank * workers + worker, world * workers
        rng = random.Random(f"{self.seed}/{epoch_seed}/{slot}")
        mine = units[slot::slots]
        if not self.equal_split:  # every row exactly once over all workers
            yield from (self._sample(row) for row in self._rows(mine, rng))
            return
        quota = len(self) // workers + (1 if worker < len(self) % workers else 0)
        mine = mine or units  # more workers than row groups: repeat rather than starve
        count = 0
        while count < quota:
            for row in self._rows(mine, rng):
                yield self._sample(row)
                count += 1
                if count == quota:
                    return

    def _sample(self, item: tuple[object, int]) -> tuple[Tensor, int]:
        image, label = item
        return self.transform(decode(image, self.background)), int(label)


# ----------------------------------------------------------------------------- imagefolder
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
