"""Two Fashion-MNIST models where attention is a real share of the work, registered with timm.

Both take (B, 1, 28, 28) greyscale images and return (B, 10) logits; they are trained from
scratch (``benchmarks.fashion_attention``) and are the benchmark models of issue 24. The
16-token ``flatten_vit_micro`` of the quick Fashion benchmark spends ≈ 6 % of its MACs in the
attention products; these two spend far more (shares in ``benchmarks/RESULTS.md``).

- ``flatten_swin_fm``: FLatten-Swin (Han et al., ICCV 2023; LeapLabTHU/FLatten-Transformer,
  ``models/flatten_swin.py``) at micro size, the paper's hybrid: focused *linear* attention in
  the first stage, softmax attention with Swin's relative position bias in the last.
  2×2 patches give a 14×14 map (196 tokens, (B, 196, 32)) cut into four 7×7 windows of 49
  tokens; every second linear block shifts the windows by 3 (like the official linear blocks,
  no shift mask). Patch merging then gives a 7×7 map ((B, 49, 64)), a single 7×7 softmax
  window with a 13×13 relative-position table (like FLatten-Swin-T's last stage, a map the
  size of its window has no shift). Depths 2-4 (6 blocks), heads 2-4 of width 16, MLP ratio 2.
- ``deit_fm``: a DeiT-shaped softmax ViT (Touvron et al., ICML 2021; timm's
  ``VisionTransformer``, the class DeiT is built from): 4×4 patches give 49 tokens plus the
  class token ((B, 50, 64)), depth 6, 4 heads of width 16, MLP ratio 2, classification from
  the class token. It is a plain timm model: ``prune_core.make_prunable`` turns its attention
  and MLPs into the prunable twins (outputs unchanged).

Neither has pretrained weights (``pretrained=True`` raises).
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from prune_core.models.flatten_swin import FlattenSwinTransformer

FASHION_INPUT = (1, 28, 28)

FLATTEN_SWIN_FM = {
    "img_size": 28,
    "patch_size": 2,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 32,
    "depths": (2, 4),
    "num_heads": (2, 4),
    "window_size": 7,
    "la_window_size": 7,
    "attn_type": "LS",
    "mlp_ratio": 2.0,
    "drop_path_rate": 0.1,
}

DEIT_FM = {
    "img_size": 28,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "qkv_bias": True,
    "class_token": True,
    "global_pool": "token",
    "drop_path_rate": 0.1,
}


def _kwargs(name: str, pretrained: bool, defaults: dict, kwargs: dict) -> dict:
    if pretrained:
        raise ValueError(
            f"{name} has no pretrained weights: train it (benchmarks.fashion_attention)"
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return {**defaults, **kwargs}


@register_model
def flatten_swin_fm(pretrained: bool = False, **kwargs) -> FlattenSwinTransformer:
    """FLatten-Swin micro for 28×28 greyscale: stages L (14×14, 7×7 windows) and S (7×7)."""
    return FlattenSwinTransformer(**_kwargs("flatten_swin_fm", pretrained, FLATTEN_SWIN_FM, kwargs))


@register_model
def deit_fm(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """DeiT-shaped ViT for 28×28 greyscale: 4×4 patches (49 + class token), depth 6, 4 heads."""
    return VisionTransformer(**_kwargs("deit_fm", pretrained, DEIT_FM, kwargs))


__all__ = ["DEIT_FM", "FASHION_INPUT", "FLATTEN_SWIN_FM", "deit_fm", "flatten_swin_fm"]
