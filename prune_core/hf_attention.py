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

Attention weights are not returned (``None``, as ``transformers``' SDPA path returns), so
``output_attentions=True`` is refused in one line. The twin runs PyTorch's SDPA kernel on CUDA
and the explicit softmax on CPU (``SoftmaxAttention.forward``), whichever implementation
(``eager``, ``sdpa``) the model was loaded with: the function is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def _refuse_attention_weights(output_attentions: bool | None) -> None:
    if output_attentions:
        raise ValueError(
            "output_attentions=True: a prunable attention (make_prunable) does not return "
            "attention weights; call the model without it"
        )


class HFAttention(SoftmaxAttention):
    """``transformers``' ViT-style (and, with ``window_size``, Swin) attention (module doc)."""

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs
    ) -> tuple[Tensor, None]:
        _refuse_attention_weights(kwargs.get("output_attentions"))
        if kwargs.get("is_causal"):
            raise ValueError("is_causal=True: the prunable HF attention is bidirectional only")
        mask = additive_mask(attention_mask, hidden_states.dtype)
        return super().forward(hidden_states, mask), None

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        if self.window_size is None:
            return mask  # global attention: the layer's mask is the whole additive bias
        return super()._attn_bias(batch, tokens, mask)  # Swin: window bias + shift mask


class HFSwinV2Attention(SwinV2WindowAttention):
    """``transformers``' ``Swinv2Attention`` (module doc)."""

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        output_attentions: bool | None = False,
    ) -> tuple[Tensor]:
        _refuse_attention_weights(output_attentions)
        mask = additive_mask(attention_mask, hidden_states.dtype)
        if mask is not None:
            mask = mask + mask  # transformers adds the shift mask twice (module doc)
        return (super().forward(hidden_states, mask),)


__all__ = ["HFAttention", "HFSwinV2Attention", "additive_mask"]
