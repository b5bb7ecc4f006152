"""``transformers``' older attention code -> prunable twins (``prune_core.hf_attention``).

Some models keep the attention ``transformers`` had before its v5 rewrite: an ``XAttention``
holding a part that computes the softmax attention (``self`` or ``attention``) and an
``output`` part with the output projection, passing ``output_attentions`` down and the
attention probabilities back up. Two such codes are the same computation as a supported family
(checked by the same contract tests: converted vs original, masked == pruned, MACs):

- ``hf_swin_legacy``: Swin's older code (``donut.DonutSwinAttention`` and its copies:
  MaskFormer-Swin): scores q·kᵀ/√d + the window's relative position bias + the shift mask
  (added once), softmax, ·v, ``output.dense`` -> ``HFLegacySwinAttention``;
- ``hf_beit_legacy``: BEiT's older code (``data2vec.Data2VecVisionAttention``, eager or SDPA
  self-attention): q·kᵀ/√d + the layer's own relative position bias (its module, kept) + the
  model's shared bias, softmax, ·v, ``output.dense`` -> ``HFLegacyBeitAttention``.

A module is one of them when its class's ``forward`` and its two parts' are the same code as
these references (``prune_core.hf_code``); their MLPs (``intermediate`` / ``output``) are Swin
V2's code and convert as ``hf_split_mlp``.
"""

from __future__ import annotations

import torch
from torch import nn

from prune_core.converters import adopt, fuse_linears
from prune_core.hf_attention import HFLegacyBeitAttention, HFLegacySwinAttention
from prune_core.hf_code import same_forward
from prune_core.prunable import PrunableModule

HF_SWIN_LEGACY, HF_BEIT_LEGACY = "hf_swin_legacy", "hf_beit_legacy"
# kind: (module, the XAttention class, its softmax part's name, that part's classes, output's)
_REFERENCES = {
    HF_SWIN_LEGACY: (
        "donut.modeling_donut_swin",
        "DonutSwinAttention",
        "self",
        ("DonutSwinSelfAttention",),
        "DonutSwinSelfOutput",
    ),
    HF_BEIT_LEGACY: (
        "data2vec.modeling_data2vec_vision",
        "Data2VecVisionAttention",
        "attention",
        ("Data2VecVisionSelfAttention", "Data2VecVisionSdpaSelfAttention"),
        "Data2VecVisionSelfOutput",
    ),
}


def _issue(m: nn.Module, kind: str) -> str | None:
    """Why ``m`` (whose forward is ``kind``'s) cannot become its twin exactly (None: it can)."""
    module, _, part, part_classes, output = _REFERENCES[kind]
    s, o = getattr(m, part, None), getattr(m, "output", None)
    if not any(same_forward(s, module, c) for c in part_classes):
        return f"its {part} part is not {part_classes[0]}'s code"
    if not same_forward(o, module, output):
        return f"its output part is not {output}'s code"
    linears = [getattr(s, n, None) for n in ("query", "key", "value")] + [o.dense]
    if not all(isinstance(p, nn.Linear) for p in linears):
        return f"{part}.query / key / value / output.dense are not all Linear"
    width = s.num_attention_heads * s.attention_head_size
    if any(p.out_features != width for p in linears[:3]) or o.dense.in_features != width:
        return "q/k/v widths do not match num_attention_heads x attention_head_size"
    return None


def survey_legacy(m: nn.Module) -> tuple[str | None, str | None]:
    """(kind, issue) for an older-code attention (module doc), (None, None) otherwise."""
    for kind, (module, cls, *_) in _REFERENCES.items():
        if same_forward(m, module, cls):
            return kind, _issue(m, kind)
    return None, None


def self_output_twin(
    cls: type, s: nn.Module, o: nn.Module, **extra
) -> tuple[PrunableModule, dict[str, nn.Module]]:
    """A ``cls`` twin sized from a ``self`` / ``output`` pair (``s`` with query/key/value,
    ``o`` with the output ``dense``), and the original parts it reuses; ``extra`` goes to
    ``cls``. Also Swin V2's code, which keeps this pair (``hf_converters``)."""
    parts = (s.query, s.key, s.value)
    new = cls(
        s.query.in_features,
        s.num_attention_heads,
        qk_dim=s.attention_head_size,
        v_dim=s.attention_head_size,
        qkv_bias=any(p.bias is not None for p in parts),
        proj_bias=o.dense.bias is not None,
        attn_drop=s.dropout.p,
        proj_drop=o.dropout.p,
        **extra,
    )
    reuse = {
        "qkv": fuse_linears(parts),
        "proj": o.dense,
        "attn_drop": s.dropout,
        "proj_drop": o.dropout,
    }
    return new, reuse


def convert_legacy(kind: str, m: nn.Module) -> PrunableModule:
    """The prunable twin of the older-code attention ``m`` of ``kind``."""
    part = _REFERENCES[kind][2]
    s, o = getattr(m, part), m.output
    scale = s.attention_head_size**-0.5
    if kind == HF_SWIN_LEGACY:
        window = tuple(s.window_size)
        new, reuse = self_output_twin(HFLegacySwinAttention, s, o, scale=scale, window_size=window)
        # our index is recomputed, not copied: it must be transformers', or the table is misread
        if not torch.equal(new.relative_position_index, s.relative_position_index.cpu()):
            raise RuntimeError("relative_position_index differs from transformers'; aborted")
        reuse["relative_position_bias_table"] = s.relative_position_bias_table
        return adopt(new, m, reuse)
    own = s.relative_position_bias if s.has_relative_position_bias else None
    new, reuse = self_output_twin(
        HFLegacyBeitAttention,
        s,
        o,
        scale=scale,
        patch_size=s.config.patch_size,
        relative_position_bias=None,
    )
    return adopt(new, m, {**reuse, "relative_position_bias": own})


__all__ = [
    "HF_BEIT_LEGACY",
    "HF_SWIN_LEGACY",
    "convert_legacy",
    "self_output_twin",
    "survey_legacy",
]
