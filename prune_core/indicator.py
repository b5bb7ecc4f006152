"""Pruning indicator of one channel group (docs/method.md §1–3).

A *group* is a set of prunable units laid out as ``(heads, channels)``: the ``qk`` channels of an
attention layer, its ``v`` channels, or the hidden channels of an MLP (one "head"). Every unit
has a logit θ; its soft keep score is s = sigmoid(θ). Units are ranked by e = w · s, where w is a
channel-similarity weight that favours channels which are *not* redundant with their head-mates.

The gate turns scores into a binary mask with the **same count k in every head**, so the pruned
layer is still a regular multi-head layer (a head-split reshape needs equal widths). The mask
reaches θ through a straight-through estimator: m_ste = m + s - stopgrad(s).

The width is measured relative to where the search starts: K = d · Σs / Σs₀, where Σs₀ is the
keep mass when the gate was last *anchored* (``anchor_``, done by ``initialize`` and at the start
of ``search``). So the search starts at the full model (k = d, full MACs) whatever the initial
logits, and the initialisation, not the sigmoid's saturation, orders the units
(docs/method.md, "Relative width").
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn


class GateMode(str, Enum):
    OFF = "off"  # every unit kept, the layer behaves exactly like the original
    SEARCH = "search"  # binary top-k mask from the logits, straight-through gradients
    HARD = "hard"  # a fixed binary mask (after finalize / apply_plan)


class ChannelGate(nn.Module):
    """Logits, similarity weights and mask of one ``(heads, channels)`` group.

    ``aligned=True`` forces the kept positions to be the same in every head; FLatten's value
    path needs it because its depthwise conv has ``head_dim`` channels shared by all heads.
    """

    def __init__(
        self,
        num_heads: int,
        channels: int,
        *,
        aligned: bool = False,
        min_keep: int = 1,
        init_logit: float = 3.0,
    ) -> None:
        super().__init__()
        if num_heads < 1 or channels < 1:
            raise ValueError(
                f"ChannelGate needs heads >= 1 and channels >= 1, got {num_heads}x{channels}"
            )
        self.num_heads = num_heads
        self.channels = channels
        self.aligned = aligned
        self.min_keep = max(1, min(min_keep, channels))
        self.logits = nn.Parameter(torch.full((num_heads, channels), float(init_logit)))
        self.register_buffer("similarity", torch.ones(num_heads, channels))
        self.register_buffer("hard_mask", torch.ones(num_heads, channels))
        # Σs at the anchor (see module doc); H·d means "not anchored": K = Σs / H, as s → 1.
        self.register_buffer("anchor_mass", torch.tensor(float(num_heads * channels)))
        self.mode = GateMode.OFF

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints from before the relative width (v0.1) have no anchor: "not anchored".
        state_dict.setdefault(prefix + "anchor_mass", torch.tensor(float(self.logits.numel())))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- scores ---------------------------------------------------------------------------
    def keep_scores(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def unit_ranking(self) -> Tensor:
        """(H, d) e = w · s of every unit on its own (comparable across groups)."""
        return self.similarity * self.keep_scores()

    def ranking(self) -> Tensor:
        """(H, d) e used to pick the kept units; aligned groups rank a position by Σ_h e."""
        e = self.unit_ranking()
        if self.aligned:
            e = e.sum(dim=0, keepdim=True).expand_as(e)
        return e

    @torch.no_grad()
    def anchor_(self) -> None:
        """Make the current logits mean "full width": K = d from here until they move."""
        self.anchor_mass.copy_(self.keep_scores().sum().clamp_min(1e-6))

    def soft_keep_per_head(self) -> Tensor:
        """Differentiable per-head width K = d · Σs / Σs₀ (channels) used by the MAC loss.

        A gate that is OFF (a group left out of the search) counts its full width, constant.
        """
        if self.mode is GateMode.OFF:
            return torch.tensor(float(self.channels), device=self.logits.device)
        return self.channels * self.keep_scores().sum() / self.anchor_mass

    def count_from_scores(self) -> int:
        k = int(torch.round(self.soft_keep_per_head().detach()).item())
        return max(self.min_keep, min(self.channels, k))

    def kept_per_head(self) -> int:
        """Channels each head keeps under the current mode (the width after surgery)."""
        if self.mode is GateMode.OFF:
            return self.channels
        if self.mode is GateMode.HARD:
            return int(self.hard_mask[0].sum().item())
        return self.count_from_scores()

    # -- masks ----------------------------------------------------------------------------
    def topk_mask(self, k: int, ranking: Tensor | None = None) -> Tensor:
        """Binary (H, d) mask keeping the k best-ranked units of every head."""
        if not 1 <= k <= self.channels:
            raise ValueError(
                f"keep count {k} is outside [1, {self.channels}] (a head would be "
                "left empty or over-full)"
            )
        e = self.ranking().detach() if ranking is None else ranking
        idx = e.topk(k, dim=1).indices
        return torch.zeros_like(e).scatter_(1, idx, 1.0)

    def set_hard(self, mask: Tensor) -> None:
        mask = mask.to(self.hard_mask)
        counts = mask.sum(dim=1)
        if mask.shape != self.hard_mask.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not fit gate {tuple(self.hard_mask.shape)}"
            )
        if not torch.all(counts == counts[0]) or counts[0] < 1:
            raise ValueError(
                f"every head must keep the same, non-zero number of channels; got {counts.tolist()}"
            )
        if self.aligned and not torch.all(mask == mask[0:1]):
            raise ValueError("this group needs the same kept positions in every head")
        self.hard_mask.copy_(mask)
        self.mode = GateMode.HARD

    def kept_indices(self) -> list[list[int]]:
        """Kept channel positions per head (sorted), under the current mode."""
        if self.mode is GateMode.OFF:
            return [list(range(self.channels)) for _ in range(self.num_heads)]
        mask = (
            self.hard_mask
            if self.mode is GateMode.HARD
            else self.topk_mask(self.count_from_scores())
        )
        return [torch.nonzero(row).flatten().tolist() for row in mask]

    def forward(self) -> Tensor | None:
        """The multiplier applied to the group's channels, or None when nothing is masked."""
        if self.mode is GateMode.OFF:
            return None
        if self.mode is GateMode.HARD:
            return self.hard_mask
        s = self.keep_scores()
        m = self.search_mask(s)
        return m + (s - s.detach())  # exactly m in the forward pass

    def search_mask(self, scores: Tensor) -> Tensor:
        """The 0/1 mask the SEARCH-mode forward applies (gradients flow through ``scores``, the
        keep scores): the k best-ranked units of every head, k from the scores."""
        return self.topk_mask(self.count_from_scores())

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, channels={self.channels}, aligned={self.aligned}, "
            f"mode={self.mode.value}"
        )
