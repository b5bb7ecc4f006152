"""Plans, baselines, apply/prune/save/load, and the errors users meet."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers import random_masks, tiny_vit

from prune_core import (
    Plan,
    apply_plan,
    count_macs,
    current_plan,
    load_pruned,
    magnitude_plan,
    prune,
    random_plan,
    save_pruned,
    uniform_keep,
)


def test_plan_json_round_trip(tmp_path) -> None:
    model = tiny_vit()
    plan = magnitude_plan(model, 0.5)
    assert Plan.from_json(plan.to_json()) == plan
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    assert plan.widths()["blocks.0.attn"] == {"qk": 4, "v": 4}
    assert plan.widths()["blocks.1.mlp"] == {"mlp": 32}


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_uniform_keep_is_the_largest_ratio_under_the_target(target: float) -> None:
    model, size = tiny_vit(), (3, 8, 8)
    full = count_macs(model, size)

    def pruned_ratio(keep: float) -> float:
        pruned = tiny_vit()
        apply_plan(pruned, magnitude_plan(pruned, keep))
        prune(pruned)
        return count_macs(pruned, size) / full

    keep = uniform_keep(model, size, target)
    assert pruned_ratio(keep) <= target  # counted by torch, not by the MAC model
    assert pruned_ratio(min(1.0, keep + 0.07)) > target  # one more unit per group is too many


def test_uniform_keep_refuses_an_unreachable_target() -> None:
    with pytest.raises(ValueError, match="no uniform keep ratio reaches 0.001"):
        uniform_keep(tiny_vit(), (3, 8, 8), 0.001)


def test_magnitude_plan_keeps_the_largest_units_per_head() -> None:
    model = tiny_vit()
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.qkv.weight[:32].mul_(0.01)  # make every q/k channel small...
        attn.qkv.weight[32:64].mul_(0.01)
        for h in range(4):  # ...except channel 5 of every head
            attn.qkv.weight[h * 8 + 5].fill_(1.0)
            attn.qkv.weight[32 + h * 8 + 5].fill_(1.0)
    plan = magnitude_plan(model, {"qk": 0.125, "v": 1.0, "mlp": 1.0})
    assert plan.layers["blocks.1.attn"]["qk"] == [[5]] * 4
    assert plan.layers["blocks.1.attn"]["v"] == [list(range(8))] * 4


def test_linear_attention_v_positions_are_aligned_across_heads() -> None:
    model = tiny_vit()
    for plan in (magnitude_plan(model, 0.5), random_plan(model, 0.5, seed=3)):
        rows = plan.layers["blocks.0.attn"]["v"]
        assert all(row == rows[0] for row in rows)


def test_apply_plan_then_prune_gives_the_planned_macs() -> None:
    model = tiny_vit().eval()
    plan = random_plan(model, {"qk": 0.25, "v": 0.5, "mlp": 0.75}, seed=1)
    apply_plan(model, plan)
    assert current_plan(model) == plan
    x = torch.randn(2, 3, 8, 8)
    masked, predicted = model(x), count_macs(model, (3, 8, 8))
    prune(model)
    assert (model(x) - masked).abs().max() <= 1e-4
    assert count_macs(model, (3, 8, 8)) == predicted


def test_save_and_load_pruned_weights_only(tmp_path) -> None:
    model = tiny_vit().eval()
    random_masks(model, keep=0.5, seed=2)
    plan = current_plan(model)
    prune(model)
    save_pruned(model, plan, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "weights.pt"]
    loaded = load_pruned(tiny_vit(seed=9).eval(), tmp_path / "plan.json", tmp_path / "weights.pt")
    x = torch.randn(2, 3, 8, 8)
    assert (loaded(x) - model(x)).abs().max() <= 1e-6


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.2])
def test_keep_ratio_out_of_range_is_rejected(keep: float) -> None:
    with pytest.raises(ValueError, match="keep ratio"):
        magnitude_plan(tiny_vit(), keep)


def test_keep_ratio_that_empties_a_head_names_the_layer() -> None:
    with pytest.raises(ValueError, match="empty head"):
        magnitude_plan(tiny_vit(), 0.05)


def test_model_without_attention_is_rejected() -> None:
    with pytest.raises(ValueError, match="no prunable attention"):
        magnitude_plan(torch.nn.Sequential(torch.nn.Linear(4, 4)), 0.5)


def test_plan_that_does_not_fit_is_rejected() -> None:
    plan = magnitude_plan(tiny_vit(), 0.5)
    with pytest.raises(ValueError, match="missing layers"):
        apply_plan(tiny_vit(depth=4), plan)
    plan.layers["blocks.0.attn"]["qk"][0] = [0, 1, 2, 99]
    with pytest.raises(ValueError, match="in \\[0, 8\\)"):
        apply_plan(tiny_vit(), plan)
    plan.layers["blocks.0.attn"]["qk"][0] = [0, 1]
    with pytest.raises(ValueError, match="same non-zero"):
        apply_plan(tiny_vit(), plan)


def test_corrupt_plan_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="plan.json"):
        Plan.load(path)


@pytest.mark.parametrize("keep", [{"attn": 0.25}, {"qkv": 0.5, "mlp": 0.5}])
def test_unknown_group_names_are_refused_not_ignored(keep) -> None:
    model = tiny_vit()
    for make_plan in (magnitude_plan, random_plan):
        with pytest.raises(ValueError, match=r"unknown group '(attn|qkv)'.*groups are qk, v, mlp"):
            make_plan(model, keep)


@pytest.mark.parametrize("bad", [3.9, 3.0, True, "3"])
def test_plan_json_refuses_channel_indices_that_are_not_integers(bad) -> None:
    data = json.loads(current_plan(tiny_vit()).to_json())
    layer = next(iter(data["layers"]))
    data["layers"][layer]["qk"][0][0] = bad
    with pytest.raises(ValueError, match="is not an integer"):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(tmp_path, umask) -> None:
    model = tiny_vit()
    apply_plan(model, magnitude_plan(model, 0.5))
    plan = current_plan(model)
    prune(model)
    old = os.umask(umask)
    try:
        save_pruned(model, plan, tmp_path / "out")
    finally:
        os.umask(old)
    for name in ("plan.json", "weights.pt"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o666 & ~umask, name
