"""The Fashion-MNIST benchmark's table (markdown) and plot (PNG): ``python -m benchmarks.plot
fashion`` or ``python -m benchmarks.fashion --report`` (results/fashion_accuracy.csv)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from benchmarks.report_style import label_panel, method_curve, pm, save, teacher_line

FASHION_LABELS = {
    "method": "method (ours)",
    "l1_uniform": "L1 magnitude, uniform",
    "random": "random channels, uniform",
    "tp_local": "Torch-Pruning, local",
    "tp_global": "Torch-Pruning, global",
    "tp_isomorphic_taylor": "Torch-Pruning, isomorphic + Taylor",
    "no_similarity": "no similarity (τ=∞)",
    "unaligned": "no head alignment*",
    "no_reweight": "no reweight",
    "uniform_init_qk": "uniform init, qk only",
    "uniform_init_all": "uniform init, all groups",
}


def fashion_report(csv: Path, md: Path, png: Path) -> str:
    """Fashion-MNIST: mean ± std over seeds per method × target × budget, both read-outs."""
    df = pd.read_csv(csv)
    budgets = [b for b in ("short", "long") if b in set(df.budget)]
    targets = sorted(df.target.unique(), reverse=True)
    methods = [m for m in FASHION_LABELS if m in set(df.method)]
    methods += sorted(set(df.method) - set(methods))
    stats = (
        df.groupby(["method", "target", "budget"])
        .agg(
            top1=("top1", "mean"),
            top1_std=("top1", "std"),
            tw=("top1_teacher_weights", "mean"),
            tw_std=("top1_teacher_weights", "std"),
            ratio=("macs_ratio", "mean"),
            ratio_min=("macs_ratio", "min"),
            ratio_max=("macs_ratio", "max"),
            n=("seed", "nunique"),
        )
        .reset_index()
    )
    lines = []
    if "teacher_top1" in df:
        teacher = df.groupby("seed").teacher_top1.first()
        lines += [
            (
                f"Teacher (unpruned) top-1: {pm(teacher.mean(), teacher.std())} % over "
                f"{len(teacher)} seeds."
            ),
            "",
        ]
    for budget in budgets:
        part = df[df.budget == budget]
        steps = ""
        if {"search_steps", "finetune_steps"} <= set(part):
            total = (part.search_steps + part.finetune_steps).unique()
            steps = f", {'/'.join(str(int(t)) for t in sorted(total))} weight-update steps"
        for column, what in (
            ("top1", "after the budgeted fine-tune"),
            ("tw", "plan on the unchanged teacher weights, no training"),
        ):
            lines += [
                (
                    f"**Budget {budget}{steps}: top-1 (%) {what}**, mean ± std over seeds "
                    "(MAC ratio range; ! = outside [t - 0.01, t])"
                ),
                "",
                "| method | " + " | ".join(f"@ {t:g}" for t in targets) + " | seeds |",
                "|---|" + "---:|" * (len(targets) + 1),
            ]
            for m in methods:
                cells, seeds = [], []
                for t in targets:
                    r = stats[(stats.method == m) & (stats.target == t) & (stats.budget == budget)]
                    if r.empty:
                        cells.append("–")
                        continue
                    r = r.iloc[0]
                    bad = r.ratio_min < t - 0.01 - 1e-9 or r.ratio_max > t + 1e-9
                    cells.append(
                        f"{pm(r[column], r[column + '_std'])} "
                        f"({r.ratio_min:.3f}–{r.ratio_max:.3f}{'!' if bad else ''})"
                    )
                    seeds.append(int(r.n))
                label = FASHION_LABELS.get(m, m)
                lines.append(
                    f"| {label} | " + " | ".join(cells) + f" | {min(seeds) if seeds else 0} |"
                )
            lines.append("")
    lines.append("\\* masked only: not realisable as a dense multi-head model (no speed-up).")
    text = "\n".join(lines) + "\n"
    md.write_text(text)

    fig, axes = plt.subplots(
        2, len(budgets), figsize=(max(8.0, 6.5 * len(budgets)), 9), squeeze=False, sharex=True
    )
    for col, budget in enumerate(budgets):
        for row, (column, when) in enumerate(
            (("top1", "after the budgeted fine-tune"), ("tw", "plan on the teacher's weights"))
        ):
            ax = axes[row][col]
            for m in methods:
                s = stats[(stats.method == m) & (stats.budget == budget)].sort_values("ratio")
                if s.empty:
                    continue
                dashed = m.startswith(("no_", "unal", "uniform"))
                method_curve(ax, s, column, m, FASHION_LABELS.get(m, m), dashed=dashed)
            if "teacher_top1" in df:
                teacher_line(ax, df.teacher_top1.mean())
            label_panel(
                ax,
                f"budget {budget}: top-1 {when}",
                "top-1 on Fashion-MNIST t10k (%)",
                bottom=row == 1,
                left=col == 0,
            )
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "flatten_vit_micro on Fashion-MNIST at equal MACs and equal steps\n"
        "mean ± std over seeds (dashed: ablations; * masked only)",
        fontsize=11,
    )
    save(fig, png)
    return text
