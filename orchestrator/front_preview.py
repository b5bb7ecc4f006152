"""The Pareto front as files MLflow's UI previews: ``pareto.csv`` and ``pareto.html``.

MLflow's artifact view shows a Parquet file as "Select a file to preview"; it shows a CSV as a
table and an HTML file in a frame. So beside ``pareto.parquet`` (the tables' source) the
sweep writes, in its folder and on the parent run:

* ``pareto.csv``: the front, cheapest first, under the runs table's names (``top1_pct``,
  ``macs_ratio``, ``latency_ms``, ``speedup_x``, ...: :mod:`~orchestrator.mlflow_names`), with
  each trial's id, its child run's id and its explored settings;
* ``pareto.html``: top-1 vs MAC ratio as inline SVG, every trial a point whose hover text
  (an SVG ``<title>``) gives its trial id, run id and numbers, the front as a step line, and
  the front's table below. Self-contained: no script, no stylesheet or font to fetch, so it
  opens offline, in MLflow's sandboxed frame and from the sweep folder alike.

Both are rewritten with the tables at every rebuild, and once more with the measured speed
when the front is timed (``speed.measure_front``); atomically (a reader sees the old file or
the new one).
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

import pyarrow as pa

from orchestrator._atomic import atomic_write
from orchestrator.mlflow_names import MLFLOW_METRICS, SPEED_METRICS

# pareto.parquet's columns as the CSV names them, in this order (the run id links to MLflow)
CSV_COLUMNS = {
    "trial_id": "trial_id",
    "run_id": "run_id",
    "top1": MLFLOW_METRICS["top1"],
    "macs_ratio": "macs_ratio",
    "macs": MLFLOW_METRICS["macs"],
    "params": MLFLOW_METRICS["params"],
    **SPEED_METRICS,
    "fraction_of_limit": "speedup_of_limit_ratio",
}
# the SVG's frame: width, height and the plot area's margins, in px
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 420, 60, 20, 30, 50
STAR = "l2.4,5.5 6,.5 -4.6,4 1.4,5.9 -5.2,-3.2 -5.2,3.2 1.4,-5.9 -4.6,-4 6,-.5 z"  # from its tip


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def csv_text(front: pa.Table) -> str:
    """The front as CSV text (module doc): named columns, then the ``param_*`` settings under
    their own names (``search/target``)."""
    names = front.column_names
    columns = [c for c in CSV_COLUMNS if c in names]
    params = sorted(c for c in names if c.startswith("param_"))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([CSV_COLUMNS[c] for c in columns] + [p.removeprefix("param_") for p in params])
    for r in sorted(front.to_pylist(), key=lambda r: r["macs"]):
        writer.writerow([_cell(r[c]) for c in columns + params])
    return out.getvalue()


def _hover(r: dict) -> str:
    """A point's hover text: what identifies it, then its numbers."""
    lines = [f"trial {r['trial_id']}", f"run {r.get('run_id') or '?'}"]
    lines.append(f"top-1 {r['top1']:.2f} %, MAC ratio {r['macs_ratio']:.3f}")
    if not r.get("fully_trained"):
        lines.append("stopped early by ASHA: top-1 from a partial fine-tune")
    if isinstance(r.get("latency_ms"), float) and math.isfinite(r["latency_ms"]):
        lines.append(f"{r['latency_ms']:.2f} ms/batch, {r['speedup']:.2f}x the teacher")
    return "\n".join(lines)


def svg(trials: pa.Table, front: pa.Table, *, teacher: dict | None = None) -> str:
    """top-1 (%) vs MAC ratio as an SVG element, hover text on every point."""
    rows = [r for r in trials.to_pylist() if r["top1"] is not None and r["macs_ratio"] is not None]
    timed = {r["trial_id"]: r for r in front.to_pylist()}
    tops = [r["top1"] for r in rows] + ([teacher["top1"]] if teacher else [])
    low = math.floor(min(tops, default=0.0) / 10) * 10
    high = min(100.0, math.ceil(max(tops, default=100.0) / 10) * 10) if tops else 100.0
    high = high if high > low else low + 10

    def x(ratio: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * min(max(ratio, 0.0), 1.05) / 1.05

    def y(top1: float) -> float:
        return H - BOTTOM - (H - TOP - BOTTOM) * (top1 - low) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
        'fill="none" stroke="#888"/>',
    ]
    for i in range(6):  # grid and ticks
        ratio, top1 = 0.2 * i, low + (high - low) * i / 5
        parts += [
            f'<line x1="{x(ratio):.1f}" y1="{TOP}" x2="{x(ratio):.1f}" y2="{H - BOTTOM}" '
            'stroke="#eee"/>',
            f'<text x="{x(ratio):.1f}" y="{H - BOTTOM + 15}" text-anchor="middle">{ratio:.1f}'
            "</text>",
            f'<line x1="{LEFT}" y1="{y(top1):.1f}" x2="{W - RIGHT}" y2="{y(top1):.1f}" '
            'stroke="#eee"/>',
            f'<text x="{LEFT - 6}" y="{y(top1) + 4:.1f}" text-anchor="end">{top1:.0f}</text>',
        ]
    parts += [
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">'
        "MACs / unpruned MACs</text>",
        f'<text x="16" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(TOP + H - BOTTOM) / 2})">top-1 (%)</text>',
    ]
    steps = sorted((r["macs_ratio"], r["top1"]) for r in timed.values())
    if steps:
        path = [f"M{x(steps[0][0]):.1f},{y(steps[0][1]):.1f}"]
        for r1, t1 in steps[1:]:
            path += [f"H{x(r1):.1f}", f"V{y(t1):.1f}"]
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="#d62728"/>')
    for r in sorted(rows, key=lambda r: r["trial_id"] in timed):  # the front drawn on top
        cx, cy = x(r["macs_ratio"]), y(r["top1"])
        hover = html.escape(_hover({**r, **timed.get(r["trial_id"], {})}))
        if r["trial_id"] in timed:
            shape = (
                f'<path d="M{cx:.1f},{cy - 6:.1f} l6,6 l-6,6 l-6,-6 z" fill="#d62728"/>'
                f'<text x="{cx + 7:.1f}" y="{cy - 6:.1f}" fill="#d62728" font-size="10">'
                f"{html.escape(str(r['trial_id']))}</text>"
            )
        elif r["fully_trained"]:
            shape = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#1f77b4"/>'
        else:
            shape = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="none" stroke="#888"/>'
        parts.append(f"<g><title>{hover}</title>{shape}</g>")
    if teacher is not None:
        cx, cy = x(1.0), y(teacher["top1"])
        star = f"M{cx:.1f},{cy - 8:.1f} " + STAR
        text = f"teacher: top-1 {teacher['top1']:.2f} %, MAC ratio 1"
        parts.append(f'<g><title>{text}</title><path d="{star}" fill="gold" stroke="black"/></g>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_text(
    trials: pa.Table, front: pa.Table, *, teacher: dict | None = None, title: str = ""
) -> str:
    """``pareto.html``: the SVG, a legend line and the front's table (module doc)."""
    table = list(csv.reader(io.StringIO(csv_text(front))))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) if table else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">',
            f"<title>{html.escape(title or 'Pareto front')}</title>",
            "<style>body{font-family:sans-serif;margin:12px}table{border-collapse:collapse;"
            "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "g:hover circle,g:hover path{stroke:#000;stroke-width:2}</style>",
            "</head><body>",
            f"<h3>{html.escape(title or 'Pareto front')}</h3>",
            "<p>Hover a point for its trial id, MLflow run id and numbers. Red diamonds: the "
            "Pareto front (fully fine-tuned, non-dominated); blue: fully fine-tuned; hollow: "
            "stopped early by ASHA; star: the teacher.</p>",
            svg(trials, front, teacher=teacher),
            f"<h4>The front ({front.num_rows} trials, cheapest first)</h4>",
            f"<table><tr>{head}</tr>{body}</table>",
            "</body></html>",
            "",
        ]
    )


def write(
    trials: pa.Table,
    front: pa.Table,
    directory: str | Path,
    *,
    teacher: dict | None = None,
    title: str = "",
) -> dict[str, Path]:
    """Write ``pareto.csv`` and ``pareto.html`` in ``directory`` atomically; their paths."""
    directory = Path(directory)
    return {
        "csv": atomic_write(directory / "pareto.csv", csv_text(front)),
        "html": atomic_write(
            directory / "pareto.html", html_text(trials, front, teacher=teacher, title=title)
        ),
    }
