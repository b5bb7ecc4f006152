"""Indicator initialisation from a calibration batch (docs/method.md §2, §7).

One forward pass with the modules' taps open gives, per prunable module, the pre-mask channel
activations of every group. From them:
- **similarity weights** w (redundancy among a head's channels, temperature τ), refreshed every
  K search steps by ``update_similarity``;
- **initial logits** θ = θ₀ + init_scale · z, where z is a per-head standardised importance:
  ``uniform`` (z = 0), ``magnitude`` (L1 of the unit's weights), or the attention-difference
  modes for ``qk`` channels — ``attn_single`` (how closely the channel *alone* reproduces the
  head's attention map) and ``attn_leave_out`` (how much the map changes *without* it). ``v`` and
  ``mlp`` units, which do not shape the map, use their mean activation magnitude in those modes.

The map A is the one the layer computes: for softmax attention the scaled q·kᵀ *plus* whatever
the layer adds before the softmax (Swin's relative position bias and shift mask, a timm
``attn_mask``), recorded by the layer's tap. For focused linear attention A is the row-normalised
φ(Q)φ(K)ᵀ. Note that a *single* channel's linear map, q_c·k_cᵀ row-normalised, is k_c / Σk_c in
every row — it does not depend on the query — so ``attn_single`` on linear layers scores how
well a channel's key profile alone matches the map; ``attn_leave_out`` keeps the query's role
and is the default.

After the logits are set every gate is anchored (``ChannelGate.anchor_``): the widths count
from these logits, so the model still keeps every channel until the search moves them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune_core.indicator import GateMode
from prune_core.prunable import prunable_modules
from prune_core.scoring import attention_difference, similarity_weights, unit_magnitude

INIT_MODES = ("uniform", "magnitude", "attn_single", "attn_leave_out")
MAX_SAMPLES = 8192  # token samples per channel for cosine similarity


@torch.no_grad()
def capture(model: nn.Module, images: Tensor) -> dict[str, dict[str, Tensor]]:
    """Pre-mask activations of every group of every prunable module, from one forward."""
    modules = prunable_modules(model)
    for m in modules.values():
        m.tap = {}
    was_training = model.training
    model.eval()
    try:
        model(images)
        return {name: m.tap for name, m in modules.items()}
    finally:
        for m in modules.values():
            m.tap = None
        model.train(was_training)


def _channel_samples(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (H, d, M) with at most MAX_SAMPLES token samples."""
    H, d = x.shape[1], x.shape[-1]
    flat = x.permute(1, 3, 0, 2).reshape(H, d, -1)
    if flat.shape[-1] > MAX_SAMPLES:
        idx = torch.linspace(0, flat.shape[-1] - 1, MAX_SAMPLES, device=x.device).long()
        flat = flat[..., idx]
    return flat


def _group_features(tap: dict[str, Tensor], group: str) -> Tensor:
    if group == "qk":
        return torch.cat([_channel_samples(tap["q"]), _channel_samples(tap["k"])], dim=-1)
    return _channel_samples(tap[group])


def update_similarity(
    model: nn.Module,
    images: Tensor,
    temperature: float,
    taps: dict[str, dict[str, Tensor]] | None = None,
    *,
    kept_only: bool = False,
) -> None:
    """Recompute every gate's similarity weights w from a calibration batch.

    ``kept_only``: redundancy against the channels each gate currently keeps (search mode),
    not against every head-mate (``similarity_weights``).
    """
    taps = capture(model, images) if taps is None else taps
    for name, module in prunable_modules(model).items():
        for group, gate in module.gates.items():
            kept = None
            if kept_only and gate.mode is not GateMode.OFF:
                kept = (
                    gate().detach()
                    if gate.mode is GateMode.HARD
                    else gate.topk_mask(gate.count_from_scores())
                )
            w = similarity_weights(_group_features(taps[name], group), temperature, kept)
            gate.similarity.copy_(w.to(gate.similarity))


def _standardise(score: Tensor) -> Tensor:
    std = score.std(dim=1, keepdim=True, unbiased=False)
    return (score - score.mean(dim=1, keepdim=True)) / std.clamp_min(1e-8)


def initialize(
    model: nn.Module,
    calib_images: Tensor,
    *,
    mode: str = "attn_leave_out",
    init_scale: float = 1.0,
    theta0: float = 0.0,
    sim_temperature: float = 1.0,
) -> None:
    """Set every gate's logits θ = θ₀ + init_scale · z and similarity weights from a batch.

    Args:
        calib_images: (B, C, H, W) fixed, un-augmented calibration images.
        mode: one of ``INIT_MODES`` (module doc).
        init_scale: spread of the logits in units of the per-head standardised importance z.
        theta0: the logits' centre. 0 keeps s = sigmoid(θ) in its steep range, so the init's
            order shows in e = w·s (at θ₀ = 3, s ∈ [0.73, 0.99] and w overrode the order).
        sim_temperature: τ of the similarity weights (``inf``: uniform).
    Raises:
        ValueError: unknown mode, or a model without prunable modules.
    """
    if mode not in INIT_MODES:
        raise ValueError(f"init_mode must be one of {INIT_MODES}, got {mode!r}")
    modules = prunable_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no prunable modules: call make_prunable")
    taps = capture(model, calib_images)
    update_similarity(model, calib_images, sim_temperature, taps)
    for name, module in modules.items():
        for group, gate in module.gates.items():
            if mode == "uniform":
                z = torch.zeros_like(gate.logits)
            elif mode == "magnitude":
                z = _standardise(unit_magnitude(module, group).float())
            elif group == "qk":
                diff = attention_difference(module, taps[name], mode.removeprefix("attn_"))
                z = _standardise(-diff if mode == "attn_single" else diff)
            else:
                z = _standardise(_channel_samples(taps[name][group]).abs().mean(-1))
            with torch.no_grad():
                gate.logits.copy_(theta0 + init_scale * z.to(gate.logits))
            gate.anchor_()
