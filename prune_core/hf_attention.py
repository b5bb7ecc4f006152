"""Prunable twins of Hugging Face ``transformers`` vision attention (ViT, DeiT, DINOv2, BEiT,
Swin, Swin V2 and the models that reuse their code).

Each class is a ``SoftmaxAttention`` (or its Swin V2 subclass) that takes the call its
``transformers`` layer makes and returns what that layer unpacks, so the model's own forward,
its output objects and its ``from_pretrained`` configuration stay as they are:

- ``HFAttention``: ``transformers`` v5's ``ViTAttention`` and its copies (DeiT, DINOv2 and
  DINOv2 with registers, BEiT, ViT-MAE, ViT-MSN, I-JEPA, ...) and, with ``window_size``,
  ``SwinAttention``. Called ``attn(hidden_states, attention_mask, **kwargs)`` with
  ``hidden_states`` (B, N, C); returns ``(out (B, N, C), None)``. The ``attention_mask`` is
  what the layer hands its attention: BEiT's relative position bias (1, H, N, N) (the layer
  computes it, so BEiT needs nothing of its own here), a padding mask from
  ``create_bidirectional_mask`` (bool: True = attend, or additive), or Swin's shift mask
  (windows, n, n), added to the window's relative position bias as Swin does.
- ``HFSwinV2Attention``: ``Swinv2Attention`` (the ``self`` / ``output`` pair; also Swin2SR's):
  ``attn(hidden_states, attention_mask, output_attentions)`` -> ``(out,)``. Cosine attention
  with a per-head logit scale and the continuous position bias are ``SwinV2WindowAttention``'s;
  q/k stay whole there (``prune_core.timm_attention`` says why). ``transformers`` adds Swin
  V2's shift mask to the scores twice (``modeling_swinv2.py``, ``Swinv2SelfAttention.forward``);
  the twin does the same, so outputs match to float rounding.

- ``HFLegacySwinAttention``: Swin's older ``self`` / ``output`` code (Donut-Swin,
  MaskFormer-Swin): ``attn(hidden_states, attention_mask, output_attentions)`` -> ``(out,)``;
  the window bias and the shift mask added once, as ``HFAttention`` with ``window_size``.
- ``HFLegacyBeitAttention``: BEiT's older ``attention`` / ``output`` code (Data2Vec-Vision):
  ``attn(hidden_states, output_attentions, relative_position_bias, interpolate_pos_encoding,
  resolution)`` -> ``(out,)``; the layer's own relative position bias is the original module,
  called as the original calls it (window from ``resolution`` // ``patch_size``), plus the
  shared bias the model passes.

**Attention weights.** With ``output_attentions=True`` each twin returns the attention
probabilities (B, H, N, N) (Swin: (B·windows, H, n, n)) after dropout, as ``transformers``'
eager attention does, beside its output: ``(out, weights)``; the explicit softmax runs then
(``SoftmaxAttention.attend``). Otherwise ``(out, None)`` / ``(out,)`` and PyTorch's SDPA kernel
on CUDA, the explicit softmax on CPU, whichever implementation (``eager``, ``sdpa``) the model
was loaded with: the function is the same. A model that records weights with a hook on the
attention class the twin replaced gets the same hook on the twin (``hf_converters``); where
that cannot be done, ``weights_recorded`` is False and ``output_attentions=True`` is refused in
one line rather than answered with no weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune_core.attention import SoftmaxAttention
from prune_core.timm_attention import SwinV2WindowAttention


def additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """An attention mask as an additive score bias: bool (True = attend) -> 0 / dtype's min;
    a float mask is already additive and is returned as it is (cast to ``dtype``)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


class _Weights:
    """Whether the twin's attention weights reach the model's output (module doc)."""

    weights_recorded = True

    def _want_weights(self, output_attentions: bool | None) -> bool:
        if output_attentions and not self.weights_recorded:
            raise ValueError(
                f"output_attentions=True: this transformers version records {type(self).__name__}"
                "'s weights in a way make_prunable cannot follow; call the model without it"
            )
        return bool(output_attentions)


class HFAttention(_Weights, SoftmaxAttention):
    """``transformers``' ViT-style (and, with ``window_size``, Swin) attention (module doc)."""

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs
    ) -> tuple[Tensor, Tensor | None]:
        weights = self._want_weights(kwargs.get("output_attentions"))
        if kwargs.get("is_causal"):
            raise ValueError("is_causal=True: the prunable HF attention is bidirectional only")
        mask = additive_mask(attention_mask, hidden_states.dtype)
        return self.attend(hidden_states, mask, weights=weights)

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        if self.window_size is None:
            return mask  # global attention: the layer's mask is the whole additive bias
        return super()._attn_bias(batch, tokens, mask)  # Swin: window bias + shift mask


def _outputs(out: Tensor, weights: Tensor | None) -> tuple[Tensor, ...]:
    """What the older ``self`` / ``output`` code returns: ``(out,)`` or ``(out, weights)``."""
    return (out,) if weights is None else (out, weights)


class _SelfOutputCall(_Weights):
    """The ``self`` / ``output`` call Swin V2 and legacy Swin share: ``attn(hidden_states,
    attention_mask, output_attentions)`` -> ``(out,)`` / ``(out, weights)``."""

    # transformers adds Swin V2's shift mask to the scores twice, legacy Swin's once (module doc)
    shift_mask_twice = False

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        output_attentions: bool | None = False,
    ) -> tuple[Tensor, ...]:
        weights = self._want_weights(output_attentions)
        mask = additive_mask(attention_mask, hidden_states.dtype)
        if mask is not None and self.shift_mask_twice:
            mask = mask + mask
        return _outputs(*self.attend(hidden_states, mask, weights=weights))


class HFSwinV2Attention(_SelfOutputCall, SwinV2WindowAttention):
    """``transformers``' ``Swinv2Attention`` (module doc)."""

    shift_mask_twice = True


class HFLegacySwinAttention(_SelfOutputCall, HFAttention):
    """Swin's older ``self`` / ``output`` attention (Donut-Swin, MaskFormer-Swin; module doc)."""


class HFLegacyBeitAttention(HFAttention):
    """BEiT's older ``attention`` / ``output`` code (Data2Vec-Vision; module doc).

    ``relative_position_bias``: the layer's own ``*RelativePositionBias`` module (None when the
    model uses only the shared one), called with the window ``resolution`` // ``patch_size``
    (pixels -> patches) and returning (1, H, N, N).
    """

    def __init__(self, *args, patch_size: int, relative_position_bias: nn.Module | None, **kw):
        super().__init__(*args, **kw)
        self.patch_size = patch_size
        self.relative_position_bias = relative_position_bias

    def forward(
        self,
        hidden_states: Tensor,
        output_attentions: bool = False,
        relative_position_bias: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        resolution: tuple[int, int] | None = None,
    ) -> tuple[Tensor, ...]:
        weights = self._want_weights(output_attentions)
        bias = None
        if self.relative_position_bias is not None:
            window = (resolution[0] // self.patch_size, resolution[1] // self.patch_size)
            bias = self.relative_position_bias(
                window, interpolate_pos_encoding, dim_size=hidden_states.shape[1]
            )
        if relative_position_bias is not None:  # the model's shared bias, added after
            bias = relative_position_bias if bias is None else bias + relative_position_bias
        return _outputs(*self.attend(hidden_states, bias, weights=weights))


__all__ = [
    "HFAttention",
    "HFLegacyBeitAttention",
    "HFLegacySwinAttention",
    "HFSwinV2Attention",
    "additive_mask",
]
