"""timm models -> prunable modules, weights kept, outputs unchanged.

``make_prunable`` swaps each module our prunable classes represent *exactly* for its prunable
twin: timm ``Attention`` (ViT, DeiT, DeiT3, DINOv2, qk-norm ViTs), Swin ``WindowAttention``,
BEiT/BEiTv2 ``Attention``, Swin V2 ``WindowAttention``, EVA/EVA-02 ``EvaAttention``, and the
MLPs ``Mlp``, ``SwiGLU`` and ``GluMlp``. It reuses the original ``Linear`` modules, tables,
norms, activation and dropouts; reusing (rather than copying) keeps parameter identity,
device, dtype and ``requires_grad``, so an optimizer or EMA built before conversion still points
at the live weights (the exceptions, fused q/v biases and EVA's separate projections, are in
``prune_core.timm_attention``). Layers that transform q/k over the head (qk-norm, cosine
attention, rotary embedding) keep q/k at full width and are reported once. Anything it cannot
represent exactly (scale-norm, gated output, a different output width, a hidden norm in the
MLP, other attention kinds) is left alone and named in one warning: an approximate swap would
silently change the model.
"""

from __future__ import annotations

import logging
import warnings

from timm.layers import GluMlp, Mlp, SwiGLU
from timm.layers.attention import Attention
from timm.models import beit, eva, swin_transformer_v2
from timm.models.swin_transformer import WindowAttention
from torch import nn

from prune_core.attention import attention_modules
from prune_core.converters import (
    ATTENTION,
    BEIT,
    CONVERTERS,
    EVA,
    EVA_ROPE,
    GLU_MLP,
    MLP,
    MLP_KINDS,
    SWIN_V2,
    WINDOW_ATTENTION,
    is_identity,
)
from prune_core.hf_converters import (
    HF_MLP_KINDS,
    is_transformers_module,
    keep_weight_records,
    survey_kind,
)
from prune_core.hf_converters import SUPPORTED as HF_SUPPORTED
from prune_core.hf_converters import convert as convert_hf
from prune_core.prunable import PrunableModule
from prune_core.timm_attention import TimmBlockAttention

logger = logging.getLogger(__name__)


def _attention_issue(m: nn.Module) -> str | None:
    """Why a timm ``Attention`` cannot become a ``SoftmaxAttention`` exactly (None: it can)."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return "no fused qkv / proj Linear (separate q/k/v projections)"
    if not is_identity(getattr(m, "norm", None)):
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


def _fused_issue(m: nn.Module) -> str | None:
    """BEiT / Swin V2 / EVA (fused): one bias-free ``qkv`` Linear, q/v biases apart."""
    if not isinstance(m.qkv, nn.Linear) or not isinstance(m.proj, nn.Linear):
        return "no fused qkv / proj Linear"
    if m.qkv.bias is not None or m.qkv.out_features % (3 * m.num_heads):
        return "qkv layout differs from timm's (3 x heads x head_dim, bias apart)"
    if m.proj.out_features != m.qkv.in_features:
        return "output width differs from input width"
    return None


def _eva_issue(m: nn.Module) -> str | None:
    if not is_identity(m.norm):
        return "scale_norm (a norm over all heads' v before proj: v cannot lose a channel exactly)"
    if m.gate is not None:
        return "gated attention output"
    if m.qkv is None:
        parts = (m.q_proj, m.k_proj, m.v_proj)
        return None if all(isinstance(p, nn.Linear) for p in parts) else "no q/k/v Linear"
    return _fused_issue(m)


def _glu_issue(m: nn.Module) -> str | None:
    linears = (m.fc1_g, m.fc1_x, m.fc2) if isinstance(m, SwiGLU) else (m.fc1, m.fc2)
    if not all(isinstance(x, nn.Linear) for x in linears):
        return "use_conv GLU MLP (1x1 convs, not Linear)"
    if not isinstance(m, SwiGLU) and m.chunk_dim != -1:
        return f"GluMlp with chunk_dim={m.chunk_dim}"
    if not is_identity(m.norm):
        return "GLU MLP with a hidden norm (scale_mlp: a unit cannot go exactly)"
    return None


def _mlp_issue(m: Mlp) -> str | None:
    if not isinstance(m.fc1, nn.Linear) or not isinstance(m.fc2, nn.Linear):
        return "use_conv Mlp (1x1 convs, not Linear)"
    if not is_identity(m.norm):
        return "Mlp with a hidden norm"
    return None


def _survey(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(convertible path -> kind, skipped path -> reason) without touching the model."""
    convert: dict[str, str] = {}
    skipped: dict[str, str] = {}
    done: list[str] = []  # subtrees that are already ours or will be replaced
    # EVA passes its rotary table to every block at call time: the model says whether it has one
    rotary = getattr(model, "rope", None) is not None
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
        elif type(m) is beit.Attention:
            kind, issue = BEIT, _fused_issue(m)
        elif type(m) is swin_transformer_v2.WindowAttention:
            kind, issue = SWIN_V2, _fused_issue(m)
        elif type(m) is eva.EvaAttention:
            kind, issue = (EVA_ROPE if rotary else EVA), _eva_issue(m)
        elif type(m) is Mlp:
            kind, issue = MLP, _mlp_issue(m)
        elif type(m) in (SwiGLU, GluMlp):
            kind, issue = GLU_MLP, _glu_issue(m)
        elif is_transformers_module(m):
            parent = model.get_submodule(path.rpartition(".")[0]) if path else None
            kind, issue = survey_kind(m, parent)
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
    """Dry run: path -> kind that make_prunable converts (attention, window_attention, beit,
    swin_v2, eva, eva_rope, mlp, glu_mlp)."""
    return _survey(model)[0]


def make_prunable(model: nn.Module, *, verbose: bool = True) -> nn.Module:
    """Swap every exactly-representable attention / MLP for its prunable twin, in place.

    Before any mask is set the converted model computes the same function (fp32 max abs diff
    ~1e-6). Idempotent: modules that are already prunable are left as they are. Raises
    ``ValueError`` (before changing anything) when the result would have no prunable
    attention, since the method has nothing to search then. ``verbose`` logs a summary at INFO.
    """
    convert, skipped = _survey(model)
    mlp_kinds = MLP_KINDS + HF_MLP_KINDS
    if not attention_modules(model) and not any(k not in mlp_kinds for k in convert.values()):
        detail = f"; left alone: {skipped}" if skipped else ""
        raise ValueError(
            f"make_prunable: {type(model).__name__} has no attention module it can "
            "prune (supported: timm Attention, Swin and Swin V2 WindowAttention, BEiT "
            f"Attention, EvaAttention, prune_core attention; {HF_SUPPORTED}){detail}"
        )
    replaced_hf = []  # (path, original class, twin): transformers' weight records follow
    for path, kind in convert.items():
        old = model.get_submodule(path)
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if path else None
        new = CONVERTERS[kind](old) if kind in CONVERTERS else convert_hf(kind, old, parent)
        if kind not in CONVERTERS:
            replaced_hf.append((path, type(old), new))
        if parent is None:
            model = new
            continue
        setattr(parent, child, new)
    keep_weight_records(model, replaced_hf)
    if skipped:
        listing = "; ".join(f"{path}: {reason}" for path, reason in skipped.items())
        warnings.warn(
            f"make_prunable left {len(skipped)} module(s) of {type(model).__name__} "
            f"unconverted (not exactly representable): {listing}",
            stacklevel=2,
        )
    if verbose:
        counts = {kind: list(convert.values()).count(kind) for kind in set(convert.values())}
        whole = qk_kept_whole(model)
        logger.info(
            "make_prunable(%s): converted %s, left alone %d; q/k kept at full width in %d "
            "layer(s) (a norm or rotation over the head: only v and the MLP are pruned there)",
            type(model).__name__,
            counts or "nothing new",
            len(skipped),
            len(whole),
        )
    return model


def qk_kept_whole(model: nn.Module) -> list[str]:
    """Attention layers whose q/k keep every channel (qk-norm, cosine attention, rotary
    embedding transform q/k over the whole head: prune_core.timm_attention explains why)."""
    return [name for name, m in attention_modules(model).items() if not m.qk_prunable]


__all__ = ["TimmBlockAttention", "make_prunable", "qk_kept_whole", "supported_modules"]
