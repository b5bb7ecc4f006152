"""One row of the Fashion-MNIST benchmark: prune a copy of the teacher with one method, fine-tune
within the budget, read out (the protocol and the methods: ``benchmarks.fashion``'s docstring).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math

import torch
from torch import nn

import prune_core as pc
from benchmarks import ablations, tp_peer
from benchmarks.fashion_setup import INPUT_SIZE, Data, Steps, budget_steps, search_steps
from prune_core.training import batches_forever

FINETUNE_LR = 1e-3
TOLERANCE = 0.01
TAYLOR_BATCHES = 4

METHODS = (
    "method",
    "l1_uniform",
    "random",
    "tp_local",
    "tp_global",
    "tp_isomorphic_taylor",
    "no_similarity",
    "unaligned",
    "no_reweight",
    "uniform_init_qk",
    "uniform_init_all",
)
SEARCHED = {
    "method",
    "no_similarity",
    "unaligned",
    "no_reweight",
    "uniform_init_qk",
    "uniform_init_all",
}


def _widths(model: nn.Module, ratios: dict[str, float]) -> dict[str, dict[str, int]]:
    """Per-layer widths of per-group keep ratios, rounded as ``magnitude_plan`` does."""
    return {
        name: {g: max(1, round(ratios[g] * gate.channels)) for g, gate in m.gates.items()}
        for name, m in pc.prunable_modules(model).items()
    }


def uniform_keeps(
    model: nn.Module,
    target: float,
    tolerance: float = TOLERANCE,
    input_size: tuple[int, int, int] = INPUT_SIZE,
) -> dict[str, float]:
    """Per-group keep ratios (the same ratio in every layer) with MACs in ``[t - tol, t]``.

    Starts at the largest single ratio under t (``uniform_keep``), then raises the ratio of the
    most pruned group that still fits under t to the next value that widens some layer by one
    channel per head (with one width per group, as in ``flatten_vit_micro``: one channel per
    head at a time), until none fits. A group whose layers differ in width (Swin's stages)
    keeps the same ratio in all of them.
    """
    channels: dict[str, set[int]] = {}
    for m in pc.prunable_modules(model).values():
        for g, gate in m.gates.items():
            channels.setdefault(g, set()).add(gate.channels)
    macs = pc.MacModel(model, input_size)
    keep = pc.uniform_keep(model, input_size, target)
    ratios = {
        g: max(1, round(keep * next(iter(cs)))) / next(iter(cs)) if len(cs) == 1 else keep
        for g, cs in channels.items()
    }

    def ratio(r: dict[str, float]) -> float:
        return macs.total(_widths(model, r)) / macs.full

    def raised(g: str) -> float | None:  # the next ratio of g that widens a layer
        options = [
            (max(1, round(ratios[g] * c)) + 1) / c
            for c in channels[g]
            if max(1, round(ratios[g] * c)) < c
        ]
        return min(options) if options else None

    while True:
        fits = [
            g
            for g in channels
            if raised(g) is not None and ratio({**ratios, g: raised(g)}) <= target
        ]
        if not fits:
            break
        g = min(fits, key=lambda g: (ratios[g], g))
        ratios[g] = raised(g)
    if ratio(ratios) < target - tolerance:
        raise ValueError(
            f"uniform ratios {ratios} reach only {ratio(ratios):.4f} of the MACs for target "
            f"{target}"
        )
    return ratios


def search_student(
    student: nn.Module,
    method: str,
    target: float,
    seed: int,
    teacher_model: nn.Module,
    data: Data,
    steps: int,
    args: argparse.Namespace,
    input_size: tuple[int, int, int] = INPUT_SIZE,
) -> None:
    """Initialise and search ``student`` in place, the way ``method`` says (module doc).

    ``data`` needs ``train`` (the search's batches) and ``calib``; ``args`` the search knobs
    (``sim_temperature``, ``sim_every``, ``similarity_to``, ``search_lr``, ``reweight_lr``).
    ``benchmarks.fashion_attention_rows`` calls it too, with its own data and input size.
    """
    tau = math.inf if method == "no_similarity" else args.sim_temperature
    mode = "uniform" if method == "uniform_init_all" else "attn_leave_out"
    pc.initialize(student, data.calib, mode=mode, sim_temperature=tau, theta0=0.0)
    if method == "uniform_init_qk":  # uniform on the qk groups only (v, mlp keep their init)
        with torch.no_grad():
            for module in pc.prunable_modules(student).values():
                if "qk" in module.gates:
                    module.gates["qk"].logits.fill_(0.0)
                    module.gates["qk"].anchor_()
    if method == "unaligned":
        ablations.make_unaligned(student)
    config = pc.SearchConfig(
        target=target,
        steps=steps,
        sim_temperature=tau,
        seed=seed,
        lr=args.search_lr,
        sim_every=args.sim_every,
        similarity_to=args.similarity_to,
        reweight_lr=args.reweight_lr,
        use_reweight=method != "no_reweight",
        tolerance=TOLERANCE,
    )
    pc.search(
        student,
        data.train,
        input_size,
        config,
        teacher=teacher_model,
        calib=data.calib,
        device="cpu",
        progress=False,
    )


def on_teacher_weights(teacher_model: nn.Module, plan: pc.Plan, data: Data) -> float:
    """Top-1 of ``plan`` applied to an untouched copy of the teacher (no training)."""
    model = copy.deepcopy(teacher_model)
    pc.apply_plan(model, plan)
    pc.prune(model)
    return pc.accuracy(model, data.test, "cpu")


def unaligned_on_teacher_weights(teacher_model: nn.Module, student: nn.Module, data: Data) -> float:
    """Top-1 of the teacher masked with the student's unaligned masks (no training)."""
    model = ablations.make_unaligned(copy.deepcopy(teacher_model))
    source = pc.prunable_modules(student)
    for name, module in pc.prunable_modules(model).items():
        for g, gate in module.gates.items():
            gate.hard_mask.copy_(source[name].gates[g].hard_mask)
            gate.mode = pc.GateMode.HARD
    return pc.accuracy(model, data.test, "cpu")


def peer_plan(
    method: str,
    teacher: nn.Module,
    target: float,
    seed: int,
    train,
    *,
    input_size: tuple[int, int, int] = INPUT_SIZE,
    tolerance: float = TOLERANCE,
) -> pc.Plan:
    """The plan of a one-shot peer at MACs in ``[target - tolerance, target]``: ``l1_uniform``
    and ``random`` at uniform widths (``uniform_keeps``), Torch-Pruning's ``tp_global``,
    ``tp_local`` and ``tp_isomorphic_taylor`` (its Taylor scores from ``TAYLOR_BATCHES``
    batches of ``train``, seeded)."""
    if method in ("l1_uniform", "random"):
        keeps = uniform_keeps(teacher, target, tolerance, input_size)
        if method == "l1_uniform":
            return pc.magnitude_plan(teacher, keeps)
        return pc.random_plan(teacher, keeps, seed=seed)
    grads = None
    if method == "tp_isomorphic_taylor":
        torch.manual_seed(seed)
        grads = tp_peer.taylor_grads(
            teacher, itertools.islice(batches_forever(train), TAYLOR_BATCHES)
        )
    plan, _ = tp_peer.tp_plan_at(
        teacher,
        input_size,
        target,
        global_pruning=method == "tp_global",
        isomorphic=method == "tp_isomorphic_taylor",
        grads=grads,
        tolerance=tolerance,
    )
    return plan


def run_one(
    method: str,
    target: float,
    seed: int,
    budget: str,
    teacher_model: nn.Module,
    data: Data,
    args: argparse.Namespace,
) -> dict:
    """Prune a copy of the teacher to ``target`` with ``method``, fine-tune, read out."""
    torch.manual_seed(seed)
    total = budget_steps(budget, data, args)
    student = copy.deepcopy(teacher_model).train()
    realisable, searched = method != "unaligned", 0
    if method in SEARCHED:
        searched = min(search_steps(data, args), total)
        search_student(student, method, target, seed, teacher_model, data, searched, args)
        if method == "unaligned":
            ablations.finalize_unaligned(student, INPUT_SIZE, target, tolerance=TOLERANCE)
            plan = None
        else:
            plan = pc.finalize(student, INPUT_SIZE, target, tolerance=TOLERANCE)
    else:
        plan = peer_plan(method, teacher_model, target, seed, data.train)
        pc.apply_plan(student, plan)
    if realisable:
        pc.prune(student)
        top1_tw = on_teacher_weights(teacher_model, plan, data)
    else:
        top1_tw = unaligned_on_teacher_weights(teacher_model, student, data)
    if method == "no_reweight":
        pc.set_reweight_trainable(student, False)  # already off since the search; explicit
    finetune = total - searched
    if finetune:
        pc.train(
            student,
            Steps(data.train, finetune),
            pc.TrainConfig(epochs=1, warmup_epochs=0, lr=FINETUNE_LR, seed=seed),
            teacher=teacher_model,
            device="cpu",
            progress=False,
        )
    if realisable:
        macs, params = pc.count_macs(student, INPUT_SIZE), pc.count_params(student)
        ratio = macs / pc.count_macs(teacher_model, INPUT_SIZE)
    else:
        macs, full = ablations.masked_macs(student, INPUT_SIZE)
        ratio, params = macs / full, float("nan")
    return {
        "method": method,
        "target": target,
        "seed": seed,
        "budget": budget,
        "macs_ratio": ratio,
        "top1": pc.accuracy(student, data.test, "cpu"),
        "top1_teacher_weights": top1_tw,
        "realisable": realisable,
        "search_steps": searched,
        "finetune_steps": finetune,
        "macs": macs,
        "params": params,
    }
