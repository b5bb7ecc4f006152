"""The reweight module (the method's third idea): per-channel scales that compensate pruning.

Removing channels changes the scale of q·kᵀ (fewer terms in each dot product) and of the value
path. A :class:`Reweight` is a learnable (heads, channels) scale on a group's kept channels,
trained in search and fine-tune and folded into the adjacent weights at surgery, so it costs
nothing at inference. Two options the method names:

- ``positive=True`` stores log r: FLatten's qk reweight divides ``softplus(scale)`` when it is
  folded, which needs r > 0; the log parametrisation makes a fold that cannot fail.
- ``width_compensation=True`` (softmax qk only) multiplies by sqrt(d / k) for the current kept
  width k, so q·kᵀ keeps the variance it had at full width (d channels) as channels go; the
  learnable part starts at 1 and learns what the fixed factor gets wrong.

``trainable`` is part of the module's state (not just ``requires_grad`` of a parameter that
surgery rebuilds), so ``use_reweight=False`` survives ``prune`` and every later phase.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Reweight(nn.Module):
    """Learnable (heads, channels) scale r of one channel group; r = 1 is the identity.

    Args:
        heads: H, number of heads of the group (1 for an MLP).
        channels: d, channels per head at full width.
        positive: store log r (r > 0 always), needed where the fold divides by r.
        width_compensation: also multiply by sqrt(d / k) for the current kept width k.
    """

    def __init__(
        self, heads: int, channels: int, *, positive: bool = False, width_compensation: bool = False
    ) -> None:
        super().__init__()
        self.positive = positive
        self.width_compensation = width_compensation
        self.reference_width = channels  # d of sqrt(d / k): the width the weights were trained at
        init = torch.zeros if positive else torch.ones
        self.param = nn.Parameter(init(heads, channels))
        self._trainable = True

    # -- state ------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        self.param.requires_grad_(self._trainable)

    def scale(self) -> Tensor:
        """The learned part r, (H, d)."""
        return self.param.exp() if self.positive else self.param

    def forward(self, kept: int | None = None) -> Tensor:
        """(H, d) multiplier: r, times sqrt(d / kept) when width compensation is on."""
        r = self.scale()
        if self.width_compensation and kept is not None and kept != self.reference_width:
            r = r * math.sqrt(self.reference_width / kept)
        return r

    # -- surgery ----------------------------------------------------------------------------
    @torch.no_grad()
    def take_(self, kept: int | None = None) -> Tensor:
        """Hand the whole multiplier (detached) to a fold and become the identity.

        The width factor is handed over too, so ``reference_width`` becomes ``kept``: the
        folded weights now hold the compensation, and sqrt(kept / kept) = 1 from here on.
        """
        value = self.forward(kept).detach().clone()
        self.param.fill_(0.0 if self.positive else 1.0)
        if kept is not None:
            self.reference_width = kept
        return value

    @torch.no_grad()
    def shrink_(self, kept: list[list[int]]) -> None:
        """Keep the scales of the kept channels (per head); trainability is preserved."""
        index = torch.tensor(kept, dtype=torch.long, device=self.param.device)
        self.param = nn.Parameter(
            self.param.detach().gather(1, index).clone(), requires_grad=self._trainable
        )
        self.reference_width = index.shape[1]

    def extra_repr(self) -> str:
        return (
            f"heads={self.param.shape[0]}, channels={self.param.shape[1]}, "
            f"positive={self.positive}, width_compensation={self.width_compensation}, "
            f"trainable={self._trainable}"
        )


def upgrade_state_dict(reweight: Reweight, state_dict: dict, key: str) -> None:
    """Read a v0.1 checkpoint, which held the scale r itself under ``key`` (the reweight's
    name in its parent), as ``key.param`` (log r for a positive reweight), in place."""
    if key in state_dict and key + ".param" not in state_dict:
        r = state_dict.pop(key)
        state_dict[key + ".param"] = r.clamp_min(1e-30).log() if reweight.positive else r


def reweights(model: nn.Module) -> list[Reweight]:
    """Every reweight module of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, Reweight)]


def set_reweight_trainable(model: nn.Module, trainable: bool) -> None:
    """Switch every reweight on (learned) or off (frozen at its value, 1 after a fold)."""
    for r in reweights(model):
        r.trainable = trainable
