"""Prunable twins of timm's attention families beyond plain ViT/Swin (docs/method.md §3).

Each class is ``SoftmaxAttention`` with what its family adds, so gates, the MAC formula, the
calibration taps and surgery are the parent's code:

- ``TimmBlockAttention``: timm ``Attention`` (ViT, DeiT, DeiT3, DINOv2, ...) — the block's
  ``attn_mask`` / ``is_causal`` call, and ``qk_norm`` (LayerNorm over each head's q and k).
- ``BeitAttention``: BEiT / BEiTv2 — a learned relative position bias over the patch grid with
  three extra entries for the class token, and an optional bias shared by all blocks.
- ``SwinV2WindowAttention``: Swin V2 — cosine attention with a learned per-head logit scale,
  and a continuous position bias (an MLP over log-spaced relative coordinates).
- ``EvaAttention``: EVA / EVA-02 — rotary position embedding on q and k.

**What stays at full width, and why.** q and k can lose a channel exactly only when each
channel enters q·kᵀ on its own. A norm over the head (qk-norm, Swin V2's cosine attention)
divides every channel by statistics of all of them, and rotary embedding mixes channels in
pairs, so in those layers the qk group keeps every channel (``qk_prunable=False``: no qk
gate, no qk reweight) while v and the MLP are pruned. v is never transformed before the
attention-weighted sum, so its channels always go exactly. ``make_prunable`` reports which
layers keep q/k whole.

Projections: timm's BEiT / Swin V2 / EVA keep the q and v biases apart from the fused ``qkv``
weight (and k has none); here they become the one ``qkv`` bias (k's part zero), and EVA's
separate q/k/v projections one fused ``qkv``. The function is the same; those parameters are
new tensors (an optimizer built before ``make_prunable`` must be rebuilt for them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.layers.attention import resolve_self_attn_mask
from torch import Tensor, nn

from prune_core.attention import SoftmaxAttention


class TimmBlockAttention(SoftmaxAttention):
    """``SoftmaxAttention`` that takes timm ``Block``'s call, ``attn(x, attn_mask=, ...)``.

    timm's ViT blocks pass ``attn_mask`` and ``is_causal`` by keyword; they are resolved to one
    additive bias with timm's own helper (same semantics for bool and float masks). With
    ``q_norm`` / ``k_norm`` (timm's ``qk_norm=True``: a norm over each head's channels) the
    qk group is not prunable (module doc).
    """

    def __init__(
        self,
        *args,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, qk_prunable=q_norm is None and k_norm is None, **kwargs)
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()

    def _transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.q_norm(q), self.k_norm(k)

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


class BeitAttention(SoftmaxAttention):
    """BEiT's attention: global softmax attention plus a relative position bias.

    ``relative_position_bias_table`` (num_relative_distance, H) is indexed by
    ``relative_position_index`` (N, N) over the class token and the patch grid (timm's
    ``gen_relative_position_index``); ``forward(x, shared_rel_pos_bias)`` adds the bias a
    BEiT model may share across blocks. Pruning never removes a head, so both stay whole.
    """

    no_weight_decay_names = ("relative_position_bias_table",)

    def __init__(self, *args, relative_position_index: Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relative_position_bias_table: nn.Parameter | None = None
        if relative_position_index is not None:
            self.register_buffer(
                "relative_position_index", relative_position_index.clone(), persistent=False
            )
        else:
            self.relative_position_index = None

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        bias = None
        if self.relative_position_bias_table is not None:
            n = self.relative_position_index.shape[0]
            bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
            bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        return super().forward(x, bias)

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        return mask  # forward already built the (1, H, N, N) bias


class SwinV2WindowAttention(SoftmaxAttention):
    """Swin V2's window attention: cosine similarity × a learned per-head logit scale, plus
    16·sigmoid of a continuous position bias (``cpb_mlp`` over ``relative_coords_table``).

    q and k are L2-normalised over each head, so the qk group is not prunable (module doc);
    the logit scale is applied to q there and the parent's ``scale`` is 1.
    """

    no_weight_decay_names = ("logit_scale", "cpb_mlp.*")

    def __init__(
        self,
        *args,
        window_size: tuple[int, int],
        cpb_mlp: nn.Module,
        relative_coords_table: Tensor,
        relative_position_index: Tensor,
        **kwargs,
    ) -> None:
        super().__init__(*args, scale=1.0, qk_prunable=False, **kwargs)
        self.window_size = tuple(window_size)  # the parent's table is not built: V2 has none
        self.logit_scale = nn.Parameter(torch.zeros(self.num_heads, 1, 1))
        self.cpb_mlp = cpb_mlp
        self.register_buffer(
            "relative_coords_table", relative_coords_table.clone(), persistent=False
        )
        self.register_buffer(
            "relative_position_index", relative_position_index.clone(), persistent=False
        )

    def _transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        return F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1)

    def _position_bias(self) -> Tensor:
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1)
        return 16 * torch.sigmoid(bias.permute(2, 0, 1)).unsqueeze(0)


class EvaAttention(SoftmaxAttention):
    """EVA / EVA-02 attention: ``forward(x, rope, attn_mask)`` with rotary position embedding.

    timm's ``apply_rot_embed_cat`` rotates q and k of the patch tokens (not the first
    ``num_prefix_tokens``) by position; rotation acts on channel pairs, so a layer that gets a
    ``rope`` keeps its qk group whole (module doc). Optional ``q_norm`` / ``k_norm`` as timm's.
    """

    def __init__(
        self,
        *args,
        num_prefix_tokens: int = 1,
        rotate_half: bool = False,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.rotate_half = rotate_half
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self._rope: Tensor | None = None

    def _transform_qk(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        q, k = self.q_norm(q), self.k_norm(k)
        if self._rope is not None:
            npt, half = self.num_prefix_tokens, self.rotate_half
            q, k = (
                torch.cat(
                    [t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], self._rope, half=half)], 2
                ).to(t.dtype)  # the table is fp32; keep autocast's dtype, as timm's type_as(v)
                for t in (q, k)
            )
        return q, k

    def forward(
        self,
        x: Tensor,
        rope: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        if rope is not None and self.qk_prunable:
            raise ValueError(
                "a rotary embedding reached an EvaAttention built with a prunable qk group: "
                "rotation mixes channel pairs, so convert the model with its rope (make_prunable)"
            )
        mask = None
        if attn_mask is not None or is_causal:
            mask = resolve_self_attn_mask(x.shape[1], x, attn_mask, is_causal)
        # the parent's forward is the whole computation; the rope reaches its _transform_qk
        # hook through the module for the length of this call
        self._rope = rope
        try:
            return super().forward(x, mask)
        finally:
            self._rope = None

    def _attn_bias(self, batch: int, tokens: int, mask: Tensor | None) -> Tensor | None:
        return mask


__all__ = ["BeitAttention", "EvaAttention", "SwinV2WindowAttention", "TimmBlockAttention"]
