"""timm's training transform for ImageFolder and Parquet data, made total for every Pillow.

timm's RandAugment and AutoAugment ops ask Pillow to *posterize to 0 bits* at some magnitudes:
``PosterizeIncreasing`` at magnitude 10 (the default ``rand-m9-mstd0.5-inc1`` reaches it through
its N(0, 0.5) magnitude noise, about 14 transforms in 10,000), ``Posterize`` below magnitude 2.5,
and AutoAugment's v0 policy. Pillow < 12 returned a black image (0 most significant bits kept,
TensorFlow's behaviour that timm follows); Pillow ≥ 12 raises ``ValueError: bits must be
between or equal to 1 and 8``, which ends a training epoch. Every posterize op of the built
transform is pointed at :func:`posterize`, which gives exactly the old result, so the policy
means what it meant and no image ever raises. Every other op of timm's sets is total on the RGB
images we feed it (``tests/test_orchestrator_augment.py`` runs each op at every magnitude).
"""

from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel (Pillow's posterize);
    0 bits (or fewer) keeps none: a black image of the same mode and size, as Pillow < 12 gave.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform) -> list[auto_augment.AugmentOp]:
    """Every timm AugmentOp inside ``transform`` (Compose, RandAugment, AutoAugment, AugMix)."""
    if isinstance(transform, auto_augment.AugmentOp):
        return [transform]
    found = []
    for attr in ("transforms", "ops", "policy"):
        children = getattr(transform, attr, None)
        if isinstance(children, list | tuple):
            for child in children:
                found += _augment_ops(child)
    if isinstance(transform, list | tuple):
        for child in transform:
            found += _augment_ops(child)
    return found


def training_transform(size: tuple[int, int, int], **kwargs):
    """``timm.data.create_transform(size, is_training=True, **kwargs)`` with its posterize ops
    made total (module docstring). ``size`` is (C, H, W)."""
    transform = create_transform(size, is_training=True, **kwargs)
    for op in _augment_ops(transform):
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize
    return transform
