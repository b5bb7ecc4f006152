"""What the FLatten models share as timm models: the ViT weight init and the keyword arguments
``timm.create_model`` passes to every registered model function that these models do not take."""

from __future__ import annotations

from torch import nn

# timm hands these to the model function (its pretrained-weights machinery); the models have
# no pretrained weights, so they are dropped rather than passed to the constructor.
TIMM_CREATE_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def init_linear(m: nn.Module) -> None:
    """ViT / Swin init for ``model.apply``: linear weights ~ truncated N(0, 0.02), biases 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def drop_create_kwargs(kwargs: dict) -> dict:
    """``kwargs`` without ``TIMM_CREATE_KWARGS`` (in place; returned for chaining)."""
    for key in TIMM_CREATE_KWARGS:
        kwargs.pop(key, None)
    return kwargs
