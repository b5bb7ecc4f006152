"""The search does what the method promises: every channel can come back, MAC pressure goes
where the MACs are, finalize is fair and cost-aware, the init decides, settings survive."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from helpers import tiny_vit

import prune_core.pruning_search as search_module
from prune_core import (
    FocusedLinearAttention,
    GateMode,
    MacModel,
    PrunableMlp,
    SearchConfig,
    SoftmaxAttention,
    TrainConfig,
    apply_plan,
    finalize,
    initialize,
    magnitude_plan,
    prunable_modules,
    prune,
    search,
    train,
)
from prune_core.mac_pressure import MacPressure
from prune_core.optim import weight_decay_groups
from prune_core.pruning_search import configure_gates
from prune_core.reweight import reweights
from prune_core.scoring import attention_difference


def _search(model: torch.nn.Module, loader, config: SearchConfig, **kw) -> list[dict]:
    """``search`` on digits8's (3, 8, 8) images, without a progress bar."""
    return search(model, loader, (3, 8, 8), config, progress=False, **kw)


def _search_mode_with_one_dropped_column(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    for gate in module.gates.values():
        with torch.no_grad():
            gate.logits.copy_(torch.randn_like(gate.logits) + 3)
            gate.logits[:, 0] = -3.0
        gate.mode = GateMode.SEARCH


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftmaxAttention(64, 4),
        lambda: FocusedLinearAttention(64, 4, 64, (8, 8)),
        lambda: PrunableMlp(64, 64),
    ],
    ids=["softmax", "focused_linear", "mlp"],
)
def test_dropped_units_get_a_task_gradient(make) -> None:
    """A dropped unit must earn its way back: ∂L/∂θ ≠ 0 at m = 0 for every group, qk included
    (masking q and k both made the loss go as m² or m³: exactly 0 gradient)."""
    module = make()
    _search_mode_with_one_dropped_column(module)
    torch.manual_seed(1)
    module(torch.randn(2, 64, 64)).square().sum().backward()
    for name, gate in module.gates.items():
        m = gate().detach()
        dropped = gate.logits.grad[m == 0].abs().mean()
        kept = gate.logits.grad[m == 1].abs().mean()
        assert (m == 0).any(), name
        assert dropped > 1e-3 * kept, f"{name}: dropped units get {float(dropped):.2e}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftmaxAttention(32, 4, window_size=(4, 4)),
        lambda: FocusedLinearAttention(32, 4, 16, (4, 4)),
    ],
    ids=["window", "focused_linear"],
)
def test_one_sided_qk_mask_is_exact(make) -> None:
    """Masking q only (and, for FLatten, norms over the kept channels) equals surgery."""
    torch.manual_seed(0)
    module = make().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in ("scale", "positional_encoding", "relative_position_bias_table"):
                p.normal_(0, 0.5)
    _search_mode_with_one_dropped_column(module)
    x = torch.randn(4, 16, 32)
    masked = module(x)
    plan = {g: gate.kept_indices() for g, gate in module.gates.items()}
    for gate in module.gates.values():
        gate.set_hard(gate().detach())
    module.fold_reweight_()
    module.shrink_(plan)
    assert (module(x) - masked).abs().max() <= 1e-5


def _neutral_micro() -> torch.nn.Module:
    model = timm.create_model("flatten_vit_micro", num_classes=10, img_size=16)
    initialize(model, torch.randn(32, 3, 16, 16), mode="uniform", sim_temperature=math.inf)
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            gate.mode = GateMode.SEARCH
    return model


def test_finalize_with_neutral_scores_gives_balanced_widths() -> None:
    """Equal scores everywhere: no group is emptied while an aligned one stays full."""
    model = _neutral_micro()
    plan = finalize(model, (3, 16, 16), 0.5)
    fractions = [
        w / gate.channels
        for name, m in prunable_modules(model).items()
        for g, gate in m.gates.items()
        for w in [plan.widths()[name][g]]
    ]
    assert max(fractions) - min(fractions) <= 0.2, plan.widths()
    ratio = MacModel(model, (3, 16, 16)).ratio()
    assert 0.48 <= ratio <= 0.5


def test_finalize_weighs_importance_against_the_macs_it_saves() -> None:
    """blocks.2 (softmax, 64 tokens): a qk unit costs 1.5x an mlp unit. qk scored 1.2x mlp is
    still the cheaper loss per MAC saved, so finalize takes qk channels, not mlp ones."""
    model = timm.create_model("flatten_vit_micro", num_classes=10, img_size=16)
    for name, module in prunable_modules(model).items():
        for g, gate in module.gates.items():
            gate.mode = GateMode.SEARCH
            with torch.no_grad():
                gate.logits.zero_()
            weight = {("blocks.2.attn", "qk"): 1.2, ("blocks.2.mlp", "mlp"): 1.0}
            gate.similarity.fill_(weight.get((name, g), 100.0))
            gate.anchor_()
    plan = finalize(model, (3, 16, 16), 0.99, tolerance=0.02)
    widths = plan.widths()
    assert widths["blocks.2.mlp"]["mlp"] == 128
    assert widths["blocks.2.attn"]["qk"] < 16
    assert MacModel(model, (3, 16, 16)).ratio() <= 0.99


def test_search_starts_at_the_full_model(digits8) -> None:
    model = tiny_vit()
    initialize(model, next(iter(digits8[0]))[0], mode="attn_leave_out", theta0=3.0)
    history = _search(model, digits8[0], SearchConfig(target=0.5, steps=1))
    assert history[0]["macs_ratio"] == 1.0
    assert history[0]["soft_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert history[0]["target_now"] == 1.0


def test_initialisation_decides_the_first_masks(digits8) -> None:
    """Top-half by e = w·s agrees with the init's own top half (θ₀ = 3 gave 0.55-0.63)."""
    teacher = tiny_vit()
    train(teacher, digits8[0], TrainConfig(epochs=2, lr=3e-3), progress=False)
    initialize(teacher, next(iter(digits8[0]))[0], mode="attn_leave_out", sim_temperature=1.0)
    overlaps = []
    for module in prunable_modules(teacher).values():
        for gate in module.gates.values():
            by_init = gate.logits.detach()
            if gate.aligned:
                by_init = by_init.sum(0, keepdim=True).expand_as(by_init)
            k = gate.channels // 2
            a, b = gate.topk_mask(k, by_init), gate.topk_mask(k)
            overlaps.append(float((a * b).sum() / a.sum()))
    assert sum(overlaps) / len(overlaps) >= 0.85, overlaps


def test_mac_pressure_is_proportional_to_cost() -> None:
    """Under the penalty alone a costlier unit moves faster (AdamW moved every logit alike)."""
    model = timm.create_model("flatten_vit_micro", num_classes=10, img_size=16)
    gates = configure_gates(model, ("qk", "v", "mlp"), {}, GateMode.SEARCH)
    for g in gates:
        g.anchor_()
    macs = MacModel(model, (3, 16, 16))
    pressure = MacPressure(macs, [g.logits for g in gates])
    config = SearchConfig(target=0.5)
    qk_gate, mlp_gate = model.blocks[2].attn.gates["qk"], model.blocks[2].mlp.gates["mlp"]
    start = qk_gate.logits.mean().item(), mlp_gate.logits.mean().item()
    _, loss = pressure.loss(0.5, config.mac_loss_weight, config.penalty)
    pressure.step(loss, 0.01)
    qk = start[0] - qk_gate.logits.mean().item()  # 12,288 MACs per unit
    mlp = start[1] - mlp_gate.logits.mean().item()  # 8,192 MACs per unit
    assert qk > 0 and mlp > 0
    assert qk / mlp == pytest.approx(12288 / 8192, rel=0.01)
    for _ in range(20):
        _, loss = pressure.loss(0.5, config.mac_loss_weight, config.penalty)
        pressure.step(loss, 0.1)
    qk_left = qk_gate.soft_keep_per_head().item() / qk_gate.channels
    mlp_left = mlp_gate.soft_keep_per_head().item() / mlp_gate.channels
    assert qk_left < mlp_left < 1.0  # the costlier group loses channels faster


def test_attention_difference_sees_the_position_bias_and_the_shift_mask() -> None:
    torch.manual_seed(0)
    attn = SoftmaxAttention(32, 4, window_size=(4, 4)).eval()
    x = torch.randn(8, 16, 32)

    def importance(mask=None) -> torch.Tensor:
        attn.tap = {}
        attn(x, mask)
        tap, attn.tap = attn.tap, None
        return attention_difference(attn, tap, "leave_out")

    plain = importance()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 3.0)
    biased = importance()
    assert (biased - plain).abs().max() > 1e-3
    shift = torch.zeros(2, 16, 16)
    shift[1, :8, 8:] = shift[1, 8:, :8] = -100.0  # two windows, the second one split in two
    assert (importance(shift) - biased).abs().max() > 1e-3


def test_use_reweight_false_survives_prune_and_finetune(digits8) -> None:
    model = tiny_vit()
    teacher = copy.deepcopy(model)
    calib = next(iter(digits8[0]))[0]
    initialize(model, calib)
    _search(
        model, digits8[0], SearchConfig(target=0.6, steps=3, use_reweight=False), teacher=teacher
    )
    finalize(model, (3, 8, 8), 0.6, tolerance=0.1)
    prune(model)
    assert all(not r.trainable and not r.param.requires_grad for r in reweights(model))
    train(model, digits8[0], TrainConfig(epochs=1), progress=False)
    assert all(torch.all(r.scale() == 1) for r in reweights(model))


def test_flatten_qk_reweight_always_folds() -> None:
    """log-parametrised: however far training pushes it, r > 0 and the fold is exact."""
    torch.manual_seed(0)
    attn = FocusedLinearAttention(32, 4, 16, (4, 4)).eval()
    with torch.no_grad():
        attn.qk_reweight.param.normal_(-3.0, 2.0)  # r = exp(.) in (0, 1): was r <= 0 -> raise
        attn.scale.normal_(0, 0.5)
    x = torch.randn(2, 16, 32)
    before = attn(x)
    attn.fold_reweight_()
    assert (attn(x) - before).abs().max() <= 1e-4 * before.abs().max()


def test_sqrt_ratio_reweight_compensates_the_width_and_folds(digits8) -> None:
    model = tiny_vit()
    initialize(model, next(iter(digits8[0]))[0])
    _search(
        model,
        digits8[0],
        SearchConfig(target=0.5, steps=20, sim_every=0, qk_reweight_init="sqrt_ratio"),
    )
    finalize(model, (3, 8, 8), 0.5, tolerance=0.05)
    attn = model.blocks[1].attn  # softmax
    k = attn.gates["qk"].kept_per_head()
    assert k < attn.qk_dim
    factor = attn._qk_multiplier().detach() / attn.qk_reweight.scale().detach()
    assert torch.allclose(
        factor[attn.gates["qk"].hard_mask.bool()], torch.tensor(math.sqrt(attn.qk_dim / k))
    )
    x = torch.randn(3, 3, 8, 8)
    masked = model.eval()(x)
    prune(model)
    assert (model(x) - masked).abs().max() <= 1e-4


def test_weight_decay_follows_timms_convention() -> None:
    model = timm.create_model("flatten_swin_micro", num_classes=10)
    groups = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for n in decayed:
        assert n.endswith(".weight") and "norm" not in n, n
    for part in ("relative_position_bias_table", ".scale", "positional_encoding", "norm", ".bias"):
        assert any(part in n for n in exempt), part
    vit = timm.create_model("flatten_vit_micro", num_classes=10)
    exempt = {
        n
        for n, p in vit.named_parameters()
        for g in weight_decay_groups(vit, 0.05)
        if g["weight_decay"] == 0
        for q in g["params"]
        if q is p
    }
    assert "pos_embed" in exempt


def test_reweights_learn_at_a_multiple_of_the_weights_lr() -> None:
    model = tiny_vit()
    rw = {id(p) for r in reweights(model) for p in r.parameters()}
    logits = [g.logits for m in prunable_modules(model).values() for g in m.gates.values()]

    def reweight_lr(**kw) -> float:
        opt = search_module._optimizer(model, logits, SearchConfig(target=0.5, lr=3e-4, **kw))
        (lr,) = {g["lr"] for g in opt.param_groups if any(id(p) in rw for p in g["params"])}
        return lr

    assert reweight_lr() == pytest.approx(search_module.REWEIGHT_LR_FACTOR * 3e-4)
    assert reweight_lr(reweight_lr=0.01) == 0.01


def test_similarity_refresh_uses_the_calibration_batch(digits8, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(
        search_module,
        "update_similarity",
        lambda model, images, tau, taps=None, **kw: seen.append(images),
    )
    model = tiny_vit()
    calib = torch.randn(16, 3, 8, 8)
    _search(model, digits8[0], SearchConfig(target=0.7, steps=5, sim_every=2), calib=calib)
    assert len(seen) == 2 and all(torch.equal(s, calib) for s in seen)


def test_same_seed_same_plan(digits8) -> None:
    plans = []
    for _ in range(2):
        model = tiny_vit()
        calib = digits8[0].dataset.images[:32]
        initialize(model, calib)
        _search(model, digits8[0], SearchConfig(target=0.5, steps=15, sim_every=5), calib=calib)
        plans.append(
            (
                finalize(model, (3, 8, 8), 0.5).to_json(),
                [
                    g.logits.detach().clone()
                    for m in prunable_modules(model).values()
                    for g in m.gates.values()
                ],
            )
        )
    assert plans[0][0] == plans[1][0]
    assert all(torch.equal(a, b) for a, b in zip(plans[0][1], plans[1][1], strict=True))


def test_groups_and_min_width_are_respected(digits8) -> None:
    model = tiny_vit()
    calib = next(iter(digits8[0]))[0]
    initialize(model, calib)
    config = SearchConfig(target=0.6, steps=10, groups=("qk", "v"), min_width={"qk": 3})
    _search(model, digits8[0], config, calib=calib)
    plan = finalize(
        model, (3, 8, 8), 0.6, tolerance=0.1, groups=config.groups, min_width=config.min_width
    )
    for widths in plan.widths().values():
        if "mlp" in widths:
            assert widths["mlp"] == 64
        if "qk" in widths:
            assert widths["qk"] >= 3
    with pytest.raises(ValueError, match=r"\('qk', 'v', 'mlp'\)"):
        SearchConfig(target=0.5, groups=("attn",))
    with pytest.raises(ValueError, match="logit_optimizer"):
        SearchConfig(target=0.5, logit_optimizer="lion")


def test_widths_a_head_cannot_hold_are_refused_naming_the_module(digits8) -> None:
    """Issue 26: min_width above a head's channels and a round_to that does not divide them
    were clamped without a word (tiny_vit: 8 channels per head)."""
    from prune_core import check_widths, search_plan

    model = tiny_vit()
    head = r"the 8 channels per head of blocks.0.attn \(qk\)"
    with pytest.raises(ValueError, match=rf"min_width\['qk'\] = 9 is above {head}"):
        finalize(model, (3, 8, 8), 0.6, min_width={"qk": 9})
    calib = next(iter(digits8[0]))[0]
    config = SearchConfig(target=0.6, steps=1, round_to=3)
    with pytest.raises(ValueError, match=rf"round_to = 3 does not divide {head}"):
        search_plan(model, digits8[0], (3, 8, 8), config, calib=calib, progress=False)
    check_widths(model, ("qk", "v", "mlp"), {"qk": 8, "mlp": 64}, round_to=8)  # they fit
    check_widths(model, ("mlp",), {"qk": 99}, round_to=1)  # qk is not pruned: no minimum


def test_sgd_logits_meet_the_target(digits8) -> None:
    model = tiny_vit()
    calib = next(iter(digits8[0]))[0]
    initialize(model, calib)
    history = _search(
        model, digits8[0], SearchConfig(target=0.5, steps=60, logit_optimizer="sgd"), calib=calib
    )
    assert abs(history[-1]["soft_ratio"] - 0.5) <= 0.05
    plan = finalize(model, (3, 8, 8), 0.5)
    assert 0.48 <= MacModel(model, (3, 8, 8)).ratio() <= 0.5
    apply_plan(tiny_vit(), plan)  # a valid plan for a fresh model


def test_magnitude_plan_is_untouched_by_gate_state() -> None:
    model = tiny_vit()
    plan = magnitude_plan(model, 0.5)
    assert all(w == {"qk": 4, "v": 4} or w == {"mlp": 32} for w in plan.widths().values())


def test_similarity_against_kept_channels_frees_the_surviving_twin() -> None:
    """Channels 0 and 1 are twins: both redundant among all; with 1 dropped, 0 is not."""
    from prune_core.scoring import similarity_weights

    torch.manual_seed(0)
    f = torch.randn(1, 4, 64)
    f[0, 1] = f[0, 0] * 2.0
    w_all = similarity_weights(f, 0.1)
    assert w_all[0, 0] < w_all[0, 2] and w_all[0, 1] < w_all[0, 3]
    kept = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    w_kept = similarity_weights(f, 0.1, kept)
    assert w_kept[0, 0] > w_all[0, 0]
    assert w_kept[0, 1] < w_kept[0, 2]  # the dropped twin stays redundant with the kept one
