"""Tables (markdown) and plots (PNG) from the benchmark CSVs.

python -m benchmarks.plot accuracy   # results/accuracy.csv -> accuracy.md, accuracy.png
python -m benchmarks.plot speedup    # results/speedup.csv  -> speedup.md, speedup.png
python -m benchmarks.plot equal_steps  # results/accuracy_equal_steps.csv -> .md
python -m benchmarks.plot samplers   # results/sweep_samplers.csv -> .md, .png
python -m benchmarks.plot fashion    # results/fashion_accuracy.csv -> .md, .png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from benchmarks.plot_fashion import fashion_report
from benchmarks.report_style import label_panel, method_curve, pm, save, teacher_line

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {
    "method": "method (ours)",
    "method_0step": "method, 0 search steps",
    "no_similarity": "(c) no similarity (τ=∞)",
    "unaligned": "(d) no head alignment*",
    "no_reweight": "(e) no reweight",
    "uniform_init": "(f) uniform init",
    "magnitude": "(a) L1 magnitude, uniform",
    "random": "(b) random channels",
    "tp": "(g) Torch-Pruning, local",
    "tp_global": "(g) Torch-Pruning, global",
}
BASELINES = ("magnitude", "random", "tp", "tp_global")
ABLATIONS = ("method_0step", "no_similarity", "unaligned", "no_reweight", "uniform_init")


def accuracy_report(csv: Path, md: Path, png: Path) -> str:
    df = pd.read_csv(csv)
    g = df.groupby(["method", "target"])
    stats = g.agg(
        top1=("top1", "mean"),
        top1_std=("top1", "std"),
        before=("top1_before_ft", "mean"),
        before_std=("top1_before_ft", "std"),
        ratio=("macs_ratio", "mean"),
        n=("seed", "nunique"),
    ).reset_index()
    targets = sorted(df["target"].unique(), reverse=True)
    methods = [m for m in LABELS if m in set(df["method"])]
    teacher = df.groupby("seed")["teacher_top1"].first()
    lines = [
        (
            f"Teacher (unpruned) top-1: {pm(teacher.mean(), teacher.std())} % over "
            f"{len(teacher)} seeds."
        ),
        "",
        ("| method | " + " | ".join(f"top-1 @ {t:g} (MACs)" for t in targets) + " | seeds |"),
        "|---|" + "---:|" * len(targets) + "---:|",
    ]
    for m in methods:
        cells = []
        for t in targets:
            r = stats[(stats.method == m) & (stats.target == t)]
            cells.append(
                "–"
                if r.empty
                else f"{pm(r.top1.iloc[0], r.top1_std.iloc[0])} ({r.ratio.iloc[0]:.3f})"
            )
        n = stats[stats.method == m].n.min()
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {n} |")
    lines += [
        "",
        "Before fine-tune (same models, top-1 right after pruning):",
        "",
        "| method | " + " | ".join(f"@ {t:g}" for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for m in methods:
        cells = []
        for t in targets:
            r = stats[(stats.method == m) & (stats.target == t)]
            cells.append("–" if r.empty else pm(r.before.iloc[0], r.before_std.iloc[0]))
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    # margin of the method over the best baseline/peer, and over the best ablation
    lines += [
        "",
        "Margin of the method (points of top-1 after fine-tune):",
        "",
        "| target | method | best baseline or peer | margin | best ablation | margin |",
        "|---:|---:|---|---:|---|---:|",
    ]
    for t in targets:
        at = stats[stats.target == t].set_index("method")
        if "method" not in at.index:
            continue
        cells = [f"{t:g}", f"{at.top1['method']:.2f}"]
        for group in (BASELINES, ABLATIONS):
            others = at[at.index.isin(group)]
            if others.empty:
                cells += ["–", "–"]
                continue
            best = others.top1.idxmax()
            cells += [
                f"{LABELS[best]} {others.top1[best]:.2f}",
                f"{at.top1['method'] - others.top1[best]:+.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    md.write_text(text)

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    panels = (
        (0, "top1", "after the fine-tune"),
        (1, "before", "right after pruning (no fine-tune)"),
    )
    for row, column, when in panels:
        for col, (group, name) in enumerate(
            ((BASELINES, "baselines and peer"), (ABLATIONS, "ablations"))
        ):
            ax = axes[row][col]
            for m in ["method", *[m for m in methods if m in group]]:
                s = stats[stats.method == m].sort_values("ratio")
                method_curve(ax, s, column, m, LABELS[m], dashed=m == "unaligned")
            teacher_line(ax, teacher.mean())
            ax.legend(fontsize=7, loc="lower right")
            label_panel(
                ax,
                f"{name}: top-1 {when}",
                "top-1 on digits test split (%)",
                bottom=row == 1,
                left=col == 0,
            )
    fig.suptitle(
        "flatten_vit_micro on digits, mean ± std over seeds "
        "(* masked only, not realisable as a dense model)",
        fontsize=11,
    )
    save(fig, png)
    return text


def equal_steps_report(csv: Path, md: Path, png: Path | None = None) -> str:
    """Baselines with as many gradient steps as the method (fine-tune + search) vs the method."""
    main = pd.read_csv(RESULTS / "accuracy.csv")
    extra = pd.read_csv(csv)
    targets = sorted(extra.target.unique(), reverse=True)

    def cell(df: pd.DataFrame, method: str, target: float) -> str:
        r = df[(df.method == method) & (df.target == target)].top1
        return "–" if r.empty else f"{pm(r.mean(), r.std())} (n={len(r)})"

    epochs = int(extra.finetune_epochs.iloc[0])
    base = int(main.finetune_epochs.iloc[0])
    steps = int(main[main.method == "method"].search_steps.iloc[0])
    lines = [
        "| method | fine-tune | " + " | ".join(f"top-1 @ {t:g}" for t in targets) + " |",
        "|---|---|" + "---:|" * len(targets),
        f"| method (ours) | {steps} search steps + {base} epochs | "
        + " | ".join(cell(main, "method", t) for t in targets)
        + " |",
    ]
    for m in sorted(extra.method.unique()):
        lines.append(
            f"| {LABELS[m]} | {base} epochs | "
            + " | ".join(cell(main, m, t) for t in targets)
            + " |"
        )
        lines.append(
            f"| {LABELS[m]} | {epochs} epochs (≈ the method's steps) | "
            + " | ".join(cell(extra, m, t) for t in targets)
            + " |"
        )
    text = "\n".join(lines) + "\n"
    md.write_text(text)
    return text


def speedup_report(csv: Path, md: Path, png: Path) -> str:
    df = pd.read_csv(csv)
    lines = []
    for (model, batch), part in df.groupby(["model", "batch"], sort=False):
        lines += [
            f"**{model}, batch {batch}**",
            "",
            (
                "| plan | target | MAC ratio | latency (ms) | speed-up | limit 1/ratio | "
                "% of limit |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in part.iterrows():
            lines.append(
                f"| {r.plan} | {r.target:g} | {r.macs_ratio:.3f} | "
                f"{r.latency_ms:.3f} | {r.speedup:.2f}× | {1 / r.macs_ratio:.2f}× | "
                f"{100 * r.fraction_of_limit:.0f} % |"
            )
        lines.append("")
    text = "\n".join(lines)
    md.write_text(text)
    groups = list(df.groupby(["model", "batch"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for ax, ((model, batch), part) in zip(axes[0], groups, strict=True):
        pruned = part[part.plan != "full"]
        xs = sorted(set(pruned.macs_ratio) | {1.0})
        ax.plot(xs, [1 / x for x in xs], "k:", label="limit 1/ratio")
        for plan, s in pruned.groupby("plan"):
            s = s.sort_values("macs_ratio")
            ax.plot(s.macs_ratio, s.speedup, marker="o", label=plan)
        ax.set_title(f"{model}\nbatch {batch}", fontsize=9)
        ax.set_xlabel("MAC ratio")
        ax.set_ylabel("measured speed-up")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, png)
    return text


def samplers_report(csv: Path, md: Path, png: Path) -> str:
    """Hypervolume after N trials, mean ± std over seeds, one line per sampler."""
    df = pd.read_csv(csv)
    stats = df.groupby(["sampler", "after_trials"]).hypervolume.agg(["mean", "std", "count"])
    trained = df.groupby(["sampler", "after_trials"]).fully_trained.mean()
    checkpoints = sorted(df.after_trials.unique())
    lines = [
        "| sampler | " + " | ".join(f"HV after {n} trials" for n in checkpoints) + " | seeds |",
        "|---|" + "---:|" * (len(checkpoints) + 1),
    ]
    for sampler in sorted(df.sampler.unique()):
        cells = []
        for n in checkpoints:
            mean, std = stats.loc[(sampler, n), "mean"], stats.loc[(sampler, n), "std"]
            cells.append(
                f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f} "
                f"({trained.loc[(sampler, n)]:.1f} fully trained)"
            )
        seeds = int(stats.loc[(sampler, checkpoints[-1]), "count"])
        lines.append(f"| {sampler} | " + " | ".join(cells) + f" | {seeds} |")
    text = "\n".join(lines) + "\n"
    md.write_text(text)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for sampler in sorted(df.sampler.unique()):
        s = stats.loc[sampler]
        ax.errorbar(
            s.index, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=sampler
        )
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (MAC ratio, top-1) vs (1, 0)")
    ax.set_title("digits sweep: front quality by sampler", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, png)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("accuracy", "speedup", "equal_steps", "samplers", "fashion"))
    p.add_argument("--csv", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--png", type=Path)
    args = p.parse_args(argv)
    default = {
        "equal_steps": "accuracy_equal_steps",
        "samplers": "sweep_samplers",
        "fashion": "fashion_accuracy",
    }.get(args.what, args.what)
    csv = args.csv or RESULTS / f"{default}.csv"
    if not csv.is_file():
        p.error(f"no such CSV: {csv} (run the benchmark that writes it first)")
    md = args.md or csv.with_suffix(".md")
    png = args.png or csv.with_suffix(".png")
    report = {
        "accuracy": accuracy_report,
        "speedup": speedup_report,
        "equal_steps": equal_steps_report,
        "samplers": samplers_report,
        "fashion": fashion_report,
    }[args.what]
    print(report(csv, md, png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
