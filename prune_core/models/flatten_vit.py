"""FLatten-ViT: a small isotropic ViT mixing focused linear and softmax attention.

The CPU model family of the project: big enough to show the method's trade-offs on
scikit-learn's digits in minutes, small enough for tests. Like FLatten-Swin ("LLSS"), the
early blocks use focused linear attention and the late ones softmax attention; tokens are
average-pooled (no class token), so the token grid stays square for the depthwise conv on v.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from timm.models import register_model
from torch import Tensor, nn

from prune_core.attention import SoftmaxAttention
from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.mlp import PrunableMlp
from prune_core.models._timm_entry import drop_create_kwargs, init_linear


class Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = PrunableMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FlattenViT(nn.Module):
    """Isotropic ViT; ``attn_types`` is a string of 'L' (focused linear) / 'S' (softmax)."""

    def __init__(
        self,
        img_size: int = 16,
        patch_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        attn_types: str | None = None,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        attn_types = attn_types or "L" * (depth // 2) + "S" * (depth - depth // 2)
        if len(attn_types) != depth or set(attn_types) - {"L", "S"}:
            raise ValueError(f"attn_types must be {depth} letters of L/S, got {attn_types!r}")
        grid = (img_size // patch_size, img_size // patch_size)
        tokens = grid[0] * grid[1]
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.img_size = img_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i, kind in enumerate(attn_types):
            attn = (
                FocusedLinearAttention(
                    embed_dim,
                    num_heads,
                    tokens,
                    grid,
                    qkv_bias=qkv_bias,
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                )
                if kind == "L"
                else SoftmaxAttention(embed_dim, num_heads, qkv_bias=qkv_bias)
            )
            blocks.append(Block(embed_dim, attn, mlp_ratio, rates[i]))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.apply(init_linear)

    def no_weight_decay(self) -> set[str]:
        """timm's convention: positional embeddings are not decayed."""
        return {"pos_embed"}

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else nn.Identity()


@register_model
def flatten_vit_micro(pretrained: bool = False, **kwargs) -> FlattenViT:
    """embed 64, depth 4, 4 heads, blocks L-L-S-S; 16x16 input in 2x2 patches (64 tokens)."""
    if pretrained:
        raise ValueError("flatten_vit_micro has no pretrained weights: train it (prune_core.train)")
    return FlattenViT(**drop_create_kwargs(kwargs))
