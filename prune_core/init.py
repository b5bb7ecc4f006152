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

from prune_core.attention import FocusedLinearAttention
from prune_core.indicator import GateMode, similarity_weights
from prune_core.prunable import GatedModule, gated_modules
from prune_core.surgery import unit_magnitude

INIT_MODES = ("uniform", "magnitude", "attn_single", "attn_leave_out")
MAX_SEQUENCES = 32  # images × windows used for attention maps (bounded cost on large models)
MAX_QUERIES = 256  # query tokens sampled per map when N is large (linear attention)
MAX_SAMPLES = 8192  # token samples per channel for cosine similarity


@torch.no_grad()
def capture(model: nn.Module, images: Tensor) -> dict[str, dict[str, Tensor]]:
    """Pre-mask activations of every group of every prunable module, from one forward."""
    modules = gated_modules(model)
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
    for name, module in gated_modules(model).items():
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


def _attention_maps(
    module: GatedModule, tap: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor | None, bool]:
    """q-side and k-side features (S, H, n, d), the additive bias (or None), linear or not."""
    bias = None
    if isinstance(module, FocusedLinearAttention):
        q, k = tap["phi_q"], tap["phi_k"]
        if q.shape[2] > MAX_QUERIES:
            idx = torch.randperm(q.shape[2], generator=torch.Generator().manual_seed(0))
            q = q[:, :, idx[:MAX_QUERIES].to(q.device)]
        linear = True
    else:
        q, k, linear = tap["q"] * module.scale, tap["k"], False
        bias = tap.get("attn_bias")
        if bias is not None:
            bias = bias[:MAX_SEQUENCES].float()
    return q[:MAX_SEQUENCES], k[:MAX_SEQUENCES], bias, linear


def _map(scores: Tensor, linear: bool) -> Tensor:
    if linear:
        return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
    return scores.softmax(dim=-1)


def attention_difference(module: GatedModule, tap: dict[str, Tensor], mode: str) -> Tensor:
    """(H, d) mean ‖A − A^(c)‖_F per qk channel c, ``single`` or ``leave_out``.

    ``tap``: the layer's recorded activations (``capture``): q, k (S, H, N, d), and for softmax
    layers the additive ``attn_bias`` (position bias, shift or attention mask), which enters
    A and every A^(c) alike (a single channel's map is its q_c·k_c plus the bias).
    """
    q, k, bias, linear = _attention_maps(module, tap)
    full_scores = q @ k.transpose(-2, -1)
    full = _map(full_scores if bias is None else full_scores + bias, linear)
    d = q.shape[-1]
    out = torch.empty(q.shape[1], d, device=q.device)
    for c in range(d):
        part = q[..., c : c + 1] @ k[..., c : c + 1].transpose(-2, -1)
        other = part if mode == "single" else full_scores - part
        if linear:
            other = other.clamp_min(0.0)  # numerical dust from the subtraction
        elif bias is not None:
            other = other + bias
        diff = (full - _map(other, linear)).flatten(-2).norm(dim=-1)  # (S, H)
        out[:, c] = diff.mean(0)
    return out


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
    modules = gated_modules(model)
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
