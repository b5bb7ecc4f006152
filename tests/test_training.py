"""Search, finalize and fine-tune on real data: targets are met, inputs are checked."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_vit

from prune_core import (
    INIT_MODES,
    MacModel,
    SearchConfig,
    TrainConfig,
    accuracy,
    count_macs,
    current_plan,
    finalize,
    initialize,
    prunable_modules,
    prune,
    search,
    search_plan,
    train,
)
from prune_core.calibration import capture
from prune_core.scoring import attention_difference


@pytest.fixture(scope="module")
def teacher(digits8):
    train_loader, _ = digits8
    model = tiny_vit()
    train(model, train_loader, TrainConfig(epochs=4, lr=3e-3), progress=False)
    return model


@pytest.mark.parametrize("target", [0.7, 0.4])
def test_search_meets_the_mac_target(digits8, teacher, target: float) -> None:
    train_loader, test_loader = digits8
    student = copy.deepcopy(teacher)
    calib = next(iter(train_loader))[0]
    initialize(student, calib, mode="attn_leave_out")
    config = SearchConfig(target=target, steps=60, sim_every=20)
    history = search(student, train_loader, (3, 8, 8), config, teacher=teacher, progress=False)
    # the search itself lands close to the target: the learned counts, before finalize
    assert abs(history[-1]["macs_ratio"] - target) <= 0.05
    finalize(student, (3, 8, 8), target, tolerance=0.02)
    full = count_macs(teacher, (3, 8, 8))
    ratio = count_macs(student, (3, 8, 8)) / full
    assert target - 0.02 <= ratio <= target
    prune(student)
    assert count_macs(student, (3, 8, 8)) / full == pytest.approx(ratio)
    assert accuracy(student, test_loader) > 20.0  # far above chance (10 %) before fine-tune


def test_round_to_gives_width_multiples(teacher) -> None:
    student = copy.deepcopy(teacher)
    finalize(student, (3, 8, 8), 0.6, tolerance=0.1, round_to=4)
    widths = MacModel(student, (3, 8, 8)).current_widths()
    assert all(w % 4 == 0 for groups in widths.values() for w in groups.values())


def test_search_plan_reads_init_and_finalize_settings_from_one_config(digits8, teacher) -> None:
    """One SearchConfig drives the phase: init_mode reaches initialize (uniform θ = θ₀ before
    the search moves them), round_to and tolerance reach finalize."""
    student = copy.deepcopy(teacher)
    calib = next(iter(digits8[0]))[0]
    config = SearchConfig(
        target=0.6, steps=1, init_mode="uniform", theta0=2.0, round_to=4, tolerance=0.1
    )
    steps_seen = []
    plan, history = search_plan(
        student,
        digits8[0],
        (3, 8, 8),
        config,
        calib=calib,
        on_step=lambda step, record: steps_seen.append(step),
        progress=False,
    )
    assert steps_seen == [0] and len(history) == 1
    widths = MacModel(student, (3, 8, 8)).current_widths()
    assert all(w % 4 == 0 for groups in widths.values() for w in groups.values())
    ratio = count_macs(student, (3, 8, 8)) / count_macs(teacher, (3, 8, 8))
    assert 0.5 <= ratio <= 0.6
    assert plan.to_json() == current_plan(student).to_json()
    # one step of lr 0.1 moves θ = 2 by at most ~0.1: the uniform init reached the gates
    logits = torch.cat([g.logits.detach().flatten() for g in _gates(student)])
    assert logits.min() > 1.7 and logits.max() < 2.3
    with pytest.raises(ValueError, match="init_mode must be one of"):
        SearchConfig(target=0.5, init_mode="attn")


def _gates(model):
    return [g for m in prunable_modules(model).values() for g in m.gates.values()]


@pytest.mark.parametrize("mode", INIT_MODES)
def test_init_modes_set_standardised_logits(digits8, mode: str) -> None:
    model = tiny_vit()
    initialize(model, next(iter(digits8[0]))[0], mode=mode, init_scale=2.0, theta0=1.0)
    logits = model.blocks[1].attn.gates["qk"].logits.detach()
    assert torch.allclose(logits.mean(1), torch.ones(4), atol=1e-4)
    if mode == "uniform":
        assert torch.all(logits == 1.0)
    else:
        assert torch.allclose(logits.std(1, unbiased=False), torch.full((4,), 2.0), atol=1e-3)


def test_attention_difference_finds_the_channel_that_shapes_the_map() -> None:
    model = tiny_vit()
    attn = model.blocks[1].attn  # softmax attention
    with torch.no_grad():
        attn.qkv.weight[:64].mul_(0.01)  # q and k nearly zero...
        attn.qkv.weight[3].normal_(0, 3.0)  # ...but channel 3 of head 0 (q and k rows)
        attn.qkv.weight[32 + 3].copy_(attn.qkv.weight[3])
    taps = capture(model, torch.randn(8, 3, 8, 8))
    diff = attention_difference(attn, taps["blocks.1.attn"], "leave_out")
    assert int(diff[0].argmax()) == 3
    single = attention_difference(attn, taps["blocks.1.attn"], "single")
    assert int(single[0].argmin()) == 3


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="MAC target"):
        SearchConfig(target=0.0)
    with pytest.raises(ValueError, match="MAC target"):
        SearchConfig(target=1.2)
    with pytest.raises(ValueError, match="init_mode"):
        initialize(tiny_vit(), torch.randn(2, 3, 8, 8), mode="best")
    with pytest.raises(ValueError, match="below what this model can reach"):
        finalize(tiny_vit(), (3, 8, 8), 0.01)
    with pytest.raises(ValueError, match="no prunable modules"):
        search(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)),
            [],
            (3, 8, 8),
            SearchConfig(target=0.5),
        )


def test_finetune_resumes_from_its_state(digits8) -> None:
    train_loader, _ = digits8
    config = TrainConfig(epochs=2, lr=1e-3)
    states = {}
    straight = tiny_vit()
    train(
        straight,
        train_loader,
        config,
        progress=False,
        on_epoch=lambda e, m, s: states.setdefault(e, copy.deepcopy(s)),
    )
    resumed = tiny_vit(seed=5)
    history = train(resumed, train_loader, config, resume_state=states[0], progress=False)
    assert [h["epoch"] for h in history] == [1]
    x = torch.randn(2, 3, 8, 8)
    assert (resumed.eval()(x) - straight.eval()(x)).abs().max() <= 1e-5


def test_empty_loader_is_a_value_error_in_train_and_search() -> None:
    """Never a bare StopIteration or 0 steps of training: batch 64 over 10 samples with
    drop_last (issue 12: a teacher 'trained' 0 steps was kept at chance)."""
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.zeros(10, 3, 8, 8), torch.zeros(10, dtype=torch.long))
    empty = DataLoader(data, batch_size=64, drop_last=True)
    model = tiny_vit()
    expected = r"the loader yields no batch \(10 samples, batch_size 64, drop_last\)"
    with pytest.raises(ValueError, match="train: " + expected):
        train(model, empty, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="search: " + expected):
        search(model, empty, (3, 8, 8), SearchConfig(target=0.5, steps=2), progress=False)

    class Dry(torch.utils.data.IterableDataset):  # claims 5 samples, yields none
        def __len__(self) -> int:
            return 5

        def __iter__(self):
            return iter(())

    stream = DataLoader(Dry(), batch_size=4)  # len() 2: found empty only while reading
    calib = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="train: the loader yields no batch"):
        train(model, stream, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="search: the loader yields no batch"):
        search(model, stream, (3, 8, 8), SearchConfig(target=0.5, steps=2), calib=calib)
