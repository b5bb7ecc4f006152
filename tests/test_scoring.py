"""The scoring rules (prune_core.scoring) on inputs whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_vit

from prune_core import prunable_modules
from prune_core.scoring import similarity_weights, unit_magnitude


def features_with_a_twin(samples: int = 256) -> torch.Tensor:
    """(1 head, 4 channels, M): channels 0 and 1 are identical, 2 and 3 independent."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, samples, generator=g)
    return torch.stack([base[0], base[0], base[1], base[2]]).unsqueeze(0)


def test_similarity_weights_have_mean_one_per_head_and_mark_the_twins() -> None:
    f = torch.cat([features_with_a_twin(), features_with_a_twin().flip(1)])  # 2 heads
    w = similarity_weights(f, temperature=0.1)
    assert w.shape == (2, 4)
    assert torch.allclose(w.mean(dim=1), torch.ones(2), atol=1e-6)
    # head 0: the twins are 0 and 1; head 1 (flipped): 2 and 3
    assert w[0, :2].max() < w[0, 2:].min() and w[1, 2:].max() < w[1, :2].min()
    assert torch.allclose(w[0, 0], w[0, 1])  # twins are scored alike


def test_similarity_temperature_sets_the_contrast() -> None:
    f = features_with_a_twin()
    sharp, soft = similarity_weights(f, 0.05), similarity_weights(f, 5.0)
    assert float(sharp.max() - sharp.min()) > float(soft.max() - soft.min()) > 0
    assert torch.equal(similarity_weights(f, math.inf), torch.ones(1, 4))
    assert torch.equal(similarity_weights(f[:, :1], 0.5), torch.ones(1, 1))  # one channel
    with pytest.raises(ValueError, match="sim_temperature must be > 0"):
        similarity_weights(f, 0.0)


def test_unit_magnitude_is_the_l1_of_the_weights_a_unit_touches() -> None:
    model = tiny_vit()
    name, attn = next((n, m) for n, m in prunable_modules(model).items() if hasattr(m, "qkv"))
    H, d, dv = attn.num_heads, attn.qk_dim, attn.v_dim
    rows = attn.qkv.weight.abs().sum(1)
    qk = unit_magnitude(attn, "qk")
    h, c = 1, 2  # one unit, by hand: its q row and its k row
    assert qk[h, c] == pytest.approx(float(rows[h * d + c] + rows[H * d + h * d + c]))
    v = unit_magnitude(attn, "v")
    col = attn.proj.weight.abs().sum(0)
    assert v[h, c] == pytest.approx(float(rows[2 * H * d + h * dv + c] + col[h * dv + c]))
    mlp = next(m for m in prunable_modules(model).values() if hasattr(m, "fc1"))
    j = 5
    want = mlp.fc1.weight[j].abs().sum() + mlp.fc2.weight[:, j].abs().sum()
    assert unit_magnitude(mlp, "mlp").flatten()[j] == pytest.approx(float(want))
