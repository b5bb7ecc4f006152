"""One row of the Fashion-attention benchmark: prune a copy of the teacher with one method to a
MAC target, fine-tune for the rest of the budget, read top-1 on validation and on test.

The methods (protocol in ``benchmarks.fashion_attention``'s docstring):

- ``method``: ours (``initialize(attn_leave_out)``, similarity τ, search, ``finalize``);
- peers: ``l1_uniform``, ``random``, ``tp_local``, ``tp_global``, ``tp_isomorphic_taylor``
  (as in ``benchmarks.fashion_rows`` / ``benchmarks.tp_peer``), and ``learned_mask``
  (ViT-Slim-style soft masks, ``benchmarks.learned_mask``);
- ablations of ``method``, one idea each: ``no_similarity``, ``no_reweight``,
  ``uniform_init_qk``, ``uniform_init_all``, ``unaligned`` (masked only);
- controls that split what the search decides: ``method_widths_l1_select`` (the search's
  widths per layer, L1 magnitude on the teacher picks the channels),
  ``uniform_widths_method_select`` (``l1_uniform``'s widths, the search's ranking picks the
  channels, searched weights kept),
  ``no_search_training`` (the search's plan on a fresh copy of the teacher: the search's weight
  updates are dropped). The three are charged the search's steps, like ``method``.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import prune_core as pc
from benchmarks import ablations, learned_mask
from benchmarks.fashion_attention_setup import INPUT_SIZE, Data
from benchmarks.fashion_rows import peer_plan, search_student, uniform_keeps
from benchmarks.fashion_setup import Steps
from prune_core.scoring import unit_magnitude

TOLERANCE = 0.01

GOAL_PEERS = ("l1_uniform", "tp_global", "tp_isomorphic_taylor")
PEERS = (*GOAL_PEERS, "tp_local", "random", "learned_mask")
ABLATIONS = ("no_similarity", "no_reweight", "uniform_init_qk", "uniform_init_all", "unaligned")
CONTROLS = ("method_widths_l1_select", "uniform_widths_method_select", "no_search_training")
METHODS = ("method", *PEERS, *ABLATIONS, *CONTROLS)
SEARCHED = {"method", *ABLATIONS, *CONTROLS}  # run our search (the controls, to get a plan)


def l1_at_widths(model: nn.Module, widths: dict[str, dict[str, int]]) -> pc.Plan:
    """L1-magnitude channels (``magnitude_plan``'s score) at given per-layer widths."""
    plan = pc.Plan()
    for name, module in pc.prunable_modules(model).items():
        plan.layers[name] = {}
        for g, gate in module.gates.items():
            scores = unit_magnitude(module, g).to(gate.similarity)
            if gate.aligned:
                scores = scores.sum(0, keepdim=True).expand_as(scores)
            idx = scores.topk(widths[name][g], dim=1).indices.sort(dim=1).values
            plan.layers[name][g] = idx.tolist()
    return plan


def ranked_at_uniform_widths(student: nn.Module, teacher: nn.Module, target: float) -> pc.Plan:
    """The search's ranking e picks each head's channels at ``l1_uniform``'s widths."""
    keeps = uniform_keeps(teacher, target, TOLERANCE, INPUT_SIZE)
    for module in pc.prunable_modules(student).values():
        for g, gate in module.gates.items():
            gate.set_hard(gate.topk_mask(max(1, round(keeps[g] * gate.channels))))
    return pc.current_plan(student)


_PLANS: dict[tuple[int, str, float], pc.Plan] = {}  # seed-free plans, per teacher and target


def _peer_plan(method: str, teacher: nn.Module, target: float, seed: int, data: Data) -> pc.Plan:
    """The plan of a one-shot peer; the seed-free ones (L1, TP magnitude) are made once."""
    cached = (id(teacher), method, round(target, 4))
    if cached not in _PLANS or method in ("random", "tp_isomorphic_taylor"):
        _PLANS[cached] = _make_peer_plan(method, teacher, target, seed, data)
    return copy.deepcopy(_PLANS[cached])


def _make_peer_plan(
    method: str, teacher: nn.Module, target: float, seed: int, data: Data
) -> pc.Plan:
    return peer_plan(
        method, teacher, target, seed, data.train, input_size=INPUT_SIZE, tolerance=TOLERANCE
    )


def _searched_plan(
    method: str,
    student: nn.Module,
    teacher: nn.Module,
    target: float,
    seed: int,
    data: Data,
    steps: int,
    args: argparse.Namespace,
) -> tuple[nn.Module, pc.Plan | None]:
    """Search (ours or an ablation), then the plan each method takes from it."""
    base = method if method in ABLATIONS else "method"
    search_student(student, base, target, seed, teacher, data, steps, args, INPUT_SIZE)
    if method == "unaligned":
        ablations.finalize_unaligned(student, INPUT_SIZE, target, tolerance=TOLERANCE)
        return student, None
    if method == "uniform_widths_method_select":
        return student, ranked_at_uniform_widths(student, teacher, target)
    plan = pc.finalize(student, INPUT_SIZE, target, tolerance=TOLERANCE)
    if method == "method_widths_l1_select":
        plan = l1_at_widths(teacher, plan.widths())
    if method in ("method_widths_l1_select", "no_search_training"):
        student = copy.deepcopy(teacher).train()  # the search's weight updates are dropped
        pc.apply_plan(student, plan)
    return student, plan


def run_one(
    method: str,
    target: float,
    seed: int,
    total_steps: int,
    teacher: nn.Module,
    data: Data,
    args: argparse.Namespace,
) -> dict:
    """Prune a copy of ``teacher`` to ``target`` with ``method``, fine-tune, read out.

    ``args``: ``search_steps``, ``lr_now`` (the fine-tune lr), ``mask_lr`` and the search knobs of
    ``fashion_rows.search_student``. Every row gets ``total_steps`` weight updates after the
    teacher (search steps included); top-1 in % on validation and test.
    """
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).train()
    searched, plan = 0, None
    if method in SEARCHED:
        searched = min(args.search_steps, total_steps)
        student, plan = _searched_plan(method, student, teacher, target, seed, data, searched, args)
    elif method == "learned_mask":
        searched = min(args.search_steps, total_steps)
        plan = learned_mask.search(
            student,
            data.train,
            INPUT_SIZE,
            target,
            steps=searched,
            seed=seed,
            teacher=teacher,
            calib=data.calib,
            lr=args.search_lr,
            mask_lr=args.mask_lr,
            tolerance=TOLERANCE,
        )
    else:
        plan = _peer_plan(method, teacher, target, seed, data)
        pc.apply_plan(student, plan)
    realisable = method != "unaligned"
    if realisable:
        pc.prune(student)
    if method == "no_reweight":
        pc.set_reweight_trainable(student, False)
    finetune = total_steps - searched
    if finetune:
        pc.train(
            student,
            Steps(data.train, finetune),
            pc.TrainConfig(epochs=1, warmup_epochs=0, lr=args.lr_now, seed=seed),
            teacher=teacher,
            device="cpu",
            progress=False,
        )
    if realisable:
        macs = pc.count_macs(student, INPUT_SIZE)
        ratio = macs / pc.count_macs(teacher, INPUT_SIZE)
    else:
        macs, full = ablations.masked_macs(student, INPUT_SIZE)
        ratio = macs / full
    return {
        "method": method,
        "target": target,
        "seed": seed,
        "macs_ratio": ratio,
        "val_top1": pc.accuracy(student, data.val, "cpu"),
        "test_top1": pc.accuracy(student, data.test, "cpu"),
        "search_steps": searched,
        "finetune_steps": finetune,
        "macs": macs,
        "params": pc.count_params(student) if realisable else float("nan"),
    }
