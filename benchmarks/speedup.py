"""Item 2: measured CPU speed-up of pruned models against their MAC ratio.

    python -m benchmarks.speedup --out benchmarks/results/speedup.csv

The physical limit of a pruned model is speed-up = 1 / MAC ratio; the table reports the
fraction of it reached. Latency is the median of ``torch.utils.benchmark`` blocked runs after
warm-up, measured in interleaved rounds (full and pruned models alternate, so load from other
processes on a shared machine hits them alike) and the median over rounds is kept.

Models:
- ``flatten_vit_micro@16`` — the digits models of item 1 (seed-0 plans saved by
  ``benchmarks.accuracy`` in ``results/plans``): the method, magnitude, Torch-Pruning;
- ``flatten_vit_small@32`` — the same architecture at a compute-bound size (embed 192, depth 6,
  6 heads, MLP ×4, 32×32 input, 256 tokens), shape-only (random weights: latency depends only
  on shapes): ``uniform`` (magnitude_plan) and ``learned`` widths (finalize from magnitude
  scores, per-layer widths as the method produces), also with ``round_to=8``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import timm
import torch
from rich.console import Console
from torch import nn
from torch.utils import benchmark

import prune_core as pc
from benchmarks._cli import mac_target
from benchmarks.accuracy import PLANS
from benchmarks.digits_setup import machine

SMALL = {
    "img_size": 32,
    "patch_size": 2,
    "embed_dim": 192,
    "depth": 6,
    "num_heads": 6,
    "mlp_ratio": 4.0,
    "num_classes": 10,
}
DIGITS_PLANS = ("method", "magnitude", "tp", "tp_global")


def latency(model: nn.Module, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def variants(targets: list[float], which: list[str]) -> list[dict]:
    """(model name, plan name, target, model) for every full and pruned model."""
    out = []
    if "micro" in which:
        size = (3, 16, 16)
        full = timm.create_model("flatten_vit_micro", num_classes=10, img_size=16).eval()
        out.append(
            {
                "model": "flatten_vit_micro@16",
                "plan": "full",
                "target": 1.0,
                "net": full,
                "size": size,
            }
        )
        for target in targets:
            for name in DIGITS_PLANS:
                path = PLANS / f"{name}_t{target:g}_s0.json"
                if not path.is_file():
                    raise SystemExit(
                        f"{path} is missing: run python -m benchmarks.accuracy (seed 0) first"
                    )
                net = pc.apply_plan(copy.deepcopy(full), pc.Plan.load(path))
                out.append(
                    {
                        "model": "flatten_vit_micro@16",
                        "plan": name,
                        "target": target,
                        "net": pc.prune(net),
                        "size": size,
                    }
                )
    if "small" in which:
        size = (3, 32, 32)
        torch.manual_seed(0)
        full = timm.create_model("flatten_vit_micro", **SMALL).eval()
        out.append(
            {
                "model": "flatten_vit_small@32",
                "plan": "full",
                "target": 1.0,
                "net": full,
                "size": size,
            }
        )
        calib = torch.randn(16, *size)
        for target in targets:
            uniform = copy.deepcopy(full)
            pc.apply_plan(
                uniform, pc.magnitude_plan(uniform, pc.uniform_keep(uniform, size, target))
            )
            out.append(
                {
                    "model": "flatten_vit_small@32",
                    "plan": "uniform",
                    "target": target,
                    "net": pc.prune(uniform),
                    "size": size,
                }
            )
            for round_to in (1, 8):
                learned = copy.deepcopy(full)
                pc.initialize(learned, calib, mode="magnitude")
                pc.finalize(learned, size, target, round_to=round_to)
                out.append(
                    {
                        "model": "flatten_vit_small@32",
                        "plan": "learned" + (f" round_to={round_to}" if round_to > 1 else ""),
                        "target": target,
                        "net": pc.prune(learned),
                        "size": size,
                    }
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=mac_target, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--models", nargs="+", default=["micro", "small"], choices=["micro", "small"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speedup.csv"))
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.threads < 1 or args.rounds < 1 or args.min_run_time <= 0:
        p.error("--batches, --threads, --rounds must be >= 1 and --min-run-time > 0")
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    console.print(
        f"speed-up on {machine()}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    models = variants(args.targets, args.models)
    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            inputs = {m["size"]: torch.randn(batch, *m["size"]) for m in models}
            for m in models:  # warm-up
                for _ in range(3):
                    m["net"](inputs[m["size"]])
            times: dict[int, list[float]] = {i: [] for i in range(len(models))}
            for _ in range(args.rounds):
                for i, m in enumerate(models):
                    times[i].append(
                        latency(m["net"], inputs[m["size"]], args.threads, args.min_run_time)
                    )
            full_latency = {}
            for i, m in enumerate(models):
                median = statistics.median(times[i])
                if m["plan"] == "full":
                    full_latency[m["model"]] = median
                macs = pc.count_macs(m["net"], m["size"])
                rows.append(
                    {
                        "model": m["model"],
                        "batch": batch,
                        "plan": m["plan"],
                        "target": m["target"],
                        "macs": macs,
                        "latency_ms": 1e3 * median,
                        "spread_pct": 100 * (max(times[i]) - min(times[i])) / median,
                    }
                )
            for r in rows:
                if r["batch"] == batch:
                    full = next(
                        x
                        for x in rows
                        if x["batch"] == batch and x["model"] == r["model"] and x["plan"] == "full"
                    )
                    r["macs_ratio"] = r["macs"] / full["macs"]
                    r["speedup"] = full_latency[r["model"]] * 1e3 / r["latency_ms"]
                    r["fraction_of_limit"] = r["speedup"] * r["macs_ratio"]
                    console.print(
                        f"{r['model']:>22} b{batch:<3} {r['plan']:>18} "
                        f"t={r['target']:.1f} ratio {r['macs_ratio']:.3f} "
                        f"{r['latency_ms']:8.3f} ms speed-up {r['speedup']:.2f}× "
                        f"({100 * r['fraction_of_limit']:.0f} % of limit)"
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.6g")
    console.print(f"→ {args.out}; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
