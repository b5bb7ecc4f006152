"""The validation-only tuning stage of the Fashion-attention benchmark, run before the grid.

Equal effort: each tuned method gets the same three fine-tune learning rates (``TUNE_LRS``),
one run each, at the short budget and target ``TUNE_TARGET``, on a tuning seed that no
reported row uses (``TUNE_SEED``); the rate with the best **validation** top-1 is then used by
every row of that (model, method), both budgets and both targets (tuning the long budget
separately would cost a long run per rate). The method's own search knobs keep their
defaults (no extra tuning for ours). Methods that are a variant of a tuned one take its rate
(``INHERIT``): the ablations and controls the method's (one thing changed at a time),
``random`` that of ``l1_uniform`` (same widths), ``tp_local`` that of ``tp_global``.
Rows: ``results/fashion_attention_tuning.csv`` (same columns as the grid).
"""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks.fashion_attention_rows import ABLATIONS, CONTROLS

TUNE_SEED = 100
TUNE_TARGET = 0.3
TUNE_LRS = (1e-3, 5e-4, 2e-3)  # the first is the default: it wins ties
TUNED = ("method", "l1_uniform", "tp_global", "tp_isomorphic_taylor", "learned_mask")
INHERIT = {
    "tp_local": "tp_global",
    "random": "l1_uniform",
    **{m: "method" for m in (*ABLATIONS, *CONTROLS)},
}


def tuning_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_tuning.csv")


def tune_cells(models: list[str], methods: list[str]) -> list[tuple[str, str, float]]:
    """(model, method, lr) runs the grid's methods need, model by model."""
    needed = {INHERIT.get(m, m) for m in methods}
    return [(mo, me, lr) for mo in models for me in TUNED if me in needed for lr in TUNE_LRS]


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def done_tuning(path: Path) -> set[tuple[str, str, float]]:
    return {(r["model"], r["method"], float(r["finetune_lr"])) for r in _rows(path)}


def chosen_lr(path: Path, model: str, method: str) -> float | None:
    """The tuned fine-tune lr of (model, method), or None while its runs are not all done.

    A run that could not reach the target (an empty top-1) loses; if all did, the default.
    """
    source = INHERIT.get(method, method)
    val = {
        float(r["finetune_lr"]): float(r["val_top1"] or "nan")
        for r in _rows(path)
        if r["model"] == model and r["method"] == source
    }
    if any(lr not in val for lr in TUNE_LRS):
        return None
    score = {lr: v if v == v else float("-inf") for lr, v in val.items()}  # NaN: failed
    return max(TUNE_LRS, key=lambda lr: (score[lr], -TUNE_LRS.index(lr)))
