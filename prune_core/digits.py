"""scikit-learn's bundled digits as image datasets: real data with no download.

1,797 greyscale 8×8 images, 10 classes. Images are upsampled to the model's input size and
repeated to 3 channels; the training split gets a ±1 pixel random shift (the only augmentation
that keeps a digit a digit at this size). The split is stratified and fixed by the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prune_core._in_memory import InMemoryImages

MEAN, STD = 0.30, 0.40  # of pixels / 16 over the whole set, rounded


class DigitsDataset(InMemoryImages):
    """Digits in memory; ``augment``: a random shift of ±1 pixel (module doc)."""

    def _augmented(self, img: Tensor) -> Tensor:
        dy, dx = torch.randint(-1, 2, (2,)).tolist()
        return torch.roll(img, shifts=(dy, dx), dims=(1, 2))


def digits_datasets(
    img_size: int = 16, seed: int = 0, test_fraction: float = 0.25
) -> tuple[DigitsDataset, DigitsDataset]:
    # here, not at the top: `import prune_core` should not pay for scikit-learn (~0.5 s)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if img_size < 8:
        raise ValueError(f"img_size must be >= 8 for digits, got {img_size}")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - MEAN) / STD).repeat(1, 3, 1, 1)
    y = torch.tensor(data.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(y)), test_size=test_fraction, random_state=seed, stratify=data.target
    )
    return (
        DigitsDataset(x[train_idx], y[train_idx], augment=True),
        DigitsDataset(x[test_idx], y[test_idx], augment=False),
    )
