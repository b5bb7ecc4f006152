"""Hugging Face ``transformers`` modules -> prunable twins (``prune_core.hf_attention``,
``PrunableMlp``, ``PrunableGluMlp``), weights kept, outputs unchanged.

**Which modules.** ``transformers`` builds most vision models from copies of a few classes
(its "modular" files generate ``DeiTAttention``, ``Dinov2Attention``, ``BeitAttention``,
``ViTMAEAttention``, ... from ``ViTAttention``). A module is converted when its class's
``forward`` is the *same code* as one of these references (``prune_core.hf_code``: compared
as syntax trees, names of the class, docstrings and type annotations aside), because then it
computes the same function of the attributes the twin reads (the Linear layers,
``num_attention_heads``, ``head_dim``, ``scaling``, ...). For attention, the module's
``eager_attention_forward`` must also be one of the two known forms (ViT's, and DINOv2's
without the float32 softmax upcast: the same in float32), and ``is_causal`` must be False.

- ``hf_attention``: ``vit.ViTAttention`` (ViT, DeiT, DINOv2 and DINOv2 with registers, BEiT,
  and their copies) -> ``HFAttention``;
- ``hf_swin``: ``swin.SwinAttention`` -> ``HFAttention`` with Swin's window bias;
- ``hf_swin_v2``: ``swinv2.Swinv2Attention`` whose ``self`` / ``output`` are
  ``Swinv2SelfAttention`` / ``Swinv2SelfOutput`` code -> ``HFSwinV2Attention``;
- ``hf_mlp``: ``vit.ViTMLP`` (``fc1``, ``activation_fn``, ``fc2``) -> ``PrunableMlp``;
- ``hf_glu_mlp``: ``dinov2.Dinov2SwiGLUFFN`` -> ``PrunableGluMlp``;
- ``hf_split_mlp``: ``swinv2.Swinv2Intermediate`` and its sibling ``Swinv2Output`` ->
  ``PrunableMlp`` in ``intermediate``, the ``output`` slot becoming ``nn.Identity``;
- ``hf_swin_legacy``, ``hf_beit_legacy``: the older ``self`` / ``output`` attention code of
  Donut-Swin, MaskFormer-Swin and Data2Vec-Vision (``prune_core.hf_legacy``).

**Attention weights** (``output_attentions=True``): a model that records them with a hook on
its attention class (``_can_record_outputs``: ViT and its copies) gets the same hook on the
twin (:func:`keep_weight_records`); Swin's stages and the older code take them from the
twin's return value.

The q/k/v projections become one new ``qkv`` Linear (``converters.fuse_linears``); the output
projection, position tables, logit scale and activations are the original objects. Like
EVA's separate projections (``prune_core.timm_attention``), the fused weights are new tensors:
an optimizer built before ``make_prunable`` must be rebuilt. Layer scale (DINOv2, BEiT) and
registers (DINOv2 with registers) live outside the attention and need nothing here.

``transformers`` is imported only when a model holds one of its modules, so ``prune_core``
works without it installed (``pip install flatten-prune[hf]`` adds it).
"""

from __future__ import annotations

import functools
import importlib
import sys

import torch
from torch import nn

from prune_core.converters import adopt, fuse_linears, mlp_twin
from prune_core.hf_attention import HFAttention, HFSwinV2Attention
from prune_core.hf_code import fingerprint, same_forward
from prune_core.hf_legacy import (
    HF_BEIT_LEGACY,
    HF_SWIN_LEGACY,
    convert_legacy,
    self_output_twin,
    survey_legacy,
)
from prune_core.mlp import PrunableGluMlp
from prune_core.prunable import PrunableModule

HF_ATTENTION, HF_SWIN, HF_SWIN_V2 = "hf_attention", "hf_swin", "hf_swin_v2"
HF_MLP, HF_GLU_MLP, HF_SPLIT_MLP = "hf_mlp", "hf_glu_mlp", "hf_split_mlp"
HF_MLP_KINDS = (HF_MLP, HF_GLU_MLP, HF_SPLIT_MLP)
SUPPORTED = (
    "Hugging Face transformers ViT, DeiT, DINOv2 (and with registers), BEiT, Swin and Swin V2 "
    "attention and MLPs, the older attention code of Data2Vec-Vision, Donut-Swin and "
    "MaskFormer-Swin, and every transformers class whose forward is theirs"
)

# (module under transformers.models, class) of each reference
_REFERENCES = {
    HF_ATTENTION: ("vit.modeling_vit", "ViTAttention"),
    HF_SWIN: ("swin.modeling_swin", "SwinAttention"),
    HF_SWIN_V2: ("swinv2.modeling_swinv2", "Swinv2Attention"),
    "swin_v2_self": ("swinv2.modeling_swinv2", "Swinv2SelfAttention"),
    "swin_v2_output": ("swinv2.modeling_swinv2", "Swinv2SelfOutput"),
    HF_MLP: ("vit.modeling_vit", "ViTMLP"),
    HF_GLU_MLP: ("dinov2.modeling_dinov2", "Dinov2SwiGLUFFN"),
    HF_SPLIT_MLP: ("swinv2.modeling_swinv2", "Swinv2Intermediate"),
    "split_mlp_output": ("swinv2.modeling_swinv2", "Swinv2Output"),
}
_EAGER_REFERENCES = ("vit.modeling_vit", "dinov2.modeling_dinov2")


def is_transformers_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from the ``transformers`` package."""
    return type(module).__module__.split(".", 1)[0] == "transformers"


@functools.cache
def _eager_references() -> frozenset[str | None]:
    return frozenset(
        fingerprint(importlib.import_module(f"transformers.models.{m}").eager_attention_forward)
        for m in _EAGER_REFERENCES
    )


def _same_forward(module: nn.Module | None, key: str) -> bool:
    return same_forward(module, *_REFERENCES[key])


def _linears(m: nn.Module, names: tuple[str, ...]) -> bool:
    return all(isinstance(getattr(m, n, None), nn.Linear) for n in names)


def _attention_issue(m: nn.Module) -> str | None:
    """Why a ViTAttention-code module cannot become an ``HFAttention`` exactly (None: it can)."""
    if not _linears(m, ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "q_proj / k_proj / v_proj / o_proj are not all Linear"
    eager = getattr(sys.modules.get(type(m).__module__), "eager_attention_forward", None)
    if eager is None or fingerprint(eager) not in _eager_references():
        return "its eager_attention_forward differs from ViT's"
    if getattr(m, "is_causal", False):
        return "causal attention (is_causal=True)"
    width = m.num_attention_heads * m.head_dim
    if any(getattr(m, p).out_features != width for p in ("q_proj", "k_proj", "v_proj")):
        return "q/k/v widths do not match num_attention_heads x head_dim"
    if m.o_proj.in_features != width or m.o_proj.out_features != m.q_proj.in_features:
        return "o_proj widths differ from the heads' and the input's"
    return None


def _swin_v2_issue(m: nn.Module) -> str | None:
    s, o = getattr(m, "self", None), getattr(m, "output", None)
    if not _same_forward(s, "swin_v2_self") or not _same_forward(o, "swin_v2_output"):
        return "its self / output parts are not Swin V2's"
    if not _linears(s, ("query", "key", "value")) or not _linears(o, ("dense",)):
        return "query / key / value / output.dense are not all Linear"
    return None


def _split_mlp_issue(m: nn.Module, parent: nn.Module | None) -> str | None:
    if not _same_forward(getattr(parent, "output", None), "split_mlp_output"):
        return "no Swin V2 Output beside it to fold in"
    if not isinstance(m.intermediate_act_fn, nn.Module):
        return "its activation is a function, not a module"
    return None


def survey_kind(m: nn.Module, parent: nn.Module | None) -> tuple[str | None, str | None]:
    """(kind, None) for a convertible ``transformers`` module, (None, reason) for an attention
    or MLP class that is not, (None, None) for anything else (module doc)."""
    if _same_forward(m, HF_ATTENTION):
        return HF_ATTENTION, _attention_issue(m)
    if _same_forward(m, HF_SWIN):
        issue = _attention_issue(m)
        if issue is None and not hasattr(m, "relative_position_bias"):
            issue = "no relative_position_bias"
        return HF_SWIN, issue
    if _same_forward(m, HF_SWIN_V2):
        issue = _swin_v2_issue(m)
        if issue is None:
            return HF_SWIN_V2, None
        # Swin's older code has the same outer forward: its parts tell them apart
        kind, legacy_issue = survey_legacy(m)
        return (kind, None) if kind is not None and legacy_issue is None else (HF_SWIN_V2, issue)
    if _same_forward(m, HF_MLP):
        ok = _linears(m, ("fc1", "fc2")) and isinstance(m.activation_fn, nn.Module)
        return HF_MLP, None if ok else "fc1 / fc2 not Linear, or a function as activation"
    if _same_forward(m, HF_GLU_MLP):
        ok = _linears(m, ("gate_proj", "up_proj", "down_proj"))
        return HF_GLU_MLP, None if ok else "gate / up / down projections not all Linear"
    if _same_forward(m, HF_SPLIT_MLP):
        return HF_SPLIT_MLP, _split_mlp_issue(m, parent)
    kind, issue = survey_legacy(m)
    if kind is not None:
        return kind, issue
    name = type(m).__name__
    qualified = f"{type(m).__module__}.{type(m).__qualname__}"
    if "Attention" in name:
        return None, f"unsupported attention class {qualified}"
    if "MLP" in name or "FFN" in name:
        return None, f"unsupported MLP class {qualified}"
    return None, None


def _convert_attention(m: nn.Module, window: tuple[int, int] | None = None) -> PrunableModule:
    new = HFAttention(
        m.q_proj.in_features,
        m.num_attention_heads,
        qk_dim=m.head_dim,
        v_dim=m.head_dim,
        qkv_bias=any(p.bias is not None for p in (m.q_proj, m.k_proj, m.v_proj)),
        proj_bias=m.o_proj.bias is not None,
        scale=m.scaling,
        window_size=window,
        attn_drop=m.attention_dropout,
    )
    reuse = {"qkv": fuse_linears((m.q_proj, m.k_proj, m.v_proj)), "proj": m.o_proj}
    if window is not None:
        bias = m.relative_position_bias
        # Our index is recomputed, not copied: it must be transformers', or the table is misread
        if not torch.equal(
            new.relative_position_index.view(-1), bias.relative_position_index.cpu()
        ):
            raise RuntimeError("relative_position_index differs from transformers'; aborted")
        reuse["relative_position_bias_table"] = bias.relative_position_bias_table
    return adopt(new, m, reuse)


def _convert_swin(m: nn.Module) -> PrunableModule:
    return _convert_attention(m, tuple(m.relative_position_bias.window_size))


def _convert_swin_v2(m: nn.Module) -> PrunableModule:
    s = m.self
    new, reuse = self_output_twin(
        HFSwinV2Attention,
        s,
        m.output,
        window_size=tuple(s.window_size),
        cpb_mlp=s.continuous_position_bias_mlp,
        relative_coords_table=s.relative_coords_table,
        relative_position_index=s.relative_position_index,
    )
    reuse.update(logit_scale=s.logit_scale, cpb_mlp=s.continuous_position_bias_mlp)
    return adopt(new, m, reuse)


def _convert_glu(m: nn.Module) -> PrunableModule:
    new = PrunableGluMlp(
        m.gate_proj.in_features,
        m.gate_proj.out_features,
        m.down_proj.out_features,
        act_layer=nn.Identity,
        bias=m.gate_proj.bias is not None,
    )
    reuse = {"fc1_g": m.gate_proj, "fc1_x": m.up_proj, "act": m.act_fn, "fc2": m.down_proj}
    return adopt(new, m, reuse)


def convert(kind: str, m: nn.Module, parent: nn.Module | None) -> PrunableModule:
    """The prunable twin of ``m`` (of ``kind``, from :func:`survey_kind`); for ``hf_split_mlp``
    the sibling ``parent.output`` is folded into the twin and replaced by ``nn.Identity``."""
    if kind == HF_ATTENTION:
        return _convert_attention(m)
    if kind == HF_SWIN:
        return _convert_swin(m)
    if kind == HF_SWIN_V2:
        return _convert_swin_v2(m)
    if kind == HF_MLP:
        return mlp_twin(m.fc1, m.activation_fn, m.fc2, m)
    if kind == HF_GLU_MLP:
        return _convert_glu(m)
    if kind == HF_SPLIT_MLP:
        out = parent.output
        new = mlp_twin(m.dense, m.intermediate_act_fn, out.dense, m, drop2=out.dropout)
        parent.output = nn.Identity()
        return new
    if kind in (HF_SWIN_LEGACY, HF_BEIT_LEGACY):
        return convert_legacy(kind, m)
    raise ValueError(f"unknown transformers conversion kind {kind!r}")


def _owner(model: nn.Module, path: str) -> nn.Module | None:
    """The innermost ``transformers`` PreTrainedModel holding the module at ``path``: whose
    ``_can_record_outputs`` applies to it (transformers' ``recursively_install_hooks``)."""
    parts = path.split(".")
    for end in range(len(parts) - 1, -1, -1):
        holder = model.get_submodule(".".join(parts[:end]))
        if hasattr(holder, "_can_record_outputs"):
            return holder
    return None


def keep_weight_records(model: nn.Module, replaced: list[tuple[str, type, nn.Module]]) -> None:
    """For each (path, the original's class, its twin): when the model records attention
    weights with a hook on that class (``"attentions"`` in ``_can_record_outputs``), the same
    hook on the twin, which is no instance of it; when the hook cannot be had, the twin's
    ``weights_recorded`` is False (it refuses ``output_attentions=True`` in one line)."""
    for path, old_class, new in replaced:
        if not hasattr(new, "weights_recorded"):
            continue  # an MLP
        owner = _owner(model, path)
        specs = (getattr(owner, "_can_record_outputs", None) or {}).get("attentions") or []
        for spec in specs if isinstance(specs, list) else [specs]:
            target = spec if isinstance(spec, type) else getattr(spec, "target_class", None)
            named = getattr(spec, "class_name", None)
            if not (
                (target is not None and issubclass(old_class, target))
                or (named and path.endswith(named))
            ):
                continue  # recorded elsewhere (Swin's stages): the twin's return suffices
            try:  # transformers' own hook (its spelling), so the weights land where it reads
                from transformers.utils.output_capturing import install_output_capuring_hook
            except ImportError:
                new.weights_recorded = False
                continue
            index = 1 if isinstance(spec, type) else spec.index
            install_output_capuring_hook(new, "attentions", index)


__all__ = [
    "HF_MLP_KINDS",
    "SUPPORTED",
    "convert",
    "is_transformers_module",
    "keep_weight_records",
    "survey_kind",
]
