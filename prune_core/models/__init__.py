from prune_core.models.flatten_swin import flatten_swin_tiny, load_flatten_checkpoint  # noqa: F401
from prune_core.models.flatten_vit import FlattenViT, flatten_vit_micro  # noqa: F401
