"""How every benchmark report writes a figure and a mean ± std (one look across RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")  # files only: no display on a CI machine
import matplotlib.pyplot as plt


def pm(mean: float, std: float) -> str:
    """``"88.22 ± 0.10"``; a single seed (std NaN) shows ± 0.00."""
    return f"{mean:.2f} ± {0.0 if pd.isna(std) else std:.2f}"


def save(fig, png: Path) -> None:
    """Tight layout, 110 dpi PNG, figure closed (reports make many in one process)."""
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def method_curve(
    ax, s: pd.DataFrame, column: str, method: str, label: str, *, dashed: bool
) -> None:
    """``method``'s mean ``column`` against the MAC ratio (``s``: its rows, by ratio) with ± std
    bars (``column + "_std"``; one seed: none); the method itself thick and black."""
    style = {"lw": 2.5, "color": "black"} if method == "method" else {"lw": 1.2}
    ax.errorbar(
        s.ratio,
        s[column],
        yerr=s[column + "_std"].fillna(0),
        marker="o",
        capsize=3,
        ls="--" if dashed else "-",
        label=label,
        **style,
    )


def label_panel(ax, title: str, ylabel: str, *, bottom: bool, left: bool) -> None:
    """A top-1 vs MAC ratio panel: its title, a grid, the x label on the bottom row and the
    y label on the left column."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if bottom:
        ax.set_xlabel("MACs / MACs of the unpruned model")
    if left:
        ax.set_ylabel(ylabel)


def teacher_line(ax, top1: float) -> None:
    """The unpruned teacher's top-1 as a dotted grey line."""
    ax.axhline(top1, color="grey", ls=":", label="teacher (unpruned)")
