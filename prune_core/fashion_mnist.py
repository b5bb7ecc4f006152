"""Fashion-MNIST as image datasets: real photographs, small enough for a laptop sweep.

70,000 greyscale 28×28 images of clothing in 10 classes (60,000 train, 10,000 test; Zalando,
MIT licence). Digits (8×8) saturates near 98 % top-1, so pruning differences drown in noise;
Fashion-MNIST leaves room (a small ViT reaches ~85-90 %) while a trial still takes minutes on
one CPU thread. The data comes from the Debian package ``dataset-fashion-mnist`` (the four
IDX ``.gz`` files in ``/usr/share/datasets/fashion-mnist``) or from any folder named by
``root`` / ``FASHION_MNIST_DIR`` in that layout or in torchvision's (``FashionMNIST/raw/``,
gzipped or not). The files are read with numpy and gzip only: no download, no torchvision.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prune_core._in_memory import InMemoryImages

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts it
ENV_VAR = "FASHION_MNIST_DIR"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x08 (uint8) << 8 | number of dimensions
SIDE, NUM_CLASSES = 28, 10
MEAN, STD = 0.286, 0.353  # of pixels / 255 over the training set, rounded
MAX_SHIFT = 2  # training shift in 28-pixel units; a garment stays inside its frame


def _file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder``; the plain file first (no decompression)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The folder holding the four IDX files.

    Looked up in ``root``, else ``$FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``;
    in that folder itself (the Debian layout) or in its ``FashionMNIST/raw/`` (what
    ``torchvision.datasets.FashionMNIST(root, download=True)`` leaves). Each file may be gzipped
    (``.gz``) or not. Raises FileNotFoundError, with one line naming the folder and the fix,
    when some file is in neither place.
    """
    base = Path(root) if root is not None else Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)
    base = base.expanduser()
    for folder in (base, base / "FashionMNIST" / "raw"):
        if all(_file(folder, name) for name in FILES):
            return folder
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {base} (nor in {base / 'FashionMNIST' / 'raw'}): "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set {ENV_VAR} to a folder "
        f"with {FILES[0]}[.gz] and the other three IDX files"
    )


def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of ``(count, *shape)``.

    ``shape`` is what each item must be (``(28, 28)`` images, ``()`` labels). Raises ValueError
    naming the file when it cannot be decompressed, its magic number or item shape is not the
    expected one, or its length disagrees with the count in its header (truncated).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({err})") from None
    dims = 1 + len(shape)
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than an IDX header")
    found, *sizes = np.frombuffer(raw, dtype=">u4", count=1 + dims).tolist()  # big-endian
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
    if tuple(sizes[1:]) != shape:
        raise ValueError(f"{path}: items of shape {tuple(sizes[1:])}, expected {shape}")
    expected = int(np.prod(sizes))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: {len(raw) - header} bytes of data, the header says "
            f"{expected} ({sizes[0]} items): truncated or corrupt"
        )
    # a copy: an array over ``raw`` would be read-only (torch.from_numpy warns about those)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(sizes).copy()


def load_fashion_mnist(
    root: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw arrays: ``(train_images, train_labels, test_images, test_labels)``.

    Images are uint8 ``(n, 28, 28)`` (0 = background, 255 = ink), labels uint8 ``(n,)`` in
    0..9; n is 60,000 / 10,000 for the real data. ``root`` as in :func:`fashion_mnist_dir`.
    Raises FileNotFoundError (files missing) or ValueError naming the bad file (corrupt,
    truncated, labels out of range, image and label counts that differ).
    """
    folder = fashion_mnist_dir(root)
    paths = [_file(folder, name) for name in FILES]
    arrays = []
    for images_path, labels_path in (paths[:2], paths[2:]):
        images = _read_idx(images_path, IMAGES_MAGIC, (SIDE, SIDE))
        labels = _read_idx(labels_path, LABELS_MAGIC, ())
        if len(images) != len(labels):
            raise ValueError(
                f"{labels_path}: {len(labels)} labels for {len(images)} images "
                f"in {images_path.name}"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise ValueError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
        arrays += [images, labels]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` items with each class in its share of ``labels``, by ``seed``.

    Per-class counts are the shares rounded down, the leftover going to the largest remainders,
    so the total is exactly ``size``. Raises ValueError unless ``1 <= size <= len(labels)``.
    """
    if not 1 <= size <= len(labels):
        raise ValueError(f"train_subset must be in [1, {len(labels)}], got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(take - quota, kind="stable")[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def _to_tensor(images: np.ndarray, img_size: int, in_chans: int) -> Tensor:
    """uint8 ``(n, 28, 28)`` -> standardised float32 ``(n, in_chans, img_size, img_size)``.

    Three channels are an expanded view of one (no copy: 60,000 images are 188 MB per channel).
    """
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if img_size != SIDE:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x - MEAN) / STD
    return x.expand(-1, in_chans, -1, -1)


class FashionMnistDataset(InMemoryImages):
    """Images ``(n, C, H, W)`` float32 and labels ``(n,)`` int64, all in memory.

    With ``augment``: a horizontal flip half the time and a shift of up to ``shift`` pixels
    each way, the uncovered border filled with the background value (not wrapped around, which
    would move a sleeve or a heel to the other side).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, augment: bool, shift: int = MAX_SHIFT
    ) -> None:
        super().__init__(images, labels, augment)
        self.shift = shift

    def _augmented(self, img: Tensor) -> Tensor:
        if torch.rand(()) < 0.5:  # garments are near left-right symmetric: flip is standard
            img = img.flip(-1)
        s = self.shift
        if s:
            dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
            h, w = img.shape[-2:]
            padded = F.pad(img, (s, s, s, s), value=-MEAN / STD)  # a 0 pixel, standardised
            img = padded[:, s + dy : s + dy + h, s + dx : s + dx + w]
        return img


def fashion_mnist_datasets(
    img_size: int = 28,
    in_chans: int = 1,
    train_subset: int | None = None,
    seed: int = 0,
    augment: bool = True,
    root: str | Path | None = None,
) -> tuple[FashionMnistDataset, FashionMnistDataset]:
    """``(train, test)`` datasets of standardised ``(in_chans, img_size, img_size)`` images.

    ``train`` is the 60,000 training images, or a stratified subset of ``train_subset`` of them
    fixed by ``seed``, with flip and shift augmentation when ``augment`` (the shift is ±2
    pixels at 28 px, scaled with ``img_size``); ``test`` is the official 10,000 t10k images,
    never augmented. Images are resized (bilinear) only when ``img_size`` != 28; ``in_chans``
    3 repeats the grey channel. Raises ValueError for ``in_chans`` not 1 or 3, ``img_size`` < 8
    or a ``train_subset`` out of range; FileNotFoundError / ValueError from
    :func:`load_fashion_mnist`.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for Fashion-MNIST, got {in_chans}")
    if img_size < 8:
        raise ValueError(f"img_size must be >= 8 for Fashion-MNIST, got {img_size}")
    train_x, train_y, test_x, test_y = load_fashion_mnist(root)
    if train_subset is not None:
        idx = stratified_subset(train_y, train_subset, seed)
        train_x, train_y = train_x[idx], train_y[idx]
    shift = max(1, round(MAX_SHIFT * img_size / SIDE))
    return (
        FashionMnistDataset(
            _to_tensor(train_x, img_size, in_chans),
            torch.from_numpy(train_y.astype(np.int64)),
            augment,
            shift,
        ),
        FashionMnistDataset(
            _to_tensor(test_x, img_size, in_chans),
            torch.from_numpy(test_y.astype(np.int64)),
            augment=False,
        ),
    )
