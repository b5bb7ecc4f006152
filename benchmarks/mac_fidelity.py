"""Item 3: the analytic MAC model against torch's own count, across models and targets.

    python -m benchmarks.mac_fidelity --out benchmarks/results/mac_fidelity.csv

For each model and MAC target, two plans — ``uniform`` (``magnitude_plan`` at the keep ratio
that meets the target) and ``learned`` (``finalize`` from ``initialize(mode="magnitude")``
scores: different widths per layer, as the method produces) — are applied as masks; the MAC
model's prediction for the masked model is compared with ``FlopCounterMode`` (total / 2) on the
physically pruned model. The prediction's fixed part (patch embedding, classifier, merging) is
fitted on the *full* model only, so a wrong per-module formula or a width the surgery does not
realise shows up as an error at the pruned widths. Weights are random: MACs depend on shapes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import pandas as pd
import timm
import torch
from rich.console import Console

import prune_core as pc
from benchmarks._cli import mac_target
from benchmarks.digits_setup import machine
from prune_core.macs import flop_counter

MODELS = {  # name -> (timm name, input size, timm kwargs, needs make_prunable)
    "flatten_vit_micro": ("flatten_vit_micro", 16, {"num_classes": 10, "img_size": 16}, False),
    "flatten_swin_micro": ("flatten_swin_micro", 32, {"num_classes": 10}, False),
    "flatten_swin_tiny": ("flatten_swin_tiny", 224, {}, False),
    "deit_tiny (timm)": ("deit_tiny_patch16_224", 224, {}, True),
    "swin_tiny (timm)": ("swin_tiny_patch4_window7_224", 224, {}, True),
}


def torch_macs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int:
    with torch.no_grad(), flop_counter() as counter:
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2


def build(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    arch, img, kwargs, convert = MODELS[name]
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    if convert:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pc.make_prunable(model, verbose=False)
    return model, (3, img, img)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--targets", type=mac_target, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mac_fidelity.csv"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=160)
    console.print(f"MAC fidelity on {machine()}")
    rows = []
    for name in args.models:
        model, size = build(name)
        full_counted = torch_macs(model, size)
        full_predicted = pc.count_macs(model, size)
        rows.append(
            {
                "model": name,
                "plan": "full",
                "target": 1.0,
                "predicted": full_predicted,
                "counted": full_counted,
            }
        )
        calib = torch.randn(8, *size)
        for target in args.targets:
            for kind in ("uniform", "learned"):
                masked = copy.deepcopy(model)
                if kind == "uniform":
                    pc.apply_plan(
                        masked, pc.magnitude_plan(masked, pc.uniform_keep(masked, size, target))
                    )
                else:
                    pc.initialize(masked, calib, mode="magnitude")
                    pc.finalize(masked, size, target)
                predicted = pc.MacModel(masked, size).total()
                counted = torch_macs(pc.prune(masked), size)
                rows.append(
                    {
                        "model": name,
                        "plan": kind,
                        "target": target,
                        "predicted": predicted,
                        "counted": counted,
                    }
                )
        for r in rows:
            if r["model"] == name:
                r["full_counted"] = full_counted
                r["error_pct"] = 100.0 * (r["predicted"] - r["counted"]) / r["counted"]
                console.print(
                    f"{name:>20} {r['plan']:>8} t={r['target']:.1f}: predicted "
                    f"{r['predicted']:>13,} counted {r['counted']:>13,} "
                    f"({r['counted'] / full_counted:.3f} of full) error "
                    f"{r['error_pct']:+.4f} %"
                )
    df = pd.DataFrame(rows)
    df["ratio"] = df.counted / df.full_counted
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    md = [
        "| model | plan | target | predicted MACs | counted MACs | counted / full | error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for _, r in df.iterrows():
        md.append(
            f"| {r.model} | {r.plan} | {r.target:g} | {r.predicted:,} | {r.counted:,} | "
            f"{r.ratio:.3f} | {r.error_pct:+.4f} % |"
        )
    worst = df.error_pct.abs().max()
    md.append(f"\nMax |error| over {len(df)} (model, plan, target) cases: {worst:.4f} %.")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    console.print(f"max |error| {worst:.4f} % → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
