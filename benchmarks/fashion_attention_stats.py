"""Paired statistics of the Fashion-attention benchmark (``fashion_attention --report``).

For each model × budget × target, and each other method X (peers, ablations, controls), the
per-seed difference d_s = top-1(method, s) − top-1(X, s) over the seeds both have (the seeds
share the teacher, so a seed pairs the two runs' pruning randomness and fine-tune batches):
mean, 95 % t confidence interval, the paired t-test's two-sided p, and Holm's step-down
correction over every test in the table. The goal line tests the method against the best (by
mean) of ``l1_uniform``, ``tp_global`` and ``tp_isomorphic_taylor`` with H0: Δ ≤ margin
(one-sided paired t). Test-set accuracies are reported; validation ones are in the per-method
table. Writes ``<csv>.md`` and a ``<csv>.png`` of the differences with their intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.fashion_attention_rows import ABLATIONS, CONTROLS, GOAL_PEERS, PEERS

GOAL_MARGIN = {"short": 1.0, "long": 0.5}
GOAL_TARGETS = {"short": (0.5, 0.3), "long": (0.3,)}
MAC_BAND = (0.04, 0.01)  # every row within [t - 0.04, t + 0.01] of the MACs


def paired(d: np.ndarray, margin: float = 0.0) -> dict:
    """Mean, 95 % t CI, two-sided p of Δ = 0, one-sided p of Δ ≤ margin, for differences d."""
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {
            "n": n,
            "mean": mean,
            "lo": math.nan,
            "hi": math.nan,
            "p": math.nan,
            "p_margin": math.nan,
        }
    se = float(d.std(ddof=1)) / math.sqrt(n)
    q = float(stats.t.ppf(0.975, n - 1))
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
        p_margin = 0.0 if mean > margin else 1.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
        p_margin = float(stats.t.sf((mean - margin) / se, n - 1))
    return {
        "n": n,
        "mean": mean,
        "lo": mean - q * se,
        "hi": mean + q * se,
        "p": p,
        "p_margin": p_margin,
    }


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN)."""
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    order = sorted(idx, key=lambda i: p[i])
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out


def comparisons(df: pd.DataFrame, metric: str = "test_top1") -> pd.DataFrame:
    rows = []
    others = [m for m in (*PEERS, *ABLATIONS, *CONTROLS) if m in set(df.method)]
    for (model, budget, target), cell in df.groupby(["model", "budget", "target"], sort=False):
        ours = cell[cell.method == "method"].set_index("seed")[metric]
        for other in others:
            theirs = cell[cell.method == other].set_index("seed")[metric]
            seeds = sorted(set(ours.index) & set(theirs.index))
            if not seeds:
                continue
            d = (ours.loc[seeds] - theirs.loc[seeds]).to_numpy(dtype=float)
            kind = "peer" if other in PEERS else "ablation" if other in ABLATIONS else "control"
            rows.append(
                {
                    "model": model,
                    "budget": budget,
                    "target": target,
                    "vs": other,
                    "kind": kind,
                    "method_mean": float(ours.loc[seeds].mean()),
                    "other_mean": float(theirs.loc[seeds].mean()),
                    "wins": int((d > 0).sum()),
                    **paired(d),
                }
            )
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p"].tolist())
    return out


def goal_lines(df: pd.DataFrame, failed: pd.DataFrame) -> list[str]:
    """One line per goal cell; a goal peer that cannot reach the target is named, not beaten."""
    lines = [
        "| model | budget | target | best goal peer | method − peer (n) | 95 % CI | p (Δ = 0) | "
        "p (Δ ≤ margin) | met? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in sorted(set(df.model)):
        for budget, targets in GOAL_TARGETS.items():
            for target in targets:
                cell = df[(df.model == model) & (df.budget == budget) & (df.target == target)]
                ours = cell[cell.method == "method"].set_index("seed")["test_top1"]
                peers = {
                    p: cell[cell.method == p].set_index("seed")["test_top1"]
                    for p in GOAL_PEERS
                    if (cell.method == p).any()
                }
                if ours.empty or not peers:
                    lines.append(f"| {model} | {budget} | {target} | — | not run yet | | | | — |")
                    continue
                cant = sorted(
                    set(
                        failed[
                            (failed.model == model)
                            & (failed.budget == budget)
                            & (failed.target == target)
                        ].method
                    )
                    & set(GOAL_PEERS)
                )
                best = max(peers, key=lambda p: peers[p].mean())
                named = best + (f" ({', '.join(cant)} cannot reach t)" if cant else "")
                seeds = sorted(set(ours.index) & set(peers[best].index))
                d = (ours.loc[seeds] - peers[best].loc[seeds]).to_numpy(dtype=float)
                s = paired(d, GOAL_MARGIN[budget])
                met = (
                    s["n"] >= 5
                    and len(peers) + len(cant) == len(GOAL_PEERS)
                    and s["mean"] >= GOAL_MARGIN[budget]
                    and s["p"] < 0.05
                )
                lines.append(
                    f"| {model} | {budget} | {target} | {named} | {s['mean']:+.2f} ({s['n']}) | "
                    f"[{s['lo']:+.2f}, {s['hi']:+.2f}] | {s['p']:.3g} | {s['p_margin']:.3g} | "
                    f"{'yes' if met else 'no' if s['n'] >= 5 else 'pending'} |"
                )
    return lines


def summary_table(df: pd.DataFrame) -> list[str]:
    lines = [
        "| model | budget | target | method | n | val top-1 | test top-1 | MACs [min, max] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(("method", *PEERS, *ABLATIONS, *CONTROLS))}
    for (model, budget, target), cell in df.groupby(["model", "budget", "target"], sort=True):
        for method, rows in sorted(cell.groupby("method"), key=lambda kv: order.get(kv[0], 99)):
            val, test = rows.val_top1, rows.test_top1
            sd_val = val.std(ddof=1) if len(rows) > 1 else 0.0
            sd_test = test.std(ddof=1) if len(rows) > 1 else 0.0
            lines.append(
                f"| {model} | {budget} | {target} | {method} | {len(rows)} | "
                f"{val.mean():.2f} ± {sd_val:.2f} | {test.mean():.2f} ± {sd_test:.2f} | "
                f"[{rows.macs_ratio.min():.4f}, {rows.macs_ratio.max():.4f}] |"
            )
    return lines


def plot(comp: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if comp.empty:
        return
    cells = list(comp.groupby(["model", "budget", "target"], sort=True))
    fig, axes = plt.subplots(
        len(cells),
        1,
        figsize=(7, 1.2 + 0.32 * max(len(c) for _, c in cells) * len(cells)),
        squeeze=False,
    )
    colour = {"peer": "tab:blue", "ablation": "tab:orange", "control": "tab:green"}
    for ax, ((model, budget, target), c) in zip(axes[:, 0], cells, strict=True):
        y = np.arange(len(c))[::-1]
        for yi, (_, r) in zip(y, c.iterrows(), strict=True):
            lo = r["mean"] - r["lo"] if not math.isnan(r["lo"]) else 0
            hi = r["hi"] - r["mean"] if not math.isnan(r["hi"]) else 0
            ax.errorbar(
                r["mean"], yi, xerr=[[lo], [hi]], fmt="o", color=colour[r["kind"]], capsize=3
            )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, [f"{v} (n={n})" for v, n in zip(c.vs, c.n, strict=True)], fontsize=7)
        ax.set_title(
            f"{model}, {budget}, {target} MACs: method − X, test top-1 (pt), 95 % CI", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(csv_path: Path) -> str:
    df = pd.read_csv(csv_path)
    failed = df[df.test_top1.isna()]  # a peer that could not reach the target
    df = df[df.test_top1.notna()]
    comp = comparisons(df)
    lo, hi = MAC_BAND
    outside = df[(df.macs_ratio < df.target - lo - 1e-9) | (df.macs_ratio > df.target + hi + 1e-9)]
    md = [
        "# Fashion-MNIST where attention matters: paired differences",
        "",
        f"Rows: {len(df)} from `{csv_path.name}`; rows outside [t − 0.04, t + 0.01] of the MACs: "
        f"{len(outside)}. Generated by `python -m benchmarks.fashion_attention --report`; "
        "statistics in `benchmarks/fashion_attention_stats.py`.",
        "",
        "## Goal: method − best of l1_uniform / tp_global / tp_isomorphic_taylor (test top-1)",
        "",
        "Margin 1.0 pt (short, 0.5 and 0.3) and 0.5 pt (long, 0.3); met = ≥ 5 seeds, mean ≥",
        "margin, paired two-sided p < 0.05. `p (Δ ≤ margin)`: one-sided test of the margin itself.",
        "",
        *goal_lines(df, failed),
        "",
        "## Paired differences, method − X (test top-1, points)",
        "",
        "p: paired t-test, two-sided; p_holm: Holm over all rows of this table.",
        "",
        "| model | budget | target | X | kind | n | method | X | Δ | 95 % CI | p | p_holm | wins |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in comp.iterrows():
        md.append(
            f"| {r.model} | {r.budget} | {r.target} | {r.vs} | {r.kind} | {r.n} | "
            f"{r.method_mean:.2f} | {r.other_mean:.2f} | {r['mean']:+.2f} | "
            f"[{r.lo:+.2f}, {r.hi:+.2f}] | {r.p:.3g} | {r.p_holm:.3g} | {r.wins}/{r.n} |"
        )
    md += ["", "## Every method, mean ± std over seeds", "", *summary_table(df), ""]
    if len(failed):
        md += ["## Rows that could not reach their target (left out above)", ""]
        for _, r in failed.iterrows():
            md.append(f"- {r.model} {r.budget} {r.target} {r.method} seed {r.seed}: {r.error}")
        md.append("")
    md_path, png_path = csv_path.with_suffix(".md"), csv_path.with_suffix(".png")
    md_path.write_text("\n".join(md))
    plot(comp, png_path)
    return f"wrote {md_path} and {png_path} ({len(df)} rows, {len(comp)} paired comparisons)"
