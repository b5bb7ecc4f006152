"""Which explored settings moved top-1: Optuna's fANOVA importances over the finished trials.

Over all trials the MAC target explains most of top-1 (a smaller model is less accurate), which
says nothing a user can act on. So besides the importances over all trials, the trials are cut
into MAC bands (terciles of the measured MAC ratio, when each band holds ``MIN_TRIALS``) and the
importances of the *other* settings are computed inside each band, on top-1 less its linear fit
on the MAC ratio within the band (what the budget left in a band still explains would otherwise
be credited to whichever knob happens to correlate with it): at a given budget, which knob
mattered. A setting sampled only in some trials (``search/init_scale`` is not sampled
under ``init_mode: uniform``) is left out of a set where some trial lacks it, and listed as
such. The evaluator is Optuna's own (``FanovaImportanceEvaluator``, seeded); the study is
rebuilt from the trials table, so this runs on any finished sweep (``orchestrator.report``).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the driver may have no display
import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from orchestrator._atomic import atomic_write

MIN_TRIALS = 4  # fewer finished trials than this in a set: no importances for it
# At most this many finished trials, a seeded sample, feed the forests: their cost grows with
# the trials (1.9 s at 16, 73 s at 1,000 measured), the top settings they find settle far
# sooner. The cap and the sample's size are in param_importance.json.
SAMPLE_CAP = 100
TARGET = "search/target"


def _finished(rows: list[dict]) -> list[dict]:
    return [
        r
        for r in rows
        if r.get("fully_trained")
        and isinstance(r.get("top1"), int | float)
        and math.isfinite(r["top1"])
    ]


def _explored(rows: list[dict], exclude: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(parameters taking more than one value in every row, those missing from some rows)."""
    names = sorted({k.removeprefix("param_") for r in rows for k in r if k.startswith("param_")})
    present, partial = [], []
    for name in names:
        if name in exclude:
            continue
        values = [r.get(f"param_{name}") for r in rows]
        if len({v for v in values if v is not None}) < 2:
            continue  # fixed: nothing to attribute
        (partial if any(v is None for v in values) else present).append(name)
    return present, partial


def _distribution(values: list[Any]):
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return FloatDistribution(float(min(values)), float(max(values)))
    return CategoricalDistribution(sorted({str(v) for v in values}))


def importances(
    rows: list[dict], names: list[str], seed: int = 0, values: list[float] | None = None
) -> dict[str, float]:
    """fANOVA importance of each of ``names`` for top-1 (or ``values``, one per row) over
    ``rows``; they sum to 1."""
    values = [r["top1"] for r in rows] if values is None else values
    distributions = {n: _distribution([r[f"param_{n}"] for r in rows]) for n in names}
    study = optuna.create_study(direction="maximize")
    for r, value in zip(rows, values, strict=True):
        params = {
            n: (
                float(r[f"param_{n}"]) if isinstance(d, FloatDistribution) else str(r[f"param_{n}"])
            )
            for n, d in distributions.items()
        }
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )
    evaluator = FanovaImportanceEvaluator(seed=seed)
    found = get_param_importances(study, evaluator=evaluator, params=names)
    return {name: float(v) for name, v in found.items()}


def param_importance(rows: list[dict], seed: int = 0, cap: int = SAMPLE_CAP) -> dict[str, Any]:
    """Importances for top-1 over the finished trials and within MAC bands (module doc), on
    a seeded sample of ``cap`` of them when more finished.

    Args:
        rows: trials as in ``trials.parquet`` (``top1``, ``macs_ratio``, ``fully_trained``,
            ``param_<name>`` columns).
    Returns:
        ``{"metric", "trials", "sample": {"cap", "trials", "seed"}, "all": {name:
        importance}, "left_out": [...], "bands": [{"macs_ratio": [lo, hi], "trials",
        "importance", "left_out"}]}``; an empty ``all`` when fewer than ``MIN_TRIALS`` trials
        finished. ``trials`` counts every finished trial, ``sample.trials`` those used.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = _finished(rows)
    out: dict[str, Any] = {"metric": "top1", "trials": len(done), "all": {}, "bands": []}
    if len(done) > cap:
        done = random.Random(seed).sample(done, cap)
    out["sample"] = {"cap": cap, "trials": len(done), "seed": seed}
    names, out["left_out"] = _explored(done)
    if len(done) >= MIN_TRIALS and names:
        out["all"] = importances(done, names, seed)
    ordered = sorted(done, key=lambda r: r["macs_ratio"])
    if len(ordered) >= 3 * MIN_TRIALS:
        third = len(ordered) / 3
        for i in range(3):
            band = ordered[round(i * third) : round((i + 1) * third)]
            names, left_out = _explored(band, exclude=(TARGET,))
            ratio = np.array([r["macs_ratio"] for r in band], dtype=float)
            top1 = np.array([r["top1"] for r in band], dtype=float)
            slope, intercept = np.polyfit(ratio, top1, 1) if np.ptp(ratio) > 0 else (0.0, 0.0)
            residual = (top1 - (slope * ratio + intercept)).tolist()
            out["bands"].append(
                {
                    "macs_ratio": [band[0]["macs_ratio"], band[-1]["macs_ratio"]],
                    "trials": len(band),
                    "top1_per_macs_ratio": float(slope),
                    "importance": importances(band, names, seed, residual) if names else {},
                    "left_out": left_out,
                }
            )
    return out


def plot(result: dict[str, Any], png: Path) -> Path:
    """One bar chart per set (all trials, then each MAC band): importance of each setting."""
    panels = [("all trials", result["all"])] + [
        (f"MAC ratio {b['macs_ratio'][0]:.2f}–{b['macs_ratio'][1]:.2f}", b["importance"])
        for b in result["bands"]
    ]
    panels = [(t, imp) for t, imp in panels if imp]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (title, imp) in zip(axes, panels, strict=False):
        names = sorted(imp, key=imp.get)
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    if not panels:
        axes[0].text(0.5, 0.5, "too few finished trials", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(f"fANOVA importance for top-1 ({_trials(result)})", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
    return png


def _trials(result: dict[str, Any]) -> str:
    """ "36 trials", or "100 of 1000 trials" when the forests saw a sample."""
    used = result.get("sample", {}).get("trials", result["trials"])
    return f"{used} trials" if used == result["trials"] else f"{used} of {result['trials']} trials"


def write(result: dict[str, Any], directory: Path) -> dict[str, Path]:
    """``param_importance.json`` and ``param_importance.png`` in ``directory``."""
    json_path = atomic_write(
        Path(directory) / "param_importance.json", json.dumps(result, indent=1)
    )
    return {"json": json_path, "png": plot(result, Path(directory) / "param_importance.png")}


def summary(result: dict[str, Any], top: int = 3) -> list[str]:
    """Console lines: the top settings over all trials and within each MAC band."""

    def fmt(imp: dict[str, float]) -> str:
        best = sorted(imp.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{n} {v:.2f}" for n, v in best) or "(nothing explored)"

    if not result["all"]:
        return [f"param importance: {result['trials']} finished trials, need {MIN_TRIALS}"]
    lines = [f"param importance for top-1 (fANOVA, {_trials(result)}): {fmt(result['all'])}"]
    for b in result["bands"]:
        lo, hi = b["macs_ratio"]
        lines.append(
            f"  at MAC ratio {lo:.2f}-{hi:.2f} ({b['trials']} trials): {fmt(b['importance'])}"
        )
    return lines
