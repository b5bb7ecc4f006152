"""The Fashion-attention report's statistics and its grid order (no data, no training)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
from helpers import ROOT
from scipy import stats

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks import fashion_attention as fa  # noqa: E402
from benchmarks.fashion_attention_stats import comparisons, holm, paired  # noqa: E402


def test_paired_matches_scipy_and_the_t_interval() -> None:
    ours = np.array([88.1, 87.9, 88.4, 88.0, 88.3])
    theirs = np.array([86.9, 87.2, 87.0, 87.5, 86.8])
    s = paired(ours - theirs, margin=1.0)
    assert math.isclose(s["p"], stats.ttest_rel(ours, theirs).pvalue, rel_tol=1e-9)
    one_sided = stats.ttest_1samp(ours - theirs, 1.0, alternative="greater").pvalue
    assert math.isclose(s["p_margin"], one_sided, rel_tol=1e-9)
    lo, hi = stats.t.interval(0.95, 4, loc=s["mean"], scale=stats.sem(ours - theirs))
    assert math.isclose(s["lo"], lo) and math.isclose(s["hi"], hi)


def test_holm_is_step_down_and_monotone() -> None:
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    # 3 tests: 0.01 x 3, then max(0.03, 0.03 x 2), then max(0.06, 0.04 x 1); NaN stays NaN
    assert [round(p, 12) for p in adjusted[:3]] == [0.03, 0.06, 0.06]
    assert math.isnan(adjusted[3])


def test_comparisons_pair_by_seed() -> None:
    rows = [
        {"model": "m", "budget": "short", "target": 0.5, "method": meth, "seed": s, "test_top1": v}
        for meth, vals in (("method", [90, 91, 92]), ("l1_uniform", [89, 89.5, 90]))
        for s, v in enumerate(vals)
    ]
    rows.append({**rows[-1], "seed": 7})  # an unpaired seed is left out
    comp = comparisons(pd.DataFrame(rows))
    (r,) = comp.itertuples()
    assert r.n == 3 and math.isclose(r.mean, 1.5) and r.wins == 3


def test_grid_puts_the_goal_cells_first_and_shards_partition_it() -> None:
    args = fa.parse_args([])
    cells = fa.grid(args)
    first = cells[: 5 * 2 * 2 * 4]  # 5 seeds x 2 targets x 2 models x 4 methods
    assert {c[0] for c in first} == {"short"}
    assert {c[3] for c in first} == {"method", "l1_uniform", "tp_global", "tp_isomorphic_taylor"}
    assert len(set(cells)) == len(cells)
    shards = [fa.grid(fa.parse_args(["--shard", f"{i}/2"]))[i::2] for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(cells)
