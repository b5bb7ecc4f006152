"""timm ViT/DeiT/Swin -> prunable modules, weights kept, outputs unchanged.

``make_prunable`` swaps each module our prunable classes represent *exactly* — timm
``Attention``, Swin ``WindowAttention``, a plain ``Mlp`` — for its prunable twin, reusing the
original ``Linear`` modules, bias table, activation and dropouts. Reusing (rather than copying)
keeps parameter identity, device, dtype and ``requires_grad``, so an optimizer or EMA built
before conversion still points at the live weights. Anything it cannot represent exactly
(qk-norm, scale-norm, gated output, a different output width, GLU MLPs, other attention kinds)
is left alone and named in one warning: an approximate swap would silently change the model.
"""

from __future__ import annotations

import logging
import warnings

import torch
from timm.layers import Mlp
from timm.layers.attention import Attention, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention
from torch import Tensor, nn

from prune_core.attention import SoftmaxAttention, attention_modules
from prune_core.mlp import PrunableMlp
from prune_core.prunable import PrunableModule

logger = logging.getLogger(__name__)

ATTENTION, WINDOW_ATTENTION, MLP = "attention", "window_attention", "mlp"


class TimmBlockAttention(SoftmaxAttention):
    """``SoftmaxAttention`` that also takes timm ``Block``'s call, ``attn(x, attn_mask=, ...)``.

    timm's ViT blocks pass ``attn_mask`` and ``is_causal`` by keyword; this subclass resolves
    them to one additive bias with timm's own helper (same semantics for bool and float masks)
    and hands it to the parent through ``mask``, so everything else (gates, MACs, surgery)
    is the parent's unchanged code.
    """

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        if mask is not None and (attn_mask is not None or is_causal):
            raise ValueError("pass either mask or attn_mask/is_causal, not both")
        if attn_mask is not None or is_causal:
            mask = resolve_self_attn_mask(x.shape[1], x, attn_mask, is_causal)
        return super().forward(x, mask)

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        return mask  # global attention: the mask is already an additive (…, N, N) bias


def _is_identity(module: object) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _attention_issue(m: nn.Module) -> str | None:
    """Why a timm ``Attention`` cannot become a ``SoftmaxAttention`` exactly (None: it can)."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return "no fused qkv / proj Linear (separate q/k/v projections)"
    if not (_is_identity(getattr(m, "q_norm", None)) and _is_identity(getattr(m, "k_norm", None))):
        return "qk_norm (q_norm/k_norm are not Identity)"
    if not _is_identity(getattr(m, "norm", None)):
        return "scale_norm (norm before proj is not Identity)"
    if getattr(m, "gate", None) is not None:
        return "gated attention output"
    heads, head_dim = m.num_heads, m.head_dim
    if qkv.out_features != 3 * heads * head_dim or proj.in_features != heads * head_dim:
        return "qkv/proj widths do not match num_heads x head_dim"
    if proj.out_features != qkv.in_features:
        return f"dim_out {proj.out_features} differs from dim {qkv.in_features}"
    return None


def _window_issue(m: WindowAttention) -> str | None:
    if not isinstance(m.qkv, nn.Linear) or not isinstance(m.proj, nn.Linear):
        return "no fused qkv / proj Linear"
    heads = m.num_heads
    if m.qkv.out_features % (3 * heads) or m.proj.in_features * 3 != m.qkv.out_features:
        return "qkv/proj widths do not match num_heads x head_dim"
    if m.proj.out_features != m.qkv.in_features:
        return "output width differs from input width"
    return None


def _mlp_issue(m: Mlp) -> str | None:
    if not isinstance(m.fc1, nn.Linear) or not isinstance(m.fc2, nn.Linear):
        return "use_conv Mlp (1x1 convs, not Linear)"
    if not _is_identity(m.norm):
        return "Mlp with a hidden norm"
    return None


def _survey(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(convertible path -> kind, skipped path -> reason) without touching the model."""
    convert: dict[str, str] = {}
    skipped: dict[str, str] = {}
    done: list[str] = []  # subtrees that are already ours or will be replaced
    for path, m in model.named_modules():
        if any(path == p or path.startswith(p + ".") for p in done):
            continue
        name = type(m).__name__
        # the full name: BEiT's own ``Attention`` is not timm.layers' Attention (which we prune)
        qualified = f"{type(m).__module__}.{type(m).__qualname__}"
        if isinstance(m, PrunableModule):
            done.append(path)
            continue
        kind, issue = None, None
        if type(m) is Attention:
            kind, issue = ATTENTION, _attention_issue(m)
        elif type(m) is WindowAttention:
            kind, issue = WINDOW_ATTENTION, _window_issue(m)
        elif type(m) is Mlp:
            kind, issue = MLP, _mlp_issue(m)
        elif "Attention" in name:
            issue = f"unsupported attention class {qualified}"
        elif "Mlp" in name or "SwiGLU" in name:
            issue = f"unsupported MLP class {qualified}"
        if kind is not None and issue is None:
            convert[path] = kind
            done.append(path)
        elif issue is not None:
            skipped[path or "<root>"] = issue
    return convert, skipped


def supported_modules(model: nn.Module) -> dict[str, str]:
    """Dry run: path -> kind (attention / window_attention / mlp) that make_prunable converts."""
    return _survey(model)[0]


def _adopt(new: PrunableModule, old: nn.Module, reuse: dict[str, nn.Module]) -> PrunableModule:
    """Give ``new`` the original's device, dtype and mode, then move the original parts in.

    Parts are assigned *after* ``.to``/``.train`` so each keeps its own device, dtype and mode.
    """
    ref = next(old.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    for name, part in reuse.items():
        setattr(new, name, part)
    return new


def _convert_attention(m: Attention) -> PrunableModule:
    new = TimmBlockAttention(
        m.qkv.in_features,
        m.num_heads,
        qk_dim=m.head_dim,
        v_dim=m.head_dim,
        qkv_bias=m.qkv.bias is not None,
        proj_bias=m.proj.bias is not None,
        scale=m.scale,
        attn_drop=m.attn_drop.p,
        proj_drop=m.proj_drop.p,
    )
    return _adopt(
        new, m, {"qkv": m.qkv, "proj": m.proj, "attn_drop": m.attn_drop, "proj_drop": m.proj_drop}
    )


def _convert_window(m: WindowAttention) -> PrunableModule:
    head_dim = m.qkv.out_features // (3 * m.num_heads)
    new = SoftmaxAttention(
        m.qkv.in_features,
        m.num_heads,
        qk_dim=head_dim,
        v_dim=head_dim,
        qkv_bias=m.qkv.bias is not None,
        proj_bias=m.proj.bias is not None,
        scale=m.scale,
        window_size=tuple(m.window_size),
        attn_drop=m.attn_drop.p,
        proj_drop=m.proj_drop.p,
    )
    # Our index is recomputed, not copied: it must be timm's, or the bias table is misread.
    if not torch.equal(new.relative_position_index, m.relative_position_index.cpu()):
        raise RuntimeError("relative_position_index differs from timm's; conversion aborted")
    return _adopt(
        new,
        m,
        {
            "qkv": m.qkv,
            "proj": m.proj,
            "attn_drop": m.attn_drop,
            "proj_drop": m.proj_drop,
            "relative_position_bias_table": m.relative_position_bias_table,
        },
    )


def _convert_mlp(m: Mlp) -> PrunableModule:
    # act_layer=Identity, then the original act instance: its arguments (e.g. GELU's
    # approximate='tanh') cannot be recovered from its class alone.
    new = PrunableMlp(
        m.fc1.in_features,
        m.fc1.out_features,
        m.fc2.out_features,
        act_layer=nn.Identity,
        bias=m.fc1.bias is not None,
        drop=m.drop1.p,
    )
    return _adopt(
        new, m, {"fc1": m.fc1, "act": m.act, "drop1": m.drop1, "fc2": m.fc2, "drop2": m.drop2}
    )


_CONVERTERS = {ATTENTION: _convert_attention, WINDOW_ATTENTION: _convert_window, MLP: _convert_mlp}


def make_prunable(model: nn.Module, *, verbose: bool = True) -> nn.Module:
    """Swap every exactly-representable attention / MLP for its prunable twin, in place.

    Before any mask is set the converted model computes the same function (fp32 max abs diff
    ~1e-6). Idempotent: modules that are already prunable are left as they are. Raises
    ``ValueError`` (before changing anything) when the result would have no prunable
    attention, since the method has nothing to search then. ``verbose`` logs a summary at INFO.
    """
    convert, skipped = _survey(model)
    if not attention_modules(model) and not any(k != MLP for k in convert.values()):
        detail = f"; left alone: {skipped}" if skipped else ""
        raise ValueError(
            f"make_prunable: {type(model).__name__} has no attention module it can "
            "prune (supported: timm Attention, Swin WindowAttention, prune_core "
            f"attention){detail}"
        )
    for path, kind in convert.items():
        old = model.get_submodule(path)
        new = _CONVERTERS[kind](old)
        if not path:
            model = new
            continue
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    if skipped:
        listing = "; ".join(f"{path}: {reason}" for path, reason in skipped.items())
        warnings.warn(
            f"make_prunable left {len(skipped)} module(s) of {type(model).__name__} "
            f"unconverted (not exactly representable): {listing}",
            stacklevel=2,
        )
    if verbose:
        counts = {kind: list(convert.values()).count(kind) for kind in set(convert.values())}
        logger.info(
            "make_prunable(%s): converted %s, left alone %d",
            type(model).__name__,
            counts or "nothing new",
            len(skipped),
        )
    return model


__all__ = ["TimmBlockAttention", "make_prunable", "supported_modules"]
