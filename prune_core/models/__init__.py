"""FLatten Transformer models and the Fashion-MNIST benchmark models, registered with timm on
import."""

from prune_core.models.fashion_models import deit_fm, flatten_swin_fm
from prune_core.models.flatten_swin import flatten_swin_tiny, load_flatten_checkpoint
from prune_core.models.flatten_vit import FlattenViT, flatten_vit_micro

__all__ = [
    "FlattenViT",
    "deit_fm",
    "flatten_swin_fm",
    "flatten_swin_tiny",
    "flatten_vit_micro",
    "load_flatten_checkpoint",
]
