"""The image datasets prune_core ships (digits, Fashion-MNIST) hold every image in memory."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset


class InMemoryImages(Dataset):
    """Images ``(n, C, H, W)`` float32 and labels ``(n,)`` int64, all in memory; with
    ``augment``, each image read goes through the subclass's ``_augmented`` (a fresh random
    draw each time)."""

    def __init__(self, images: Tensor, labels: Tensor, augment: bool) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        if self.augment:
            img = self._augmented(img)
        return img, int(self.labels[i])

    def _augmented(self, img: Tensor) -> Tensor:
        return img
