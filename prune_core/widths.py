"""What the search decided, per layer: learned widths beside the uniform widths at equal MACs.

A plan's per-layer widths are the method's own decision (idea 2 keeps them equal across heads,
the search makes them differ across layers and groups). ``width_rows`` lays them out as a table
(kept channels per head, the keep fraction, and the reference plan's widths, usually uniform L1
at the same MACs) and ``plot_widths`` draws the keep fractions side by side as a PNG.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from torch import nn

from prune_core.prunable import prunable_modules
from prune_core.surgery import Plan

FIELDS = ("layer", "group", "full", "kept", "keep_fraction", "reference_kept", "reference_fraction")


def full_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channels per head of every group at full width (read before ``prune``)."""
    return {name: m.full_widths() for name, m in prunable_modules(model).items()}


def width_rows(
    plan: Plan, full: dict[str, dict[str, int]], reference: Plan | None = None
) -> list[dict]:
    """One row per (layer, group): ``kept`` channels per head of ``plan`` and ``reference``.

    Raises:
        KeyError: the plan names a layer or group that ``full`` does not have.
    """
    ref = reference.widths() if reference is not None else {}
    rows = []
    for layer, groups in plan.widths().items():
        for group, kept in groups.items():
            d = full[layer][group]
            r = ref.get(layer, {}).get(group)
            rows.append(
                {
                    "layer": layer,
                    "group": group,
                    "full": d,
                    "kept": kept,
                    "keep_fraction": round(kept / d, 4),
                    "reference_kept": r if r is not None else "",
                    "reference_fraction": round(r / d, 4) if r is not None else "",
                }
            )
    return rows


def rows_to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_widths(
    rows: list[dict],
    path: str | Path,
    *,
    title: str = "learned widths",
    reference_label: str = "uniform L1, same MACs",
) -> Path:
    """Bar chart of keep fractions per (layer, group): the plan beside the reference."""
    import matplotlib  # imported here: a second of start-up that only the plot needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['layer']}.{r['group']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 3.6))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [r["keep_fraction"] for r in rows], width, label="this plan")
    if any(r["reference_fraction"] != "" for r in rows):
        ax.bar(
            [i + width / 2 for i in x],
            [r["reference_fraction"] or 0.0 for r in rows],
            width,
            label=reference_label,
        )
    ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("kept channels / full width")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
