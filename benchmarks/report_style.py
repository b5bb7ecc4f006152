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
