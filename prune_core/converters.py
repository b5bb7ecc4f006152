"""Converters: one timm module -> its prunable twin, with the original parts moved in.

Each ``_convert_*`` builds the prunable class with the original's sizes and hands it the
original ``Linear`` modules, tables, norms, activation and dropouts (``adopt``), so weights,
device, dtype and ``requires_grad`` carry over and an optimizer built before conversion still
points at the live weights. Where timm keeps q/v biases apart from the ``qkv`` weight, or EVA
keeps separate q/k/v projections, ``_fused_qkv`` makes the one ``qkv`` Linear the prunable
classes use (weight Parameter reused when it is one tensor; the fused bias is new).
``prune_core.convert.make_prunable`` decides which modules to convert (the ``kind``).
"""

from __future__ import annotations

import torch
from timm.layers import GluMlp, Mlp, SwiGLU
from timm.layers.attention import Attention
from timm.models import beit, eva, swin_transformer_v2
from timm.models.swin_transformer import WindowAttention
from torch import nn

from prune_core.attention import SoftmaxAttention
from prune_core.mlp import PrunableGluMlp, PrunableMlp
from prune_core.prunable import PrunableModule
from prune_core.timm_attention import (
    BeitAttention,
    EvaAttention,
    SwinV2WindowAttention,
    TimmBlockAttention,
)

ATTENTION, WINDOW_ATTENTION, MLP = "attention", "window_attention", "mlp"
BEIT, SWIN_V2, EVA, EVA_ROPE, GLU_MLP = "beit", "swin_v2", "eva", "eva_rope", "glu_mlp"
MLP_KINDS = (MLP, GLU_MLP)


def is_identity(module: object) -> bool:
    """An absent or ``nn.Identity`` optional part (timm's way of switching one off)."""
    return module is None or isinstance(module, nn.Identity)


def adopt(new: PrunableModule, old: nn.Module, reuse: dict[str, nn.Module]) -> PrunableModule:
    """Give ``new`` the original's device, dtype and mode, then move the original parts in.

    Parts are assigned *after* ``.to``/``.train`` so each keeps its own device, dtype and mode.
    """
    ref = next(old.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    for name, part in reuse.items():
        setattr(new, name, part)
    return new


def _norm_or_none(module: nn.Module | None) -> nn.Module | None:
    return None if is_identity(module) else module


def _sizes(m: nn.Module, qkv: nn.Linear, head_dim: int) -> dict:
    """What every timm attention's twin is built with beside its own extras: the widths
    (q/k and v heads alike), which biases exist, the dropout rates."""
    return {
        "qk_dim": head_dim,
        "v_dim": head_dim,
        "qkv_bias": qkv.bias is not None,
        "proj_bias": m.proj.bias is not None,
        "attn_drop": m.attn_drop.p,
        "proj_drop": m.proj_drop.p,
    }


def _parts(m: nn.Module, qkv: nn.Linear) -> dict[str, nn.Module]:
    """The parts every timm attention hands its twin (``qkv`` possibly fused anew)."""
    return {"qkv": qkv, "proj": m.proj, "attn_drop": m.attn_drop, "proj_drop": m.proj_drop}


def _convert_attention(m: Attention) -> PrunableModule:
    q_norm, k_norm = _norm_or_none(m.q_norm), _norm_or_none(m.k_norm)
    new = TimmBlockAttention(
        m.qkv.in_features,
        m.num_heads,
        scale=m.scale,
        q_norm=q_norm,
        k_norm=k_norm,
        **_sizes(m, m.qkv, m.head_dim),
    )
    reuse = _parts(m, m.qkv)
    if q_norm is not None or k_norm is not None:
        reuse.update(q_norm=m.q_norm, k_norm=m.k_norm)
    return adopt(new, m, reuse)


def fuse_linears(parts: tuple[nn.Linear, ...]) -> nn.Linear:
    """One Linear computing ``cat([p(x) for p in parts], -1)``: separate q/k/v projections
    (EVA, Hugging Face ``transformers``) as the one ``qkv`` the prunable classes use.

    Weights are stacked (new tensors) on the first part's device and dtype; a part without a
    bias contributes zeros (BEiT's and Swin V2's bias-free k). No bias when no part has one.
    """
    ref = parts[0].weight
    weight = torch.cat([p.weight for p in parts])
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat(
            [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in parts]
        )
    qkv = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=ref.device, dtype=ref.dtype
    )
    with torch.no_grad():
        qkv.weight.copy_(weight)
        if bias is not None:
            qkv.bias.copy_(bias)
    qkv.requires_grad_(ref.requires_grad)
    return qkv


def _fused_qkv(m: nn.Module) -> nn.Linear:
    """One ``qkv`` Linear for BEiT / Swin V2 / EVA: the original weight Parameter, and the
    q | 0 | v biases (k has none) as one new bias; EVA's separate q/k/v projections fused."""
    if getattr(m, "qkv", None) is None:  # EVA with qkv_fused=False
        return fuse_linears((m.q_proj, m.k_proj, m.v_proj))
    ref = next(m.parameters())
    weight = m.qkv.weight
    bias = None if m.q_bias is None else torch.cat((m.q_bias, m.k_bias, m.v_bias))
    qkv = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=ref.device, dtype=ref.dtype
    )
    qkv.weight = weight  # reuse: an optimizer over the model still sees it
    if bias is not None:
        with torch.no_grad():
            qkv.bias.copy_(bias)
    return qkv


def _fused_twin(cls: type, m: nn.Module, **extra) -> tuple[PrunableModule, dict[str, nn.Module]]:
    """A ``cls`` twin of BEiT's or Swin V2's attention (q and v biases kept apart from ``qkv``,
    k without one), sized from ``m.qkv``, and the parts it reuses with the biases fused in."""
    head_dim = m.qkv.out_features // (3 * m.num_heads)
    qkv = _fused_qkv(m)
    new = cls(m.qkv.in_features, m.num_heads, **extra, **_sizes(m, qkv, head_dim))
    return new, _parts(m, qkv)


def _convert_beit(m: beit.Attention) -> PrunableModule:
    new, reuse = _fused_twin(
        BeitAttention, m, scale=m.scale, relative_position_index=m.relative_position_index
    )
    if m.relative_position_bias_table is not None:
        reuse["relative_position_bias_table"] = m.relative_position_bias_table
    return adopt(new, m, reuse)


def _convert_swin_v2(m: swin_transformer_v2.WindowAttention) -> PrunableModule:
    new, reuse = _fused_twin(
        SwinV2WindowAttention,
        m,
        window_size=tuple(m.window_size),
        cpb_mlp=m.cpb_mlp,
        relative_coords_table=m.relative_coords_table,
        relative_position_index=m.relative_position_index,
    )
    reuse.update(logit_scale=m.logit_scale, cpb_mlp=m.cpb_mlp)
    return adopt(new, m, reuse)


def _convert_eva(m: eva.EvaAttention, rotary: bool) -> PrunableModule:
    qkv = _fused_qkv(m)
    q_norm, k_norm = _norm_or_none(m.q_norm), _norm_or_none(m.k_norm)
    new = EvaAttention(
        qkv.in_features,
        m.num_heads,
        scale=m.scale,
        qk_prunable=not rotary and q_norm is None and k_norm is None,
        num_prefix_tokens=m.num_prefix_tokens,
        rotate_half=getattr(m, "rotate_half", False),
        q_norm=q_norm,
        k_norm=k_norm,
        **_sizes(m, qkv, m.head_dim),
    )
    reuse = _parts(m, qkv)
    if q_norm is not None or k_norm is not None:
        reuse.update(q_norm=m.q_norm, k_norm=m.k_norm)
    return adopt(new, m, reuse)


def _convert_window(m: WindowAttention) -> PrunableModule:
    head_dim = m.qkv.out_features // (3 * m.num_heads)
    new = SoftmaxAttention(
        m.qkv.in_features,
        m.num_heads,
        scale=m.scale,
        window_size=tuple(m.window_size),
        **_sizes(m, m.qkv, head_dim),
    )
    # Our index is recomputed, not copied: it must be timm's, or the bias table is misread.
    if not torch.equal(new.relative_position_index, m.relative_position_index.cpu()):
        raise RuntimeError("relative_position_index differs from timm's; conversion aborted")
    table = m.relative_position_bias_table
    return adopt(new, m, {**_parts(m, m.qkv), "relative_position_bias_table": table})


def mlp_twin(
    fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, old: nn.Module, drop: float = 0.0, **extra
) -> PrunableMlp:
    """The ``PrunableMlp`` twin of an MLP ``old`` made of ``fc1``, ``act`` and ``fc2`` (timm's
    ``Mlp``, ``transformers``' intermediate / output pair), holding those very parts and
    ``extra`` ones (its dropouts). ``act_layer=Identity``, then the original ``act`` instance:
    its arguments (e.g. GELU's approximate='tanh') cannot be recovered from its class alone."""
    new = PrunableMlp(
        fc1.in_features,
        fc1.out_features,
        fc2.out_features,
        act_layer=nn.Identity,
        bias=fc1.bias is not None,
        drop=drop,
    )
    return adopt(new, old, {"fc1": fc1, "act": act, "fc2": fc2, **extra})


def _convert_mlp(m: Mlp) -> PrunableModule:
    return mlp_twin(m.fc1, m.act, m.fc2, m, m.drop1.p, drop1=m.drop1, drop2=m.drop2)


def _convert_glu(m: SwiGLU | GluMlp) -> PrunableModule:
    ref = next(m.parameters())
    if isinstance(m, SwiGLU):
        fc1_g, fc1_x = m.fc1_g, m.fc1_x
    else:  # GluMlp packs [x1 | x2] in fc1: act(x2) * x1 if gate_last, else act(x1) * x2
        fc1_g, fc1_x = (
            nn.Linear(
                m.fc1.in_features,
                m.fc1.out_features // 2,
                bias=m.fc1.bias is not None,
                device=ref.device,
                dtype=ref.dtype,
            )
            for _ in range(2)
        )
        halves = (1, 0) if m.gate_last else (0, 1)  # (gate half, value half)
        with torch.no_grad():
            w, b = m.fc1.weight.chunk(2), (m.fc1.bias.chunk(2) if m.fc1.bias is not None else None)
            for linear, half in zip((fc1_g, fc1_x), halves, strict=True):
                linear.weight.copy_(w[half])
                if b is not None:
                    linear.bias.copy_(b[half])
    new = PrunableGluMlp(
        fc1_g.in_features,
        fc1_g.out_features,
        m.fc2.out_features,
        act_layer=nn.Identity,
        bias=fc1_g.bias is not None,
        drop=m.drop1.p,
    )
    reuse = {"fc1_g": fc1_g, "fc1_x": fc1_x, "act": m.act, "drop1": m.drop1, "fc2": m.fc2}
    return adopt(new, m, {**reuse, "drop2": m.drop2})


CONVERTERS = {
    ATTENTION: _convert_attention,
    WINDOW_ATTENTION: _convert_window,
    BEIT: _convert_beit,
    SWIN_V2: _convert_swin_v2,
    EVA: lambda m: _convert_eva(m, rotary=False),
    EVA_ROPE: lambda m: _convert_eva(m, rotary=True),
    MLP: _convert_mlp,
    GLU_MLP: _convert_glu,
}
