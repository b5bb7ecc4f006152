"""Two gloo ranks take exactly the steps one process takes on the union of their batches.

The data-parallel fine-tune (orchestrator/finetune_dp.py) runs ``prune_core.train`` on a
DDP-wrapped pruned model whose loader has a ``DistributedSampler`` (Ray Train's
``prepare_model`` / ``prepare_data_loader``). That is deterministic to compare: with the same
shuffle seed, rank r's k-th batch of b images holds positions r, r+2, ... of the k-th block
of 2b in the epoch's permutation, so one process whose loader walks that permutation in
batches of 2b sees the union of both ranks' batches at every step. DDP averages the ranks'
gradients, the loss is a batch mean, so AdamW takes the same step: the weights must agree to
float rounding (which AdamW amplifies where a gradient nearly cancels: 4.7e-5 at most, in
the position embedding). A rank training alone (a broken all-reduce), or a sampler that
repeats the first epoch's order (``set_epoch`` never called), lands 150-430x further away;
the test measures both, so it cannot pass by a loose tolerance.

(Before: two whole sweeps compared their top-1 within 10 points, and failed once in CI at
36.7 % vs 47.3 %: half the steps at twice the batch is not the same training.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_vit
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import prune_core

IMAGES, PER_RANK, WORLD = 64, 8, 2
CONFIG = prune_core.TrainConfig(epochs=3, lr=2e-3, warmup_epochs=1, seed=0)
TOLERANCE = 2e-4  # fp32 rounding, amplified by AdamW where a gradient nearly cancels


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(IMAGES, 3, 8, 8, generator=g), torch.randint(0, 10, (IMAGES,), generator=g)
    )


def _student() -> torch.nn.Module:
    """A pruned tiny FLatten ViT with trainable reweights, as a trial fine-tunes it."""
    model = tiny_vit(seed=0)
    prune_core.apply_plan(model, prune_core.random_plan(model, 0.5, seed=0))
    prune_core.prune(model)
    prune_core.set_reweight_trainable(model, True)
    for module in prune_core.prunable_modules(model).values():
        module.gates.requires_grad_(False)  # as finetune_dp does: DDP rejects unused parameters
    return model


def _teacher() -> torch.nn.Module:
    return tiny_vit(seed=1).eval()


def _loader(sampler: DistributedSampler, batch: int) -> DataLoader:
    return DataLoader(sampler.dataset, batch_size=batch, sampler=sampler, drop_last=True)


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        data = _data()
        sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
        model = DistributedDataParallel(_student())
        history = prune_core.train(
            model,
            _loader(sampler, PER_RANK),
            CONFIG,
            teacher=_teacher(),
            device="cpu",
            progress=False,
        )
        torch.save(
            {"state": model.module.state_dict(), "history": history}, Path(out) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def _one_process(sampler: DistributedSampler, batch: int) -> tuple[dict, list[dict]]:
    torch.set_num_threads(1)
    model = _student()
    history = prune_core.train(
        model, _loader(sampler, batch), CONFIG, teacher=_teacher(), device="cpu", progress=False
    )
    return model.state_dict(), history


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class _FirstEpochOnly(DistributedSampler):
    def set_epoch(self, epoch: int) -> None:  # the bug this guards against
        pass


def test_two_gloo_workers_match_one_worker(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert _max_diff(ranks[0]["state"], ranks[1]["state"]) == 0.0  # DDP keeps ranks identical

    data = _data()
    union, history = _one_process(
        DistributedSampler(data, num_replicas=1, rank=0, seed=0), WORLD * PER_RANK
    )
    diff = _max_diff(ranks[0]["state"], union)
    assert diff <= TOLERANCE, diff
    # the per-epoch training loss: each rank's mean over its half, averaged, is the union's
    for epoch, row in enumerate(history):
        ranks_mean = sum(r["history"][epoch]["train_loss"] for r in ranks) / WORLD
        assert abs(ranks_mean - row["train_loss"]) <= TOLERANCE, (epoch, ranks_mean, row)

    # What the tolerance rules out, measured: rank 0's batches alone, and a frozen shuffle.
    alone, _ = _one_process(DistributedSampler(data, num_replicas=WORLD, rank=0, seed=0), PER_RANK)
    frozen, _ = _one_process(
        _FirstEpochOnly(data, num_replicas=1, rank=0, seed=0), WORLD * PER_RANK
    )
    off = {
        name: _max_diff(ranks[0]["state"], s) for name, s in (("alone", alone), ("frozen", frozen))
    }
    print(f"max |2 ranks - 1 process| {diff:.2e}; rank 0 alone, frozen shuffle: {off}")
    assert min(off.values()) > 10 * TOLERANCE, off  # measured: 2.0e-2 and 7.0e-3 vs 4.7e-5


def test_train_reshuffles_a_distributed_sampler_every_epoch():
    """prune_core.train calls set_epoch: each epoch of a DistributedSampler has a new order."""
    seen: list[int] = []

    class Recording(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            seen.append(epoch)
            super().set_epoch(epoch)

    data = _data()
    sampler = Recording(data, num_replicas=1, rank=0, seed=0)
    prune_core.train(_student(), _loader(sampler, 16), CONFIG, device="cpu", progress=False)
    assert seen == [0, 1, 2]
