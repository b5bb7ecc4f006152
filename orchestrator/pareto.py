"""The accuracy-vs-MACs Pareto front: non-dominated set, hypervolume, Parquet, plot, console.

Objectives: maximise top-1, minimise MACs. Only trials that finished the whole fine-tune
(``fully_trained``) may enter the front: ASHA-stopped trials report partially trained top-1,
and Optuna records them as COMPLETE, so neither Optuna's ``best_trials`` nor Tune's result grid
can be used as the front as-is.

Hypervolume is measured in (MAC ratio, top-1 / 100), both in [0, 1], against the reference
point (ratio 1, top-1 0): the unpruned cost with no accuracy, the worst a useful pruned model
can be. It is then the fraction of the unit square the front dominates, comparable across
sweeps of the same model and independent of the MAC scale.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from orchestrator import front_preview
from orchestrator._atomic import atomic_write

TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "fully_trained",
    "top1",
    "macs",
    "macs_ratio",
    "params",
    "throughput",
    "pruned_top1",
    "iterations",
    "run_id",
    "error",
)


def non_dominated(top1: Sequence[float], macs: Sequence[float]) -> list[bool]:
    """Mask of points no other point dominates (>= top-1 and <= MACs, one strictly).

    Sort by MACs ascending (top-1 descending among equal MACs) and sweep: a point survives iff
    its top-1 beats every point with fewer MACs. Exact duplicates of a front point survive
    too (neither dominates the other). O(n log n).
    """
    order = sorted(range(len(top1)), key=lambda i: (macs[i], -top1[i]))
    keep = [False] * len(top1)
    best: tuple[float, float] | None = None  # (macs, top1) of the best point so far
    for i in order:
        if best is None or top1[i] > best[1]:
            keep[i] = True
            best = (macs[i], top1[i])
        elif (macs[i], top1[i]) == best:
            keep[i] = True
    return keep


def pareto_ranks(top1: Sequence[float], macs: Sequence[float]) -> list[int]:
    """Non-dominated sorting: 0 for the front (:func:`non_dominated`), 1 for the front of
    what is left, and so on. O(n log n).

    In the order of :func:`non_dominated`, every earlier point has no more MACs, so a layer
    dominates point p iff its best (top-1, -MACs) is lexicographically above p's; layers'
    bests strictly decrease with depth, so p's layer is found by bisection.
    """
    order = sorted(range(len(top1)), key=lambda i: (macs[i], -top1[i]))
    bests: list[tuple[float, float]] = []  # per layer: (-top1, macs) of its best, increasing
    rank = [0] * len(top1)
    for i in order:
        key = (-top1[i], macs[i])
        k = bisect.bisect_left(bests, key)  # the first layer that does not dominate i
        if k == len(bests):
            bests.append(key)
        else:
            bests[k] = key
        rank[i] = k
    return rank


def hypervolume(top1: Sequence[float], macs_ratio: Sequence[float]) -> float:
    """Area dominated by the points in (ratio, top-1/100) space, reference (1, 0); in [0, 1].

    Along the front, top-1 rises with the ratio, so the union of the boxes
    [r_i, 1] x [0, t_i] is the sum of strips (r_{i+1} - r_i) * t_i, with r_n = 1.
    """
    ratio = [min(max(float(r), 0.0), 1.0) for r in macs_ratio]
    top = [min(max(float(t) / 100.0, 0.0), 1.0) for t in top1]
    front = sorted(
        {(r, t) for r, t, k in zip(ratio, top, non_dominated(top, ratio), strict=True) if k}
    )
    if not front:
        return 0.0
    edges = [r for r, _ in front[1:]] + [1.0]
    return sum((right - r) * t for (r, t), right in zip(front, edges, strict=True))


def trials_table(rows: list[dict]) -> pa.Table:
    """One row per trial with the columns of TRIAL_COLUMNS plus ``param_*`` columns."""
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    columns = list(TRIAL_COLUMNS) + params
    return pa.Table.from_pylist(
        [{c: r.get(c) for c in columns} for r in rows], schema=_schema(rows, columns)
    )


def _schema(rows: list[dict], columns: list[str]) -> pa.Schema:
    types = {
        "trial_id": pa.string(),
        "status": pa.string(),
        "run_id": pa.string(),
        "error": pa.string(),
        "fully_trained": pa.bool_(),
        "iterations": pa.int64(),
        "macs": pa.int64(),
        "params": pa.int64(),
    }
    fields = []
    for c in columns:
        if c in types:
            fields.append(pa.field(c, types[c]))
        elif any(isinstance(r.get(c), str) for r in rows):
            fields.append(pa.field(c, pa.string()))
        else:
            fields.append(pa.field(c, pa.float64()))
    return pa.schema(fields)


def front_table(trials: pa.Table) -> pa.Table:
    """The Pareto set of the fully trained trials, sorted by MACs."""
    rows = [
        r
        for r in trials.to_pylist()
        if r["fully_trained"] and r["top1"] is not None and r["macs"] is not None
    ]
    mask = non_dominated([r["top1"] for r in rows], [r["macs"] for r in rows])
    front = sorted((r for r, k in zip(rows, mask, strict=True) if k), key=lambda r: r["macs"])
    return pa.Table.from_pylist(front, schema=trials.schema)


def front_hypervolume(front: pa.Table) -> float:
    rows = front.to_pylist()
    return hypervolume([r["top1"] for r in rows], [r["macs_ratio"] for r in rows])


def plot(
    trials: pa.Table,
    front: pa.Table,
    path: str | Path,
    *,
    teacher: dict | None = None,
    title: str = "",
) -> Path:
    """top-1 vs MAC ratio: every trial, ASHA-stopped ones hollow, the front as a step line with
    its trial ids; the legend outside the axes (it hides no point)."""
    return save(figure(trials, front, teacher=teacher, title=title), path)


def figure(trials: pa.Table, front: pa.Table, *, teacher: dict | None = None, title: str = ""):
    """The Figure of :func:`plot`."""
    plt = _pyplot()
    rows = [r for r in trials.to_pylist() if r["top1"] is not None and r["macs_ratio"] is not None]
    done = [r for r in rows if r["fully_trained"]]
    partial = [r for r in rows if not r["fully_trained"]]
    fig, ax = plt.subplots(figsize=(7.6, 4.4), dpi=120)
    ax.scatter(
        [r["macs_ratio"] for r in done],
        [r["top1"] for r in done],
        s=28,
        c="tab:blue",
        label=f"fully fine-tuned ({len(done)})",
        zorder=2,
    )
    if partial:
        ax.scatter(
            [r["macs_ratio"] for r in partial],
            [r["top1"] for r in partial],
            s=28,
            facecolors="none",
            edgecolors="tab:gray",
            label=f"stopped early ({len(partial)})",
            zorder=2,
        )
    pts = sorted((r["macs_ratio"], r["top1"], str(r["trial_id"])) for r in front.to_pylist())
    if pts:
        ax.step(
            [p[0] for p in pts], [p[1] for p in pts], where="post", c="tab:red", lw=1.2, zorder=3
        )
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=60,
            c="tab:red",
            marker="D",
            label=f"Pareto front ({len(pts)})",
            zorder=4,
        )
    if teacher is not None:
        mark_teacher(ax, 1.0, teacher)
    ax.set_xlabel("MACs / unpruned MACs")
    ax.set_ylabel("top-1 (%)")
    ax.set_xlim(0, 1.05)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    finish(fig, ax, [(x, y, tid) for x, y, tid in pts])
    return fig


def mark_teacher(ax, x: float, teacher: dict) -> None:
    """The teacher as a gold star at (``x``, its top-1)."""
    ax.scatter(
        [x],
        [teacher["top1"]],
        s=160,
        c="gold",
        marker="*",
        edgecolors="black",
        label=f"teacher ({teacher['top1']:.1f} %)",
        zorder=5,
    )


def finish(fig, ax, labelled: list[tuple[float, float, str]], *, below: bool = False) -> None:
    """The legend outside the axes, on the right (inside, any corner can hide a trial: the
    cheapest front model sat under it), then each point's label (x, y, text) above and left
    of it (``below``: below and left), where a front has no other point, moved further away
    until no two labels overlap; the layout fitted around all of it."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    if labelled:  # room for the labels inside the frame, on their side
        low, high = ax.get_ylim()
        pad = 0.1 * (high - low)
        ax.set_ylim(low - pad, high) if below else ax.set_ylim(low, high + pad)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    left = ax.get_window_extent(renderer).x0
    sign, va = (-1, "top") if below else (1, "bottom")
    placed = []
    for x, y, text in labelled:
        for k in range(8):
            for dx, ha in ((-5, "right"), (5, "left")):  # right: it would cross the y axis
                label = ax.annotate(
                    text,
                    (x, y),
                    xytext=(dx, sign * (4 + 8 * k)),
                    textcoords="offset points",
                    ha=ha,
                    va=va,
                    fontsize=7,
                    color="tab:red",
                    zorder=6,
                )
                box = label.get_window_extent(renderer)
                if box.x0 >= left or ha == "left":
                    break
                label.remove()
            if k == 7 or not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        placed.append(box)
    fig.tight_layout()


def plot_hypervolume(history: list[tuple[int, float]], path: str | Path) -> Path:
    """The front's hypervolume after each finished trial (the parent run's ``hypervolume``
    metric, whose MLflow chart calls the finished trials "Step")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    steps, values = [s for s, _ in history], [v for _, v in history]
    ax.step(steps, values, where="post", c="tab:red", lw=1.2)
    ax.scatter(steps, values, s=18, c="tab:red", zorder=3)
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume")
    ax.set_title("Pareto front's hypervolume (MAC ratio × top-1 square dominated)", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def _pyplot():
    import matplotlib  # here: a second of start-up that only the plots need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader sees the old plot or the new one, never
    half of one) and close it."""
    plt = _pyplot()
    try:
        return atomic_write(path, fig.savefig)  # the temporary name keeps the suffix: format
    finally:
        plt.close(fig)


def write_tables(
    trials: pa.Table, directory: str | Path, *, teacher: dict | None = None, title: str = ""
) -> dict[str, Path]:
    """Rewrite ``trials.parquet``, ``pareto.parquet``, ``pareto.png`` and the previews MLflow's
    UI shows (``pareto.csv``, ``pareto.html``: orchestrator.front_preview) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    front = front_table(trials)
    paths = {
        "trials": directory / "trials.parquet",
        "pareto": directory / "pareto.parquet",
        "plot": directory / "pareto.png",
    }
    for key, table in (("trials", trials), ("pareto", front)):
        atomic_write(paths[key], lambda p, t=table: pq.write_table(t, p))
    plot(trials, front, paths["plot"], teacher=teacher, title=title)
    paths.update(front_preview.write(trials, front, directory, teacher=teacher, title=title))
    return paths


def print_front(
    front: pa.Table,
    *,
    teacher: dict | None = None,
    title: str = "Pareto front",
    console: Console | None = None,
) -> None:
    """The front as a rich table, cheapest first, with the teacher as the reference row.

    Speed is shown only once the front has been timed side by side (orchestrator.speed:
    ``latency_ms``, ``speedup``, ``fraction_of_limit``); never the trials' own ``throughput``
    (img/s), which each trial measured while others shared its cores (a 0.26-MAC model could
    look slower than the teacher).
    """
    timed = "speedup" in front.column_names
    speed = ("ms/batch", "speed-up", "of limit") if timed else ()
    table = Table(title=title, title_justify="left")
    columns = ("trial", "top-1 %", "MACs", "MAC ratio", "params", *speed)
    for column in (*columns, "search/target", "search/init_mode"):
        left = column in ("trial", "search/init_mode")
        table.add_column(column, justify="left" if left else "right")
    if teacher is not None:
        teacher_speed = ()
        if timed:
            teacher_speed = (_shown(teacher.get("latency_ms"), "{:.2f}"), "1.00×", "")
        table.add_row(
            "teacher",
            f"{teacher['top1']:.2f}",
            f"{int(teacher['macs']):,}",
            "1.000",
            f"{int(teacher['params']):,}",
            *teacher_speed,
            "",
            "",
            style="dim",
        )
    for r in front.to_pylist():
        target = r.get("param_search/target")
        row_speed = ()
        if timed:
            limit = r["fraction_of_limit"]
            row_speed = (
                _shown(r["latency_ms"], "{:.2f}"),
                _shown(r["speedup"], "{:.2f}×"),
                _shown(None if limit is None else 100 * limit, "{:.0f} %"),
            )
        table.add_row(
            str(r["trial_id"]),
            f"{r['top1']:.2f}",
            f"{r['macs']:,}",
            f"{r['macs_ratio']:.3f}",
            f"{r['params'] or 0:,}",
            *row_speed,
            f"{target:.3f}" if isinstance(target, float) else "",
            str(r.get("param_search/init_mode") or ""),
        )
    (console or Console(width=None if sys.stdout.isatty() else 120)).print(table)


def _shown(value: float | None, fmt: str) -> str:
    """``fmt`` of ``value``; empty for a missing or NaN one (a front model left untimed)."""
    return "" if value is None or value != value else fmt.format(value)
