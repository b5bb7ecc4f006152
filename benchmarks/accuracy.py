"""Item 1: top-1 at equal MACs on digits — the method vs baselines, ablations and the peer.

    python -m benchmarks.accuracy --targets 0.7 0.5 0.3 --seeds 0 1 2 \
        --out benchmarks/results/accuracy.csv

Every method starts from the same cached teacher of its seed (``benchmarks.digits_setup``),
reaches the same MAC target (within ``[t - 0.02, t]`` where its granularity allows), and gets the
same short fine-tune with distillation from that teacher. Methods:

- ``method``         the method: attention-difference init (``attn_leave_out``), similarity
                     weights (τ), search against the MAC target, head-aligned finalize, reweights;
- ``method_0step``   the same initialisation and finalize with no search steps;
- ``no_similarity``  (c) τ = ∞ (uniform similarity weights);
- ``unaligned``      (d) no head alignment: free per-head counts, **masked only** (not realisable
                     as a dense multi-head model, no speed-up; see ``benchmarks.ablations``);
- ``no_reweight``    (e) reweights frozen at 1 in search and fine-tune;
- ``uniform_init``   (f) ``initialize(mode="uniform")`` instead of attention differences;
- ``magnitude``      (a) uniform L1 magnitude per head (``magnitude_plan``), no search;
- ``random``         (b) random channels, equal counts per head (``random_plan``), no search;
- ``tp``, ``tp_global`` (g) Torch-Pruning, ``MagnitudeImportance``, local / global ratio, no
                     search (``benchmarks.tp_peer`` says what it can and cannot trace).

Rows are appended to ``--out`` as they finish; a rerun skips the rows already there, and
``--shard i/n`` splits the (seed, target) pairs between processes (teachers are shared through
a lock). The table and plot are (re)made by ``python -m benchmarks.plot accuracy``.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import prune_core as pc
from benchmarks import ablations, digits_setup, results_csv
from benchmarks._cli import mac_target
from benchmarks.digits_setup import CACHE, Digits
from benchmarks.results_csv import done_keys

METHODS = (
    "method",
    "method_0step",
    "no_similarity",
    "unaligned",
    "no_reweight",
    "uniform_init",
    "magnitude",
    "random",
    "tp",
    "tp_global",
)
SEARCHED = {"method", "no_similarity", "unaligned", "no_reweight", "uniform_init"}
FIELDS = (
    "method",
    "target",
    "seed",
    "top1",
    "top1_before_ft",
    "macs_ratio",
    "macs",
    "params",
    "teacher_top1",
    "realisable",
    "search_steps",
    "finetune_epochs",
    "wall_s",
)
PLANS = Path(__file__).resolve().parent / "results" / "plans"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=mac_target, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.csv"))
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--search-steps", type=int, default=150)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--sim-temperature", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th (seed, target) pair")
    p.add_argument(
        "--save-plans",
        type=int,
        nargs="*",
        default=[0],
        help="seeds whose realisable plans go to benchmarks/results/plans",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or args.search_steps < 1 or args.finetune_epochs < 0:
        p.error("--threads and --search-steps must be >= 1, --finetune-epochs >= 0")
    if args.teacher_epochs < 1:
        p.error("--teacher-epochs must be >= 1")
    args.shard_index, args.shard_count = digits_setup.parse_shard(p, args.shard)
    return args


def run_one(
    method: str,
    target: float,
    seed: int,
    teacher: nn.Module,
    data: Digits,
    args: argparse.Namespace,
) -> tuple[dict, pc.Plan | None]:
    """Prune a copy of ``teacher`` to ``target`` with ``method``, fine-tune, evaluate."""
    size = data.input_size
    student = copy.deepcopy(teacher).train()
    realisable, steps = method != "unaligned", 0
    tau = math.inf if method == "no_similarity" else args.sim_temperature
    plan = None
    if method in SEARCHED or method == "method_0step":
        mode = "uniform" if method == "uniform_init" else "attn_leave_out"
        pc.initialize(student, data.calib, mode=mode, sim_temperature=tau)
        if method == "unaligned":
            ablations.make_unaligned(student)
        if method in SEARCHED:
            steps = args.search_steps
            config = pc.SearchConfig(
                target=target,
                steps=steps,
                sim_temperature=tau,
                seed=seed,
                use_reweight=method != "no_reweight",
            )
            pc.search(
                student, data.train, size, config, teacher=teacher, device="cpu", progress=False
            )
        if method == "unaligned":
            ablations.finalize_unaligned(student, size, target)
        else:
            plan = pc.finalize(student, size, target)
    elif method in ("magnitude", "random"):
        keep = pc.uniform_keep(student, size, target)
        plan = (
            pc.magnitude_plan(student, keep)
            if method == "magnitude"
            else pc.random_plan(student, keep, seed=seed)
        )
        pc.apply_plan(student, plan)
    else:
        from benchmarks import tp_peer

        plan, _ = tp_peer.tp_plan_at(student, size, target, global_pruning=method == "tp_global")
        pc.apply_plan(student, plan)
    if realisable:
        pc.prune(student)
    if method == "no_reweight":  # already frozen by the search; baselines never searched
        pc.set_reweight_trainable(student, False)
    before = pc.accuracy(student, data.test, "cpu")
    if args.finetune_epochs:
        pc.train(
            student,
            data.train,
            pc.TrainConfig(epochs=args.finetune_epochs, lr=1e-3, seed=seed),
            teacher=teacher,
            device="cpu",
            progress=False,
        )
    full = pc.count_macs(teacher, size)
    if realisable:
        macs, params = pc.count_macs(student, size), pc.count_params(student)
    else:
        macs, params = ablations.masked_macs(student, size)[0], float("nan")
    row = {
        "method": method,
        "target": target,
        "seed": seed,
        "top1": pc.accuracy(student, data.test, "cpu"),
        "top1_before_ft": before,
        "macs_ratio": macs / full,
        "macs": macs,
        "params": params,
        "realisable": realisable,
        "search_steps": steps,
        "finetune_epochs": args.finetune_epochs,
    }
    return row, plan


def done_rows(path: Path) -> set[tuple]:
    return done_keys(path, lambda r: (r["method"], round(float(r["target"]), 4), int(r["seed"])))


def append_row(path: Path, row: dict) -> None:
    results_csv.append_row(path, row, FIELDS)


def locked_teacher(data: Digits, seed: int, epochs: int) -> tuple[nn.Module, float]:
    """One process trains a seed's teacher while the others wait for the cached file."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"teacher_s{seed}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return digits_setup.teacher(data, seed, epochs, progress=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    pairs = [(s, t) for t in args.targets for s in args.seeds]  # shards start on different seeds
    pairs = pairs[args.shard_index :: args.shard_count]
    done = done_rows(args.out)
    console.print(
        f"[bold]accuracy benchmark[/] {len(pairs)} (seed, target) pairs × "
        f"{len(args.methods)} methods → {args.out}; {digits_setup.machine()}"
    )
    for seed, target in pairs:
        data = digits_setup.digits(args.img_size, seed)
        teacher, teacher_top1 = locked_teacher(data, seed, args.teacher_epochs)
        for method in args.methods:
            if (method, round(target, 4), seed) in done:
                continue
            started = time.perf_counter()
            row, plan = run_one(method, target, seed, teacher, data, args)
            row.update(teacher_top1=teacher_top1, wall_s=time.perf_counter() - started)
            append_row(args.out, row)
            if plan is not None and seed in args.save_plans:
                PLANS.mkdir(parents=True, exist_ok=True)
                (PLANS / f"{method}_t{target:g}_s{seed}.json").write_text(
                    plan.to_json().replace("\n", "").replace(" ", "")
                )
            console.print(
                f"seed {seed} target {target:.2f} {method:>13}: top-1 "
                f"{row['top1']:6.2f} % (before FT {row['top1_before_ft']:6.2f}) at "
                f"{row['macs_ratio']:.3f} MACs, teacher {teacher_top1:.2f} %, "
                f"{row['wall_s']:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
