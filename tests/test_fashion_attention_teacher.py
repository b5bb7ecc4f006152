"""The Fashion-attention teachers' two cycles: the warm restart goes on from the first one's
checkpoint, one curve, the kept epoch chosen on validation over both (tiny random data)."""

from __future__ import annotations

import sys

import torch
from helpers import ROOT
from torch.utils.data import DataLoader, TensorDataset

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import fashion_attention_setup as setup  # noqa: E402


def test_the_restart_continues_the_first_cycle_and_keeps_the_best_validation_epoch(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(setup, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(setup, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(setup, "TEACHER", {**setup.TEACHER, "epochs": 2, "warmup_epochs": 0})
    monkeypatch.setattr(setup, "RESTART", {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0})
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,))
    pairs = TensorDataset(images, labels)
    data = setup.Data(
        train=DataLoader(pairs, batch_size=32, shuffle=True, drop_last=True),
        val=DataLoader(TensorDataset(images[:32], labels[:32]), batch_size=32),
        test=DataLoader(TensorDataset(images[32:], labels[32:]), batch_size=32),
        calib=images[:8],
        train_size=64,
    )
    starts: list[dict] = []  # the weights each cycle's training starts from
    train = setup.pc.train

    def recording_train(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return train(model, *args, **kwargs)

    monkeypatch.setattr(setup.pc, "train", recording_train)
    lines: list[str] = []
    model, best = setup.teacher("deit_fm", data, log=lines.append)
    stage1 = torch.load(setup._cached("deit_fm", 1), weights_only=False)
    stage2 = torch.load(setup._cached("deit_fm", 2), weights_only=False)
    assert [r["epoch"] for r in stage1["curve"]] == [0, 1]
    assert [r["epoch"] for r in stage2["curve"]] == [0, 1, 2, 3]  # one curve, numbered on
    assert stage2["curve"][:2] == stage1["curve"]
    vals = [r["val_top1"] for r in stage2["curve"]]
    assert best["val_top1"] == max(vals) and best["epoch"] == vals.index(max(vals))
    assert best == stage2["best"]
    # the restart trained on from stage 1's kept weights, not from a fresh model
    assert len(starts) == 2
    assert all(torch.equal(starts[1][k], v) for k, v in stage1["model"].items())
    assert not all(torch.equal(starts[0][k], v) for k, v in stage1["model"].items())
    info = (tmp_path / "results" / "fashion_attention_teacher_deit_fm.json").read_text()
    assert '"finished": true' in info and '"restart"' in info
    assert any(line.startswith("teacher deit_fm epoch 3:") for line in lines)
    assert setup.recipe_key("deit_fm", 1) != setup.recipe_key("deit_fm", 2)
