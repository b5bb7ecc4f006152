"""Channel selection alone: each plan applied to the **unchanged teacher weights**, no training.

    python -m benchmarks.selection --targets 0.5 --seeds 0 1 2 \
        --out benchmarks/results/selection.csv

Fine-tuning hides how good a plan is (a short fine-tune lets almost any plan recover on digits),
so this read-out isolates the pruning decision: the searched model's weights are thrown away,
only its plan is kept, and the plan is applied to a fresh copy of the teacher. Methods: the
method (attention-difference init, similarity weights, search, finalize), uniform L1 magnitude
and random channels at the largest uniform keep ratio within the target. The script only uses
the public API, so it also runs on older commits (a before/after comparison of a change).
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

import prune_core as pc
from benchmarks import digits_setup
from benchmarks._cli import mac_target

METHODS = ("method", "l1_uniform", "random")
FIELDS = (
    "method",
    "target",
    "seed",
    "macs_ratio",
    "top1_teacher_weights",
    "teacher_top1",
    "search_steps",
    "commit",
    "wall_s",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=mac_target, nargs="+", default=[0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/selection.csv"))
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--search-steps", type=int, default=150)
    p.add_argument("--sim-temperature", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default=None, help="commit label (default: git HEAD)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.search_steps < 1 or args.teacher_epochs < 1:
        p.error("--threads, --search-steps and --teacher-epochs must be >= 1")
    return args


def head_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plan_for(
    method: str,
    teacher: nn.Module,
    data: digits_setup.Digits,
    target: float,
    seed: int,
    args: argparse.Namespace,
) -> pc.Plan:
    """``method``'s plan at ``target``: the baselines keep the largest uniform ratio within it
    (the largest weights, or random channels); the method initialises, searches (weights adapt
    too) and finalizes, its adapted weights dropped."""
    if method != "method":
        keep = pc.uniform_keep(teacher, data.input_size, target)
        if method == "l1_uniform":
            return pc.magnitude_plan(teacher, keep)
        return pc.random_plan(teacher, keep, seed=seed)
    student = copy.deepcopy(teacher).train()
    pc.initialize(student, data.calib, mode="attn_leave_out", sim_temperature=args.sim_temperature)
    config = pc.SearchConfig(
        target=target, steps=args.search_steps, sim_temperature=args.sim_temperature, seed=seed
    )
    extra = {"calib": data.calib} if "calib" in inspect.signature(pc.search).parameters else {}
    pc.search(
        student,
        data.train,
        data.input_size,
        config,
        teacher=teacher,
        device="cpu",
        progress=False,
        **extra,
    )
    return pc.finalize(student, data.input_size, target)


def on_teacher_weights(
    teacher: nn.Module, plan: pc.Plan, data: digits_setup.Digits
) -> tuple[float, float]:
    """(top-1 %, MAC ratio) of ``plan`` applied to an untouched copy of the teacher."""
    model = copy.deepcopy(teacher)
    full = pc.count_macs(model, data.input_size)
    pc.apply_plan(model, plan)
    pc.prune(model)
    return pc.accuracy(model, data.test, "cpu"), pc.count_macs(model, data.input_size) / full


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=140)
    commit = args.label or head_commit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.is_file()
    with args.out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for seed in args.seeds:
            data = digits_setup.digits(args.img_size, seed)
            teacher, teacher_top1 = digits_setup.teacher(
                data, seed, args.teacher_epochs, progress=False
            )
            for target in args.targets:
                for method in args.methods:
                    started = time.perf_counter()
                    torch.manual_seed(seed)
                    plan = plan_for(method, teacher, data, target, seed, args)
                    top1, ratio = on_teacher_weights(teacher, plan, data)
                    row = {
                        "method": method,
                        "target": target,
                        "seed": seed,
                        "macs_ratio": f"{ratio:.4f}",
                        "top1_teacher_weights": f"{top1:.2f}",
                        "teacher_top1": f"{teacher_top1:.2f}",
                        "search_steps": args.search_steps if method == "method" else 0,
                        "commit": commit,
                        "wall_s": f"{time.perf_counter() - started:.1f}",
                    }
                    writer.writerow(row)
                    f.flush()
                    console.print(
                        f"{commit} seed {seed} target {target:.2f} {method:>10}: "
                        f"{top1:6.2f} % on teacher weights at {ratio:.3f} MACs "
                        f"(teacher {teacher_top1:.2f} %)"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
