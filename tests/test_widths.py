"""The learned-widths report: a table beside the uniform plan, and its PNG."""

from __future__ import annotations

import csv
import io

from helpers import tiny_vit

import prune_core as pc
from prune_core.widths import full_widths, plot_widths, rows_to_csv, width_rows


def test_width_rows_and_plot(tmp_path) -> None:
    model = tiny_vit()
    plan = pc.magnitude_plan(model, {"qk": 0.5, "v": 0.75, "mlp": 0.25})
    uniform = pc.magnitude_plan(model, 0.5)
    rows = width_rows(plan, full_widths(model), reference=uniform)
    by_key = {(r["layer"], r["group"]): r for r in rows}
    assert (
        by_key[("blocks.0.attn", "v")]["kept"] == 6
        and by_key[("blocks.0.attn", "v")]["keep_fraction"] == 0.75
    )
    assert by_key[("blocks.1.mlp", "mlp")]["kept"] == 16
    assert by_key[("blocks.1.mlp", "mlp")]["reference_kept"] == 32
    assert len(rows) == sum(len(g) for g in plan.widths().values())
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert [int(r["kept"]) for r in parsed] == [r["kept"] for r in rows]
    png = plot_widths(rows, tmp_path / "w" / "widths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
