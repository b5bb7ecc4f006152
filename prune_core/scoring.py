"""Scoring rules: how important or redundant a unit is, from weights or activations.

Three rules, each a pure function of a module's weights or of one calibration forward:

- ``unit_magnitude``: L1 norm of the weights that produce and consume a unit (the magnitude
  baseline, and the ``magnitude`` init mode);
- ``attention_difference``: how much the attention map changes without a qk channel, or how
  closely the channel alone reproduces it (idea 4, docs/method.md §7);
- ``similarity_weights``: redundancy among a head's channels, as weights w with mean 1 per head
  (idea 1, docs/method.md §2).

``prune_core.calibration`` turns them into initial logits and refreshed weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.prunable import PrunableModule

MAX_SEQUENCES = 32  # images × windows used for attention maps (bounded cost on large models)
MAX_QUERIES = 256  # query tokens sampled per map when N is large (linear attention)


def unit_magnitude(module: PrunableModule, group: str) -> torch.Tensor:
    """(H, d) L1 norm of the weights that produce and consume each unit of a group."""
    gate = module.gates[group]
    H, d = gate.num_heads, gate.channels
    with torch.no_grad():
        if group == "mlp":
            w = module.input_weights().sum(1) + module.fc2.weight.abs().sum(0)
            return w.reshape(H, d)
        rows = module.qkv.weight.abs().sum(1)
        hq = module.num_heads * module.qk_dim
        if group == "qk":
            return (rows[:hq] + rows[hq : 2 * hq]).reshape(H, d)
        return (rows[2 * hq :] + module.proj.weight.abs().sum(0)).reshape(H, d)


def _attention_maps(
    module: PrunableModule, tap: dict[str, Tensor]
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


def attention_difference(module: PrunableModule, tap: dict[str, Tensor], mode: str) -> Tensor:
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


def similarity_weights(features: Tensor, temperature: float, kept: Tensor | None = None) -> Tensor:
    """Channel-similarity weights w (docs/method.md §2) from per-head channel activations.

    ``features``: (H, d, M) — each channel's activation vector over M token samples. A channel
    whose activations look like its head-mates' (high mean |cosine|) is redundant and gets a
    lower weight; w has mean 1 over each head, and τ → ∞ makes it uniform. ``kept`` (H, d,
    binary): measure redundancy against the kept head-mates only, so once one of two twins is
    dropped the other is no longer redundant (None: against every head-mate).
    """
    if temperature <= 0:
        raise ValueError(f"sim_temperature must be > 0, got {temperature}")
    heads, d, _ = features.shape
    if d == 1 or temperature == float("inf"):
        return torch.ones(heads, d, device=features.device)
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    sim = (f @ f.transpose(1, 2)).abs()
    eye = torch.eye(d, device=sim.device, dtype=torch.bool)
    others = (~eye).float().expand(heads, d, d)
    if kept is not None:
        others = others * kept.to(sim).reshape(heads, 1, d)
    redundancy = (sim * others).sum(-1) / others.sum(-1).clamp_min(1.0)
    return d * torch.softmax(-redundancy / temperature, dim=-1)
