"""Fashion-MNIST where attention matters: the method against peers, ablations and controls.

    nohup nice -n 19 python -m benchmarks.fashion_attention --models flatten_swin_fm > /tmp/a.log &
    nohup nice -n 19 python -m benchmarks.fashion_attention --models deit_fm > /tmp/b.log &
    python -m benchmarks.fashion_attention --report   # -> fashion_attention.md / .png

(or ``--shard 0/2`` and ``--shard 1/2``: every second cell each, both teachers in both).

Models (``prune_core/models/fashion_models.py``): ``flatten_swin_fm`` (FLatten-Swin micro,
focused linear attention on 196 tokens in 7×7 windows, then softmax with relative position
bias; 6 blocks) and ``deit_fm`` (DeiT-shaped softmax ViT, 49 patches + class token, depth 6,
4 heads of 16). Data: 55,000 training images, a fixed seeded 5,000-image validation split for
every choice, the official 10,000 test images for reporting only
(``benchmarks.fashion_attention_setup``). **One teacher per model**, shared by all seeds
(the seed varies the pruning: search batches, random choices, fine-tune order).

Every row starts from its model's teacher, lands in ``[t - 0.01, t]`` of its MACs and gets
the same number of weight updates after the teacher (search steps count):

- ``short`` = half an epoch of the 55,000 (215 steps at batch 128), the selection-sensitive
  regime; searched rows spend 43 of them (20 %) searching;
- ``long`` = 5 epochs (2,148 steps), an eighth of the teacher's 40 epochs (25 and a 15-epoch
  warm restart): a standard recovery fine-tune, long enough that a weaker selection can be
  trained back; the search is the same 43 steps.

Fine-tunes distil from the teacher (α 0.5, T 2, cosine, no warm-up) on the augmented training
images, at the learning rate the tuning stage chose for the method on *validation*
(``benchmarks.fashion_attention_tune``: three rates per tuned method, equal effort, a seed no
reported row uses; ``--finetune-lr`` fixes one rate instead). Rows are read on validation
(``val_top1``) and test (``test_top1``). Methods: ``benchmarks.fashion_attention_rows``.

After the teachers, the grid runs in this order (each method's tuning runs just before its
first row), so the goal's cells come
first: short budget, targets 0.5 and
0.3, ``method``/``l1_uniform``/``tp_global``/``tp_isomorphic_taylor`` over 5 seeds; the other
peers (5 seeds); ablations and controls (3 seeds); then the long budget in the same order,
target 0.3 (its goal) before 0.5 in each tier.
Rows are appended to ``--out`` as they finish (file lock, flush, fsync); a rerun skips the
(model, budget, target, method, seed) rows already there, so a stopped run resumes.
``--shard i/n`` takes every n-th cell of that order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import digits_setup, results_csv
from benchmarks.fashion_attention_rows import (
    ABLATIONS,
    CONTROLS,
    GOAL_PEERS,
    METHODS,
    PEERS,
    TOLERANCE,
    run_one,
)
from benchmarks.fashion_attention_setup import (
    BATCH,
    MODELS,
    RESULTS,
    describe,
    fashion_split,
    teacher,
)
from benchmarks.fashion_attention_tune import (
    INHERIT,
    TUNE_SEED,
    TUNE_TARGET,
    chosen_lr,
    done_tuning,
    tune_cells,
    tuning_path,
)
from benchmarks.results_csv import done_keys

BUDGET_EPOCHS = {"short": 0.5, "long": 5.0}
SEARCH_SHARE = 0.2  # of the short budget, in both budgets
SEEDS_MAIN, SEEDS_OTHER = 5, 3
FIELDS = (
    "model",
    "tokens",
    "depth",
    "heads",
    "budget",
    "target",
    "method",
    "seed",
    "macs_ratio",
    "val_top1",
    "test_top1",
    "teacher_test_top1",
    "teacher_val_top1",
    "search_steps",
    "finetune_steps",
    "macs",
    "params",
    "finetune_lr",
    "wall_s",
    "commit",
    "error",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--budgets", nargs="+", default=list(BUDGET_EPOCHS), choices=BUDGET_EPOCHS)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 5 / 3 (doc)")
    p.add_argument("--out", type=Path, default=RESULTS / "fashion_attention.csv")
    p.add_argument("--shard", default="0/1", help="i/n: every n-th cell of the grid")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="fixed fine-tune lr for every row (default: tuned on validation, see the doc)",
    )
    p.add_argument("--search-lr", type=float, default=5e-4)
    p.add_argument("--mask-lr", type=float, default=0.05, help="learned_mask's mask lr")
    p.add_argument("--sim-temperature", type=float, default=0.5)
    p.add_argument("--sim-every", type=int, default=50)
    p.add_argument("--similarity-to", choices=("all", "kept"), default="all")
    p.add_argument("--reweight-lr", type=float, default=None)
    p.add_argument("--short-steps", type=int, default=None, help="override (smoke runs)")
    p.add_argument("--long-steps", type=int, default=None, help="override (smoke runs)")
    p.add_argument("--search-steps", type=int, default=None, help="override (smoke runs)")
    p.add_argument("--dry-run", action="store_true", help="list this shard's rows to run")
    p.add_argument("--report", action="store_true", help="paired statistics, .md and .png")
    args = p.parse_args(argv)
    args.shard_index, args.shard_count = digits_setup.parse_shard(p, args.shard)
    return args


def budget_steps(args: argparse.Namespace, train_size: int) -> dict[str, int]:
    steps = {b: max(1, round(e * train_size / BATCH)) for b, e in BUDGET_EPOCHS.items()}
    steps["short"] = args.short_steps or steps["short"]
    steps["long"] = args.long_steps or steps["long"]
    return steps


def grid(args: argparse.Namespace) -> list[tuple[str, str, float, str, int]]:
    """(budget, model, target, method, seed) in run order (module doc), all shards.

    In the long budget, whose goal is at 0.3 alone, each tier runs its lowest target first.
    """
    tiers = [("method", *GOAL_PEERS), PEERS[len(GOAL_PEERS) :], (*ABLATIONS, *CONTROLS)]
    cells = []
    for budget in ("short", "long"):
        if budget not in args.budgets:
            continue
        for tier, methods in enumerate(tiers):
            n = SEEDS_MAIN if tier < 2 else SEEDS_OTHER
            seeds = args.seeds if args.seeds is not None else list(range(n))
            order = [(s, t) for s in seeds for t in args.targets]
            if budget == "long":
                order = [(s, t) for t in sorted(args.targets) for s in seeds]
            for seed, target in order:
                for model in args.models:
                    for method in methods:
                        if method in args.methods:
                            cells.append((budget, model, target, method, seed))
    return cells


def key(budget: str, model: str, target: float, method: str, seed: int) -> tuple:
    return (model, budget, round(float(target), 4), method, int(seed))


def done_rows(path: Path) -> set[tuple]:
    return done_keys(
        path, lambda r: key(r["budget"], r["model"], r["target"], r["method"], r["seed"])
    )


def append_row(path: Path, row: dict) -> None:
    """One row, appended under a file lock, flushed and fsynced (shards share the file)."""
    results_csv.append_row(path, row, FIELDS)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def wait_for_lr(tuning: Path, model: str, method: str) -> float:
    """The tuned lr of (model, method); waits while another shard still tunes it."""
    lr = chosen_lr(tuning, model, method)
    while lr is None:
        print(f"waiting for the tuning runs of {model} / {method} ({tuning.name})", flush=True)
        time.sleep(120)
        lr = chosen_lr(tuning, model, method)
    return lr


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        from benchmarks import fashion_attention_stats

        if not args.out.is_file():
            print(f"no such CSV: {args.out} (run the benchmark first)", file=sys.stderr)
            return 2
        print(fashion_attention_stats.report(args.out))
        return 0
    torch.set_num_threads(args.threads)
    cells = grid(args)[args.shard_index :: args.shard_count]
    done = done_rows(args.out)
    todo = [c for c in cells if key(*c) not in done]
    print(
        f"fashion attention benchmark: shard {args.shard}: {len(todo)} of {len(cells)} rows to "
        f"run -> {args.out}; {digits_setup.machine()}",
        flush=True,
    )
    tuning = tuning_path(args.out)
    work: list[tuple] = []
    mine: set[tuple] = set()  # this shard's tuning runs, each run just before a row needs it
    if args.finetune_lr is None:  # (fashion_attention_tune), so the goal's cells come first
        tunes = tune_cells(args.models, args.methods)[args.shard_index :: args.shard_count]
        mine = {t for t in tunes if t not in done_tuning(tuning)}
    for cell in todo:
        _, model, _, method, _ = cell
        source = INHERIT.get(method, method)
        needed = [t for t in tune_cells([model], [source]) if t[1] == source and t in mine]
        work += [("tune", *t) for t in needed]
        mine -= set(needed)
        work.append(("grid", *cell))
    work = [("tune", *t) for t in sorted(mine)] + work  # tuning no grid row of this shard uses
    if args.dry_run:
        for item in work:
            print(*item)
        return 0
    if not work:
        return 0
    data = fashion_split()
    steps = budget_steps(args, data.train_size)
    args.search_steps = args.search_steps or max(1, round(SEARCH_SHARE * steps["short"]))
    teachers: dict[str, tuple] = {}
    code = commit()
    for item in work:
        if item[0] == "tune":
            _, model, method, lr = item
            budget, target, seed, path = "short", TUNE_TARGET, TUNE_SEED, tuning
        else:
            _, budget, model, target, method, seed = item
            path = args.out
            if key(budget, model, target, method, seed) in done_rows(path):
                continue  # another process (same shard restarted) wrote it meanwhile
            lr = args.finetune_lr or wait_for_lr(tuning, model, method)
        if model not in teachers:
            net, best = teacher(model, data, log=lambda s: print(s, flush=True))
            teachers[model] = (net, best, describe(net))
            print(f"teacher {model}: {best} {teachers[model][2]}", flush=True)
        net, best, info = teachers[model]
        started = time.perf_counter()
        args.lr_now = lr
        try:
            row = run_one(method, target, seed, steps[budget], net, data, args)
        except (ValueError, RuntimeError) as err:  # a peer that cannot reach the target
            if method not in PEERS:  # (or that Torch-Pruning fails on): a row that says so
                raise
            nan = float("nan")
            row = dict.fromkeys(("macs_ratio", "val_top1", "test_top1", "macs", "params"), nan)
            row.update(method=method, target=target, seed=seed, search_steps=0, finetune_steps=0)
            row["error"] = str(err).splitlines()[0][:200]
            print(f"{model} {budget} t {target} seed {seed} {method}: {row['error']}", flush=True)
        row.update(
            model=model,
            budget=budget,
            teacher_test_top1=best["test_top1"],
            teacher_val_top1=best["val_top1"],
            finetune_lr=lr,
            wall_s=time.perf_counter() - started,
            commit=code,
            **info,
        )
        append_row(path, row)
        if "error" in row:
            continue
        inside = target - 0.04 - 1e-9 <= row["macs_ratio"] <= target + 0.01 + 1e-9
        flag = "" if inside else " OUTSIDE [t-0.04, t+0.01]"
        tight = target - TOLERANCE - 1e-9 <= row["macs_ratio"] <= target + 1e-9
        print(
            f"{item[0]} {model} {budget} t {target:.2f} seed {seed} {method:>28} lr {lr:g}: "
            f"val {row['val_top1']:6.2f} test {row['test_top1']:6.2f} at "
            f"{row['macs_ratio']:.4f} MACs{'' if tight else ' (outside [t-0.01, t])'}{flag}, "
            f"{row['search_steps']}+{row['finetune_steps']} steps, {row['wall_s']:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
