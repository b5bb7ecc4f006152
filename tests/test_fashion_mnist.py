"""Fashion-MNIST: the IDX reader, the datasets, and ``data.kind: fashion_mnist`` in a sweep.

These tests need the real data (the Debian package ``dataset-fashion-mnist``, or
FASHION_MNIST_DIR) and fail without it: CI installs the package (``.ci/run``), and a silently
skipped dataset test would hide a broken install. Small IDX files written here cover the
torchvision layout and the corrupt-file errors.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from helpers import ROOT, run_sweep_cli

import prune_core.fashion_mnist as fm
from orchestrator.config import ConfigError, load_config, parse_config
from orchestrator.data import build_datasets

INSTALL = "apt-get install dataset-fashion-mnist"


@pytest.fixture(scope="module")
def arrays():
    """The real data, read once for the module (~1 s): fails, never skips, when absent."""
    try:
        return fm.load_fashion_mnist()
    except FileNotFoundError as err:
        pytest.fail(str(err))


@pytest.fixture
def cached(arrays, monkeypatch):
    """fashion_mnist_datasets on the cached arrays instead of re-reading the files."""
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda root=None: arrays)
    return arrays


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    """An IDX file: big-endian magic and sizes, then the uint8 items; ``.gz`` if ``gz``."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.write_bytes(data)
    return path


def write_small(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> list[np.ndarray]:
    """The four files with ``n_train`` / ``n_test`` random images, labels 0..9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, fm.IMAGES_MAGIC, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, fm.LABELS_MAGIC, gz)
        out += [images, labels]
    return out


# ----------------------------------------------------------------------------- the real data
def test_real_data_counts_shapes_and_labels(arrays):
    train_x, train_y, test_x, test_y = arrays
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_x.dtype == test_x.dtype == np.uint8
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
    assert 0 <= train_y.min() and train_y.max() == 9 and test_y.max() == 9
    assert abs(train_x.mean() / 255 - fm.MEAN) < 1e-3 and abs(train_x.std() / 255 - fm.STD) < 1e-3


def test_subset_is_stratified_and_fixed_by_the_seed(arrays):
    labels = arrays[1]
    first = fm.stratified_subset(labels, 1003, seed=0)
    assert np.array_equal(first, fm.stratified_subset(labels, 1003, seed=0))
    assert not np.array_equal(first, fm.stratified_subset(labels, 1003, seed=1))
    assert len(first) == len(np.unique(first)) == 1003
    counts = np.bincount(labels[first], minlength=10)
    assert counts.sum() == 1003 and counts.min() == 100 and counts.max() == 101
    with pytest.raises(ValueError, match="train_subset"):
        fm.stratified_subset(labels, 60001)


def test_datasets_standardised_tensors_and_official_test_split(cached):
    train, test = fm.fashion_mnist_datasets(train_subset=500, seed=0)
    again, _ = fm.fashion_mnist_datasets(train_subset=500, seed=0)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert len(train) == 500 and torch.bincount(train.labels).tolist() == [50] * 10
    assert len(test) == 10000 and torch.equal(test.labels, torch.from_numpy(cached[3]).long())
    image, label = test[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label <= 9
    assert abs(test.images.mean()) < 0.05 and abs(test.images.std() - 1) < 0.05  # ~N(0, 1)
    assert torch.equal(test[0][0], test[0][0])  # never augmented
    assert train.images[0].min() == pytest.approx(-fm.MEAN / fm.STD)  # background pixel

    torch.manual_seed(0)
    views = torch.stack([train[3][0] for _ in range(20)])
    assert views.shape == (20, 1, 28, 28) and len(torch.unique(views, dim=0)) > 5  # flip + shift

    rgb, rgb_test = fm.fashion_mnist_datasets(img_size=32, in_chans=3, train_subset=100)
    x = rgb_test[0][0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2]) and rgb[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="in_chans"):
        fm.fashion_mnist_datasets(in_chans=2)


# ----------------------------------------------------------------------------- files and folders
@pytest.mark.parametrize("gz", [True, False])
def test_torchvision_raw_layout(tmp_path, gz):
    raw = tmp_path / "FashionMNIST" / "raw"  # what torchvision's download leaves
    written = write_small(raw, gz)
    assert fm.fashion_mnist_dir(tmp_path) == raw
    for got, expected in zip(fm.load_fashion_mnist(tmp_path), written, strict=True):
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
    train, test = fm.fashion_mnist_datasets(root=tmp_path, augment=False)
    assert len(train) == 20 and len(test) == 10 and train[0][0].shape == (1, 28, 28)


def test_env_var_is_honoured(tmp_path, monkeypatch):
    write_small(tmp_path, gz=True, n_train=30)  # the Debian layout: files in the folder itself
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert fm.fashion_mnist_dir() == tmp_path
    assert len(fm.load_fashion_mnist()[0]) == 30
    assert fm.fashion_mnist_dir(fm.DEFAULT_DIR) == fm.DEFAULT_DIR  # root wins over the variable


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        fm.fashion_mnist_dir(missing)
    message = str(info.value)
    assert str(missing) in message and INSTALL in message and "FASHION_MNIST_DIR" in message
    assert "\n" not in message
    write_small(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()  # three of four is not the data set
    with pytest.raises(FileNotFoundError, match=INSTALL):
        fm.fashion_mnist_dir(tmp_path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda b: struct.pack(">I", 2049) + b[4:], "magic number 2049, expected 2051"),
        (lambda b: b[:-100], "truncated or corrupt"),
        (lambda b: b[:10], "shorter than an IDX header"),
    ],
)
def test_corrupt_file_is_a_value_error_naming_it(tmp_path, damage, expected):
    write_small(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(ValueError, match=expected) as info:
        fm.load_fashion_mnist(tmp_path)
    assert str(info.value).startswith(str(bad))


def test_broken_gzip_and_bad_labels_name_the_file(tmp_path):
    write_small(tmp_path, gz=True)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # a cut download
    with pytest.raises(ValueError, match="not a readable gzip file") as info:
        fm.load_fashion_mnist(tmp_path)
    assert str(info.value).startswith(str(bad))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28)), fm.IMAGES_MAGIC, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10, 10), fm.LABELS_MAGIC, gz=True)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: label 10 outside 0..9"):
        fm.load_fashion_mnist(tmp_path)


# ----------------------------------------------------------------------------- orchestrator
def fashion_config(**data) -> dict:
    return {
        "name": "f",
        "model": {
            "name": "flatten_vit_micro",
            "num_classes": 10,
            "img_size": 28,
            "kwargs": {"patch_size": 7, "in_chans": 1},
        },
        "data": {"kind": "fashion_mnist", "calib_images": 16, **data},
        "teacher": {"epochs": 1},
        "search": {"target": 0.5},
        "finetune": {"epochs": 1},
    }


def test_sweep_datasets_have_the_model_input_shape(arrays):
    exp = parse_config(fashion_config(train_subset=200), "x.yaml")
    assert exp.input_size == (1, 28, 28)
    datasets = build_datasets(exp)
    assert len(datasets.train) == 200 and len(datasets.val) == 10000
    assert datasets.train[0][0].shape == datasets.val[0][0].shape == exp.input_size
    assert datasets.calib.shape == (16, *exp.input_size) and datasets.calib.std() > 0.5
    m = exp.model
    model = timm.create_model(m.name, num_classes=m.num_classes, img_size=m.img_size, **m.kwargs)
    assert model(datasets.calib).shape == (16, 10)


def test_shipped_fashion_config_and_cross_checks():
    exp = load_config(ROOT / "experiments" / "fashion.yaml")
    assert exp.data.kind == "fashion_mnist" and exp.input_size == (1, 28, 28)
    assert exp.model.kwargs["patch_size"] == 7 and exp.resources.gpus_per_trial == 0
    with pytest.raises(ConfigError, match="model.num_classes: fashion_mnist has 10 classes"):
        parse_config(
            {**fashion_config(), "model": {**fashion_config()["model"], "num_classes": 5}}, "x.yaml"
        )
    raw = fashion_config()
    raw["model"]["kwargs"]["in_chans"] = 2
    with pytest.raises(ConfigError, match="model.kwargs.in_chans: must be 1 or 3"):
        parse_config(raw, "x.yaml")
    with pytest.raises(ConfigError, match="data.train_subset"):
        parse_config(fashion_config(train_subset=0), "x.yaml")


def run_dry(config: Path, cwd: Path, env_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASHION_MNIST_DIR": str(env_dir)}
    return run_sweep_cli(config, "--dry-run", cwd=cwd, env=env)


def test_dry_run_missing_data_is_one_line_exit_2(tmp_path, arrays):
    empty = tmp_path / "empty"
    empty.mkdir()
    raw = fashion_config()
    raw["storage"] = {"path": str(tmp_path / "results")}
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_dry(path, tmp_path, empty)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: data.kind: Fashion-MNIST not found")
    assert str(empty) in lines[0] and INSTALL in lines[0] and "Traceback" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "f.yaml"]  # nothing written

    proc = run_dry(ROOT / "experiments" / "fashion.yaml", tmp_path, fm.fashion_mnist_dir())
    assert proc.returncode == 0, proc.stderr
    assert "fashion_mnist (20000 of the 60,000 training images" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "f.yaml"]
