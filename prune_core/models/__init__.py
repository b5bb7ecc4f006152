"""FLatten Transformer models, registered with timm on import."""

from prune_core.models.flatten_swin import flatten_swin_tiny, load_flatten_checkpoint
from prune_core.models.flatten_vit import FlattenViT, flatten_vit_micro

__all__ = ["FlattenViT", "flatten_swin_tiny", "flatten_vit_micro", "load_flatten_checkpoint"]
