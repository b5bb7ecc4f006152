"""Datasets: digits exported to Parquet shards and read back as real images."""

from __future__ import annotations

import collections

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from orchestrator.config import parse_config
from orchestrator.data import build_datasets, loaders, main
from orchestrator.parquet_images import ParquetImages


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_parquet")
    assert main(["export-digits", str(out), "--shards", "3"]) == 0  # the CLI the README names
    return out


def experiment(data: dict, num_classes: int = 10):
    """An experiment on flatten_vit_micro (16 px) reading ``data``."""
    return parse_config(
        {
            "name": "t",
            "model": {"name": "flatten_vit_micro", "num_classes": num_classes, "img_size": 16},
            "data": data,
            "teacher": {"epochs": 1},
            "search": {"target": 0.5},
            "finetune": {"epochs": 1},
        },
        "x.yaml",
    )


def config(shards, **data):
    return experiment(
        {
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
        }
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
    from orchestrator.image_decode import decode

    for split in ("train", "val"):
        for row in pq.read_table(shards / split).to_pylist():
            folder = tmp_path / split / f"class_{row['label']}"
            folder.mkdir(parents=True, exist_ok=True)
            decode(row["image"]).save(folder / row["image"]["path"])
    exp = experiment(
        {
            "kind": "imagefolder",
            "train": str(tmp_path / "train"),
            "val": str(tmp_path / "val"),
            "calib_images": 16,
            "auto_augment": None,  # off: only labels and counts are read here (see above)
        }
    )
    datasets = build_datasets(exp)
    assert len(datasets.train) == 1347 and len(datasets.val) == 450
    _, val = loaders(exp, datasets)
    labels = collections.Counter(int(v) for _, y in val for v in y)
    truth = collections.Counter(pq.read_table(shards / "val").column("label").to_pylist())
    assert labels == truth and datasets.calib.shape == (16, 3, 16, 16)


# ----------------------------------------------------------------------------- image modes
def png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def glyph(mode: str, ink, clear):
    """A 4x4 image of ``mode``: an opaque 2x2 glyph of ``ink`` on ``clear`` (transparent)."""
    from PIL import Image

    image = Image.new(mode, (4, 4), clear)
    for xy in ((1, 1), (1, 2), (2, 1), (2, 2)):
        image.putpixel(xy, ink)
    return image


def test_sixteen_bit_grey_is_scaled_not_clipped():
    """Issue 26: convert("RGB") clipped a 16-bit PNG at 255: 0..65535 came out nearly white."""
    import io

    import numpy as np
    from PIL import Image

    from orchestrator.image_decode import decode

    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    raw = png(Image.fromarray(values))
    assert Image.open(io.BytesIO(raw)).mode == "I;16"  # what PIL reads
    rgb = np.asarray(decode({"bytes": raw, "path": "g16.png"}))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb == rgb[..., :1]).all()


@pytest.mark.parametrize(
    ("mode", "ink", "clear"),
    [
        ("RGBA", (0, 0, 0, 255), (0, 0, 0, 0)),  # black ink on transparent black: was all black
        ("LA", (0, 255), (0, 0)),
        ("RGBA", (255, 255, 255, 255), (255, 255, 255, 0)),  # white ink: background kept
    ],
)
def test_content_in_alpha_is_composited_on_the_background(mode, ink, clear):
    import numpy as np

    from orchestrator.image_decode import DEFAULT_BACKGROUND, decode

    rgb = np.asarray(decode(png(glyph(mode, ink, clear))))
    colour = ink[0] if mode == "LA" else ink[:3]
    assert (rgb[1:3, 1:3] == colour).all()
    assert (rgb[0] == DEFAULT_BACKGROUND).all() and (rgb[3] == DEFAULT_BACKGROUND).all()
    white = np.asarray(decode(png(glyph(mode, ink, clear)), background=(255, 255, 255)))
    assert (white[0] == 255).all()


def test_half_transparent_palette_and_premultiplied_modes():
    import numpy as np
    from PIL import Image

    from orchestrator.image_decode import decode, to_rgb

    half = Image.new("RGBA", (1, 1), (200, 100, 0, 128))  # straight alpha, a = 128/255
    expected = np.rint(np.array([200, 100, 0]) * 128 / 255 + np.array([0, 0, 250]) * 127 / 255)
    assert np.asarray(to_rgb(half, (0, 0, 250)))[0, 0].tolist() == expected.tolist()
    premultiplied = half.convert("RGBa")  # the same pixel, colour already weighted by alpha
    got = np.asarray(to_rgb(premultiplied, (0, 0, 250)))[0, 0]
    assert np.abs(got.astype(int) - expected).max() <= 1
    la = Image.new("LA", (1, 1), (200, 128)).convert("La")
    assert np.asarray(to_rgb(la, (0, 0, 0)))[0, 0].tolist() == [100] * 3
    palette = glyph("P", 1, 0)
    palette.putpalette([9, 9, 9, 250, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0  # index 0 is transparent
    rgb = np.asarray(decode(png(palette), background=(0, 255, 0)))
    assert rgb[0, 0].tolist() == [0, 255, 0] and rgb[1, 1].tolist() == [250, 0, 0]
    grey = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(grey))[0, :, 0].tolist() == [0, 128, 255]
    for mode in ("1", "L", "CMYK", "YCbCr"):
        assert to_rgb(Image.new(mode, (2, 2))).mode == "RGB"


def test_a_mode_with_no_faithful_reading_is_one_line_naming_it():
    import numpy as np
    from PIL import Image

    from orchestrator.image_decode import to_rgb

    hdr = Image.fromarray(np.array([[0.0, 3.5]], dtype=np.float32), "F")
    with pytest.raises(ValueError) as err:
        to_rgb(hdr, name="hdr.tif")
    line = str(err.value)
    assert line.startswith("hdr.tif: PIL mode 'F' with values 0..3.5, outside 0..1") and (
        "\n" not in line
    )


def test_imagefolder_reads_every_mode_as_decode_does(tmp_path):
    """ImageFolder's default loader is convert("RGB") too: the sweep passes its own."""
    import numpy as np

    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                glyph("RGBA", (0, 0, 0, 255), (0, 0, 0, 0)).save(folder / f"{i}.png")
    exp = experiment(
        {
            "kind": "imagefolder",
            "train": str(tmp_path / "train"),
            "val": str(tmp_path / "val"),
            "calib_images": 2,
            "alpha_background": [255, 255, 255],
        },
        num_classes=2,
    )
    datasets = build_datasets(exp)
    for dataset in (datasets.train, datasets.val):
        image = np.asarray(dataset.loader(dataset.samples[0][0]))
        assert (image[0] == 255).all() and (image[1:3, 1:3] == 0).all()
    assert datasets.calib.std() > 0.5  # glyph and background differ (all black had std 0)
