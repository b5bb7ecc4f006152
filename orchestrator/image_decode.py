"""Any image file a dataset holds, as the 8-bit RGB the transforms expect (``to_rgb``).

Used by the ImageFolder loader (:func:`load_image`) and the Parquet rows (:func:`decode`):
16-bit greyscale scaled, not clipped; alpha composited on a background, not dropped; a mode
with no faithful 8-bit reading refused in one line that names the image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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
