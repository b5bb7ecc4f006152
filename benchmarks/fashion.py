"""Top-1 at equal MACs and equal training steps on Fashion-MNIST: the method, baselines, peer.

    python -m benchmarks.fashion --targets 0.7 0.5 0.3 --seeds 0 1 2 --budgets short long \
        --shard 0/2 &                                   # and --shard 1/2 on the other core
    python -m benchmarks.fashion --report               # -> fashion_accuracy.md / .png

Digits saturates near 98 % top-1, so pruning decisions drown in noise there; Fashion-MNIST (the
official 60k/10k split, 28×28 grey, ``flatten_vit_micro`` with 7×7 patches: 16 tokens, two
FLatten and two softmax blocks) leaves room for them to differ. Each seed has one teacher,
trained once (8 epochs, lr 3e-3, batch 128, no augmentation, no distillation: about 89 %) and
cached under ``benchmarks/.cache`` behind a file lock, so shards share it. Every row starts
from that teacher and is held to the same two constraints:

- **equal MACs**: the pruned model lands in ``[t - 0.01, t]`` of the teacher's MACs. The method
  uses ``finalize(tolerance=0.01)``; the uniform baselines start at ``uniform_keep`` and raise
  one group's width (qk, v or mlp) at a time while the MACs stay under t; Torch-Pruning's local
  ratio is refined with a separate MLP ratio, its global ratios by a longer bisection;
- **equal training budget**: every row gets the same number of weight-update steps after the
  teacher, ``short`` = half an epoch of the training set (234 steps at batch 128 on 60k),
  ``long`` = two epochs (938). A searched row spends ``--search-steps`` (default 20 % of the
  short budget, 47) of them in the search and the rest in the fine-tune; a row without a
  search fine-tunes for the whole budget. Fine-tunes distil from the teacher (α 0.5, T 2, lr
  1e-3, cosine over the steps, no warm-up). Forward/backward passes that update no weight
  (Torch-Pruning's Taylor gradients on 4 batches, the calibration forward) do not count.

Two read-outs per row: ``top1`` after the budgeted fine-tune, and ``top1_teacher_weights``,
the final plan applied to a fresh copy of the unchanged teacher without any training (it
isolates the choice of channels from how well the weights recover).

Methods (``--methods``):

- ``method``               ``initialize(attn_leave_out)``, similarity weights (τ =
                           ``--sim-temperature``), search, ``finalize``, ``prune``;
- ``l1_uniform``           L1 magnitude, the same width per head in every layer
                           (``magnitude_plan`` with per-group keeps);
- ``random``               random channels at the very same widths (``random_plan``);
- ``tp_local``, ``tp_global``  Torch-Pruning, ``MagnitudeImportance``, local / global ratio
                           (``benchmarks.tp_peer``);
- ``tp_isomorphic_taylor`` Torch-Pruning's isomorphic pruning with ``TaylorImportance``;
- ablations, each removing exactly one thing from ``method``: ``no_similarity`` (τ = ∞),
  ``unaligned`` (no head alignment: **masked only**, not realisable as a dense model, MACs from
  ``ablations.masked_macs``), ``no_reweight`` (``use_reweight=False``, also in the fine-tune),
  ``uniform_init_qk`` (qk logits reset to θ₀ = 0 after the attention-difference init),
  ``uniform_init_all`` (``initialize(mode="uniform")``).

Rows go to ``--out`` (``method,target,seed,budget,macs_ratio,top1,top1_teacher_weights`` and
trailing extras) as they finish; a rerun skips finished (method, target, seed, budget) rows.
``--shard i/n`` splits the (seed, target, budget) cells by estimated cost (a long cell is four
short ones), so shards finish together.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from benchmarks import digits_setup, results_csv
from benchmarks._cli import mac_target
from benchmarks.fashion_rows import METHODS, TOLERANCE, run_one
from benchmarks.fashion_setup import (
    BUDGET_EPOCHS,
    SEARCH_SHARE,
    Data,
    fashion,
    teacher,
)
from benchmarks.results_csv import done_keys

RESULTS = Path(__file__).resolve().parent / "results"

FIELDS = (
    "method",
    "target",
    "seed",
    "budget",
    "macs_ratio",
    "top1",
    "top1_teacher_weights",
    "teacher_top1",
    "realisable",
    "search_steps",
    "finetune_steps",
    "macs",
    "params",
    "wall_s",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=mac_target, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--budgets", nargs="+", default=list(BUDGET_EPOCHS), choices=BUDGET_EPOCHS)
    p.add_argument("--out", type=Path, default=RESULTS / "fashion_accuracy.csv")
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="stratified training subset (default: all 60,000 images)",
    )
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument(
        "--teacher-augment",
        action="store_true",
        help="train the teacher with flip and shift (the first round's teachers)",
    )
    p.add_argument(
        "--search-steps",
        type=int,
        default=None,
        help=f"default: {SEARCH_SHARE * 100:.0f} %% of the short budget",
    )
    p.add_argument(
        "--short-steps",
        type=int,
        default=None,
        help="override the short budget (default: half an epoch)",
    )
    p.add_argument(
        "--long-steps",
        type=int,
        default=None,
        help="override the long budget (default: two epochs)",
    )
    p.add_argument("--sim-temperature", type=float, default=0.5)
    p.add_argument(
        "--sim-every",
        type=int,
        default=50,
        help="refresh the similarity weights every this many search steps",
    )
    p.add_argument("--similarity-to", choices=("all", "kept"), default="all")
    p.add_argument(
        "--search-lr",
        type=float,
        default=5e-4,
        help="learning rate of the weights during the search (AdamW)",
    )
    p.add_argument(
        "--reweight-lr",
        type=float,
        default=None,
        help="learning rate of the reweights in the search (default: SearchConfig's)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="i/n: this process's share of the cells")
    p.add_argument(
        "--report",
        action="store_true",
        help="only (re)make the .md table and .png plot next to --out",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or args.teacher_epochs < 1:
        p.error("--threads and --teacher-epochs must be >= 1")
    for name in ("search_steps", "short_steps", "long_steps", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.shard_index, args.shard_count = digits_setup.parse_shard(p, args.shard)
    return args


# ------------------------------------------------------------------------------ bookkeeping
def done_rows(path: Path) -> set[tuple]:
    return done_keys(
        path,
        lambda r: (r["method"], round(float(r["target"]), 4), int(r["seed"]), r["budget"]),
    )


def append_row(path: Path, row: dict) -> None:
    results_csv.append_row(path, row, FIELDS)  # shards append to the same file


def shard_cells(args: argparse.Namespace) -> list[tuple[int, float, str]]:
    """This shard's (seed, target, budget) cells: longest first to the least loaded shard.

    Every shard computes the same assignment; seeds vary fastest, so shards start on
    different seeds (different teachers) when there are enough of them.
    """
    cost = {"short": BUDGET_EPOCHS["short"], "long": BUDGET_EPOCHS["long"]}
    cells = [(s, t, b) for b in args.budgets for t in args.targets for s in args.seeds]
    cells.sort(key=lambda c: -cost[c[2]])  # stable: seed order kept within a budget
    load = [0.0] * args.shard_count
    mine = []
    for cell in cells:
        k = min(range(args.shard_count), key=lambda i: (load[i], i))
        load[k] += cost[cell[2]]
        if k == args.shard_index:
            mine.append(cell)
    return mine


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        from benchmarks import plot

        if not args.out.is_file():
            print(f"no such CSV: {args.out} (run the benchmark first)", file=sys.stderr)
            return 2
        print(
            plot.fashion_report(args.out, args.out.with_suffix(".md"), args.out.with_suffix(".png"))
        )
        return 0
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    cells = shard_cells(args)
    done = done_rows(args.out)
    console.print(
        f"[bold]fashion accuracy benchmark[/] {len(cells)} (seed, target, budget) "
        f"cells × {len(args.methods)} methods → {args.out}; {digits_setup.machine()}"
    )
    data_by_key: dict[int | None, Data] = {}
    teachers: dict[int, tuple[nn.Module, float]] = {}
    for seed, target, budget in cells:
        todo = [m for m in args.methods if (m, round(target, 4), seed, budget) not in done]
        if not todo:
            continue
        key = None if args.train_subset is None else seed  # the full set is seed-independent
        if key not in data_by_key:
            data_by_key.clear()  # one copy in memory
            data_by_key[key] = fashion(args.train_subset, seed)
        data = data_by_key[key]
        if seed not in teachers:
            started = time.perf_counter()
            console.print(
                f"teacher seed {seed}: {args.teacher_epochs} epochs on "
                f"{data.train_size} images (cached after the first run)"
            )
            teachers[seed] = teacher(
                data,
                seed,
                args.teacher_epochs,
                args.train_subset,
                augment=args.teacher_augment,
                progress=console.is_terminal,
            )
            console.print(
                f"teacher seed {seed}: top-1 {teachers[seed][1]:.2f} % "
                f"({time.perf_counter() - started:.0f} s)"
            )
        teacher_model, teacher_top1 = teachers[seed]
        for method in todo:
            started = time.perf_counter()
            row = run_one(method, target, seed, budget, teacher_model, data, args)
            row.update(teacher_top1=teacher_top1, wall_s=time.perf_counter() - started)
            append_row(args.out, row)
            inside = target - TOLERANCE - 1e-9 <= row["macs_ratio"] <= target + 1e-9
            flag = "" if inside else f" [red]outside [{target - TOLERANCE:g}, {target:g}][/]"
            console.print(
                f"seed {seed} target {target:.2f} {budget:>5} {method:>20}: top-1 "
                f"{row['top1']:6.2f} % (teacher weights {row['top1_teacher_weights']:6.2f})"
                f" at {row['macs_ratio']:.4f} MACs{flag}, {row['search_steps']}+"
                f"{row['finetune_steps']} steps, teacher {teacher_top1:.2f} %, "
                f"{row['wall_s']:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
