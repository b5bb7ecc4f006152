"""Datasets: digits exported to Parquet shards and read back as real images."""

from __future__ import annotations

import collections

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from orchestrator.config import parse_config
from orchestrator.data import ParquetImages, build_datasets, loaders, main


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_parquet")
    assert main(["export-digits", str(out), "--shards", "3"]) == 0  # the CLI the README names
    return out


def config(shards, **data):
    return parse_config(
        {
            "name": "t",
            "model": {"name": "flatten_vit_micro", "num_classes": 10, "img_size": 16},
            "data": {
                "kind": "parquet",
                "train": str(shards / "train"),
                "val": str(shards / "val"),
                # off: these tests compare decoded pixels and sample order exactly; the default
                # augmentation is exercised in test_orchestrator_augment.py
                "hflip": 0.0,
                "auto_augment": None,
                "re_prob": 0.0,
                "calib_images": 32,
                **data,
            },
            "teacher": {"epochs": 1},
            "search": {"target": 0.5},
            "finetune": {"epochs": 1},
        },
        "x.yaml",
    )


def test_export_layout_matches_sklearn_split(shards):
    from sklearn.datasets import load_digits

    files = sorted((shards / "train").glob("*.parquet"))
    assert [f.name for f in files] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    table = pq.read_table(files[0])
    assert table.schema.field("image").type.names == ["bytes", "path"]  # Hugging Face layout
    assert str(table.schema.field("label").type) == "int64"
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    val_rows = pq.ParquetFile(next((shards / "val").glob("*.parquet"))).metadata.num_rows
    assert rows + val_rows == len(load_digits().target) and val_rows == 450


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_stream_yields_every_image_once(shards, workers):
    exp = config(shards, num_workers=workers, eval_batch_size=64)
    datasets = build_datasets(exp)
    _, val = loaders(exp, datasets)
    labels = collections.Counter()
    for images, y in val:
        assert images.shape[1:] == (3, 16, 16) and torch.isfinite(images).all()
        labels.update(y.tolist())
    truth = collections.Counter(pq.read_table(shards / "val").column("label").to_pylist())
    assert labels == truth
    assert datasets.calib.shape == (32, 3, 16, 16) and datasets.calib.std() > 0.1


def test_train_stream_shuffles_per_epoch_and_is_reproducible(shards):
    exp = config(shards, batch_size=50)
    train, _ = loaders(exp, build_datasets(exp))

    def epoch_labels(seed: int) -> list[int]:
        torch.manual_seed(seed)
        return [int(v) for _, y in train for v in y]

    first, again, other = epoch_labels(0), epoch_labels(0), epoch_labels(1)
    assert first == again and first != other
    assert len(first) == 1300 == len(train) * 50  # 1,347 rows, drop_last at batch 50


def test_equal_split_gives_every_rank_the_same_count(shards, monkeypatch):
    """Data-parallel ranks must see equal batch counts, or the slower rank deadlocks."""
    files = sorted((shards / "train").glob("*.parquet"))
    counts, seen = [], set()
    for rank in range(4):
        ds = ParquetImages(
            files, "image", "label", lambda im: torch.zeros(1), shuffle=True, equal_split=True
        )
        monkeypatch.setattr(ds, "_world", lambda rank=rank: (rank, 4))
        torch.manual_seed(0)
        items = list(DataLoader(ds, batch_size=None, num_workers=0))
        counts.append(len(items))
        seen |= {rank}
    assert counts == [1347 // 4] * 4


def test_imagefolder_reads_class_folders(shards, tmp_path):
    """The same images as a class-per-folder tree (ImageFolder's layout, labels by folder)."""
    from orchestrator.data import decode

    for split in ("train", "val"):
        for row in pq.read_table(shards / split).to_pylist():
            folder = tmp_path / split / f"class_{row['label']}"
            folder.mkdir(parents=True, exist_ok=True)
            decode(row["image"]).save(folder / row["image"]["path"])
    exp = parse_config(
        {
            "name": "t",
            "model": {"name": "flatten_vit_micro", "num_classes": 10, "img_size": 16},
            "data": {
                "kind": "imagefolder",
                "train": str(tmp_path / "train"),
                "val": str(tmp_path / "val"),
                "calib_images": 16,
                "auto_augment": None,  # off: only labels and counts are read here (see above)
            },
            "teacher": {"epochs": 1},
            "search": {"target": 0.5},
            "finetune": {"epochs": 1},
        },
        "x.yaml",
    )
    datasets = build_datasets(exp)
    assert len(datasets.train) == 1347 and len(datasets.val) == 450
    _, val = loaders(exp, datasets)
    labels = collections.Counter(int(v) for _, y in val for v in y)
    truth = collections.Counter(pq.read_table(shards / "val").column("label").to_pylist())
    assert labels == truth and datasets.calib.shape == (16, 3, 16, 16)
