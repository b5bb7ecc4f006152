"""The whole method on a laptop: ``python -m prune_core.demo --target 0.5``.

Trains ``flatten_vit_micro`` on scikit-learn's digits (fixed split), then initialises the
indicator from attention differences, searches against the MAC target, prunes to a dense model,
fine-tunes with distillation from the unpruned teacher and prints a before/after table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from prune_core.calibration import INIT_MODES
from prune_core.digits import digits_datasets
from prune_core.pruning_search import SearchConfig, search_plan
from prune_core.surgery import prune
from prune_core.training import TrainConfig, evaluate, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--target",
        type=float,
        nargs="+",
        default=[0.5],
        help="MAC ratio(s) to reach, in (0, 1]; several share one teacher",
    )
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--teacher-epochs", type=int, default=60)
    p.add_argument("--search-steps", type=int, default=600)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--init-mode", default="attn_leave_out", choices=INIT_MODES)
    p.add_argument("--sim-temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    bad = [t for t in args.target if not 0.0 < t <= 1.0]
    if bad:
        console.print(f"--target must be in (0, 1], got {bad[0]}", style="red")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ds, test_ds = digits_datasets(args.img_size, seed=args.seed)
    train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, drop_last=True)
    test_loader = DataLoader(test_ds, batch_size=256)
    input_size = (3, args.img_size, args.img_size)

    started = time.perf_counter()
    teacher = timm.create_model("flatten_vit_micro", num_classes=10, img_size=args.img_size)
    train(teacher, train_loader, TrainConfig(epochs=args.teacher_epochs, lr=2e-3, seed=args.seed))
    before = evaluate(teacher, test_loader, input_size)

    calib = next(iter(DataLoader(train_ds, batch_size=128, shuffle=False)))[0]
    results = {}
    for target in args.target:
        student = copy.deepcopy(teacher)
        config = SearchConfig(
            target=target,
            steps=args.search_steps,
            init_mode=args.init_mode,
            sim_temperature=args.sim_temperature,
            seed=args.seed,
        )
        search_plan(student, train_loader, input_size, config, calib=calib, teacher=teacher)
        prune(student)
        train(
            student,
            train_loader,
            TrainConfig(epochs=args.finetune_epochs, lr=1e-3, seed=args.seed),
            teacher=teacher,
        )
        results[target] = evaluate(student, test_loader, input_size)

    table = Table(title="flatten_vit_micro on digits: teacher vs pruned at each MAC target")
    table.add_column("")
    table.add_column("teacher", justify="right")
    for target in results:
        table.add_column(f"pruned @ {target}", justify="right")
    rows = [
        ("top-1 (%)", lambda r: f"{r['top1']:.2f}"),
        ("MACs", lambda r: f"{r['macs']:,}"),
        ("MAC ratio", lambda r: f"{r['macs'] / before['macs']:.3f}"),
        ("params", lambda r: f"{r['params']:,}"),
        ("images/s (batch 64)", lambda r: f"{r['throughput']:,.0f}"),
    ]
    for label, cell in rows:
        table.add_row(label, cell(before), *(cell(r) for r in results.values()))
    console.print(table)
    console.print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
