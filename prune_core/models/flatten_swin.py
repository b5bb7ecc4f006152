"""FLatten-Swin (Han et al., ICCV 2023) built from our prunable attention modules.

A Swin Transformer whose stages are either focused linear attention ("L") or shifted-window
softmax attention ("S"); FLatten-Swin-T is "LLSS". The linear stages use a window of 56 that is
clamped to the feature map, i.e. global attention with no shift, which linear attention can
afford; the softmax stages keep Swin's 7x7 shifted windows. The architecture and the state-dict
names follow the public code (LeapLabTHU/FLatten-Transformer, ``models/flatten_swin.py``) so
that ``load_flatten_checkpoint`` reads the official checkpoint by copying tensors, with only our
pruning state (gates, reweights) added from the fresh model.

Why the code is ours rather than the official module: the attention and MLP must be
``PrunableModule``s so that the MAC model, the indicator and surgery work on this model unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import register_model
from torch import Tensor, nn

from prune_core.attention import SoftmaxAttention
from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.mlp import PrunableMlp
from prune_core.models._timm_entry import drop_create_kwargs, init_linear
from prune_core.models.flatten_checkpoint import load_flatten_checkpoint


def _to_windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B·nW, window², C), windows in row-major order per image (as Swin)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).transpose(2, 3)
    return x.reshape(-1, window * window, C)


def _from_windows(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`_to_windows`: (B·nW, window², C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, C).transpose(2, 3)
    return x.reshape(-1, height, width, C)


def shift_mask(resolution: tuple[int, int], window: int, shift: int) -> Tensor:
    """Swin's (nW, window², window²) mask: -100 between tokens that the cyclic shift made
    neighbours without being neighbours in the image, 0 elsewhere."""

    def bands(size: int) -> Tensor:  # 0: untouched, 1: last window, 2: wrapped-around strip
        idx = torch.arange(size)
        return (idx >= size - window).long() + (idx >= size - shift).long()

    H, W = resolution
    region = (bands(H)[:, None] * 3 + bands(W)[None, :]).float()
    labels = _to_windows(region.view(1, H, W, 1), window).squeeze(-1)  # (nW, window²)
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection + LayerNorm (the official ``patch_norm=True``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token of twice the width; runs at the *end* of a stage."""

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        if resolution[0] % 2 or resolution[1] % 2:
            raise ValueError(f"patch merging needs an even resolution, got {resolution}")
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, _, C = x.shape
        H, W = self.resolution
        # Channel order (row offset fastest, then column offset) is the official
        # [x(0,0), x(1,0), x(0,1), x(1,1)], which the trained ``reduction`` expects.
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C)))


class FlattenSwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention, then a prunable MLP, each with drop-path.

    As in the official code a window at least as large as the map becomes the whole map with
    no shift. A shifted *linear* block rolls the map but, like the official focused attention,
    ignores the shift mask; only softmax blocks get one.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window: int,
        shift: int,
        attn_type: str,
        *,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
        focusing_factor: float,
        kernel_size: int,
    ) -> None:
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        if resolution[0] % window or resolution[1] % window:
            raise ValueError(f"resolution {resolution} is not a multiple of window {window}")
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn: nn.Module
        if attn_type == "L":
            self.attn = FocusedLinearAttention(
                dim,
                num_heads,
                window * window,
                (window, window),
                qkv_bias=qkv_bias,
                focusing_factor=focusing_factor,
                kernel_size=kernel_size,
                proj_drop=drop,
            )
        else:
            self.attn = SoftmaxAttention(
                dim, num_heads, qkv_bias=qkv_bias, window_size=(window, window), proj_drop=drop
            )
            nn.init.trunc_normal_(self.attn.relative_position_bias_table, std=0.02)
        use_mask = attn_type == "S" and shift > 0
        self.register_buffer(
            "attn_mask",
            shift_mask(resolution, window, shift) if use_mask else None,
            persistent=False,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = PrunableMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        H, W = self.resolution
        y = self.norm1(x).view(B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_to_windows(y, self.window), mask=self.attn_mask)
        y = _from_windows(y, self.window, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FlattenSwinStage(nn.Module):
    """One resolution: ``blocks`` (shift on every second one), then optional merging."""

    def __init__(self, blocks: Sequence[FlattenSwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class FlattenSwinTransformer(nn.Module):
    """FLatten-Swin; ``attn_type`` has one letter per stage, 'L' (focused linear) or 'S'.

    ``window_size`` is the softmax window; ``la_window_size`` the linear-attention window
    (56 in the official configs: the whole stage-1 map at 224). The model is built for one
    ``img_size``: the shift masks and the positional encodings depend on it.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        la_window_size: int = 56,
        attn_type: str = "LLSS",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        stages = len(depths)
        if len(num_heads) != stages or len(attn_type) != stages or set(attn_type) - {"L", "S"}:
            raise ValueError(
                f"need one head count and one L/S letter per stage ({stages}); got "
                f"num_heads={tuple(num_heads)}, attn_type={attn_type!r}"
            )
        side = img_size // patch_size
        if img_size % patch_size or side % 2 ** (stages - 1):
            raise ValueError(
                f"img_size {img_size} / patch {patch_size} must give a map "
                f"divisible by {2 ** (stages - 1)}"
            )
        self.img_size = img_size
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (stages - 1)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads, kind) in enumerate(zip(depths, num_heads, attn_type, strict=True)):
            dim, res = embed_dim * 2**i, (side // 2**i, side // 2**i)
            window = la_window_size if kind == "L" else window_size
            first = sum(depths[:i])
            blocks = [
                FlattenSwinBlock(
                    dim,
                    res,
                    heads,
                    window,
                    j % 2 * (window // 2),
                    kind,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    drop_path=rates[first + j],
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                )
                for j in range(depth)
            ]
            merge = PatchMerging(res, dim) if i < stages - 1 else None
            self.layers.append(FlattenSwinStage(blocks, merge))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.apply(init_linear)
        self.pretrained_cfg = self.default_cfg = {
            "architecture": "flatten_swin",
            "num_classes": num_classes,
            "input_size": (in_chans, img_size, img_size),
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        }

    def no_weight_decay(self) -> set[str]:
        """The official recipe exempts relative position bias tables from weight decay."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normalised tokens (B, L, num_features) of the last stage."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"this model was built for {self.img_size}x{self.img_size} "
                f"inputs, got {tuple(x.shape[-2:])}"
            )
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only average pooling is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _create(name: str, pretrained: bool, defaults: dict, kwargs: dict) -> FlattenSwinTransformer:
    if pretrained:
        raise ValueError(
            f"{name}: no weights are downloaded; build it with pretrained=False and "
            "call prune_core.models.load_flatten_checkpoint(model, path) with the "
            "official checkpoint file"
        )
    return FlattenSwinTransformer(**{**defaults, **drop_create_kwargs(kwargs)})


@register_model
def flatten_swin_tiny(pretrained: bool = False, **kwargs) -> FlattenSwinTransformer:
    """FLatten-Swin-T: 224, patch 4, embed 96, depths 2-2-6-2, heads 3-6-12-24, "LLSS"."""
    return _create("flatten_swin_tiny", pretrained, {}, kwargs)


@register_model
def flatten_swin_small(pretrained: bool = False, **kwargs) -> FlattenSwinTransformer:
    """FLatten-Swin-S: 224, patch 4, embed 96, depths 2-2-18-2, heads 3-6-12-24, "LLSS",
    drop path 0.3 (official cfgs/flatten_swin_s.yaml; paper: 51 M params, 8.7 G MACs)."""
    defaults = {"depths": (2, 2, 18, 2), "drop_path_rate": 0.3}
    return _create("flatten_swin_small", pretrained, defaults, kwargs)


@register_model
def flatten_swin_base(pretrained: bool = False, **kwargs) -> FlattenSwinTransformer:
    """FLatten-Swin-B: 224, patch 4, embed 128, depths 2-2-18-2, heads 4-8-16-32, "LLSS",
    drop path 0.5 (official cfgs/flatten_swin_b.yaml; paper: 89 M params, 15.4 G MACs)."""
    defaults = {
        "embed_dim": 128,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "drop_path_rate": 0.5,
    }
    return _create("flatten_swin_base", pretrained, defaults, kwargs)


@register_model
def flatten_swin_micro(pretrained: bool = False, **kwargs) -> FlattenSwinTransformer:
    """CPU-test size: 32x32 in 2x2 patches, embed 32, depths 1-1-2-1, heads 1-2-4-8.

    Window 2 keeps one shifted, masked softmax block (stage 3 runs on a 4x4 map).
    """
    defaults = {
        "img_size": 32,
        "patch_size": 2,
        "embed_dim": 32,
        "depths": (1, 1, 2, 1),
        "num_heads": (1, 2, 4, 8),
        "window_size": 2,
        "drop_path_rate": 0.0,
    }
    return _create("flatten_swin_micro", pretrained, defaults, kwargs)


__all__ = [
    "FlattenSwinTransformer",
    "flatten_swin_base",
    "flatten_swin_micro",
    "flatten_swin_small",
    "flatten_swin_tiny",
    "load_flatten_checkpoint",
    "shift_mask",
]
