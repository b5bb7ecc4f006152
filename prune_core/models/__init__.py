from prune_core.models.flatten_vit import FlattenViT, flatten_vit_micro  # noqa: F401
