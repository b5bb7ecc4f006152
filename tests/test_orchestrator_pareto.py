"""Pareto front and hypervolume against brute force; tables and plot on disk."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest
from helpers import brute_force, hidden_by_legend

from orchestrator import pareto


def _tied_points(seed: int) -> tuple[list[float], list[float]]:
    """1 to 40 random (top-1, MACs) points on a coarse grid, which forces ties in either
    objective and exact duplicates."""
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    top1 = [float(rng.randint(0, 10)) for _ in range(n)]
    macs = [float(rng.randint(0, 10)) for _ in range(n)]
    return top1, macs


@pytest.mark.parametrize("seed", range(30))
def test_non_dominated_equals_brute_force_with_ties(seed):
    top1, macs = _tied_points(seed)
    assert pareto.non_dominated(top1, macs) == brute_force(top1, macs)


@pytest.mark.parametrize("seed", range(30))
def test_pareto_ranks_equal_peeling_fronts_off_one_by_one(seed):
    top1, macs = _tied_points(seed)
    n = len(top1)
    expected, left, depth = [None] * n, list(range(n)), 0
    while left:  # the definition: the front of what is left, again and again
        mask = brute_force([top1[i] for i in left], [macs[i] for i in left])
        for i, on in zip(left, mask, strict=True):
            if on:
                expected[i] = depth
        left, depth = [i for i, on in zip(left, mask, strict=True) if not on], depth + 1
    assert pareto.pareto_ranks(top1, macs) == expected


def test_pareto_ranks_of_a_small_case():
    # (top-1, MACs): a front of two, one point behind each, one behind that one
    top1 = [90.0, 80.0, 85.0, 70.0, 60.0]
    macs = [10.0, 5.0, 12.0, 6.0, 13.0]
    assert pareto.pareto_ranks(top1, macs) == [0, 0, 1, 1, 2]


def grid_hypervolume(top1: list[float], ratio: list[float], steps: int = 400) -> float:
    """Midpoint rule on the unit square: the dominated fraction, independent of the sweep."""
    inside = 0
    for a in range(steps):
        x = (a + 0.5) / steps
        for b in range(steps):
            y = (b + 0.5) / steps
            inside += any(r <= x and t / 100 >= y for t, r in zip(top1, ratio, strict=True))
    return inside / steps**2


def test_hypervolume_exact_values_and_grid():
    assert pareto.hypervolume([50.0], [0.5]) == pytest.approx(0.25)
    assert pareto.hypervolume([50.0, 80.0], [0.5, 0.8]) == pytest.approx(0.5 * 0.3 + 0.8 * 0.2)
    assert pareto.hypervolume([50.0, 40.0], [0.5, 0.6]) == pytest.approx(0.25)  # dominated adds 0
    assert pareto.hypervolume([], []) == 0.0
    rng = random.Random(0)
    top1 = [rng.uniform(20, 100) for _ in range(12)]
    ratio = [rng.uniform(0.05, 1.0) for _ in range(12)]
    assert pareto.hypervolume(top1, ratio) == pytest.approx(grid_hypervolume(top1, ratio), abs=5e-3)


def rows(n: int = 10, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ratio = rng.uniform(0.2, 0.9)
        out.append(
            {
                "trial_id": f"t{i:02d}",
                "status": "TERMINATED",
                "fully_trained": i % 3 != 0,
                "top1": rng.uniform(50, 95),
                "macs": int(ratio * 1e6),
                "macs_ratio": ratio,
                "params": 1000 + i,
                "throughput": 100.0,
                "pruned_top1": 10.0,
                "iterations": 5,
                "run_id": f"r{i}",
                "param_search/init_mode": "uniform",
                "param_search/target": ratio,
            }
        )
    return out


def test_front_only_fully_trained_and_matches_brute_force(tmp_path):
    data = rows(30)
    # an ASHA-stopped trial that would dominate everything must not enter the front
    data.append(
        {
            **data[0],
            "trial_id": "stopped",
            "fully_trained": False,
            "top1": 99.9,
            "macs": 1,
            "macs_ratio": 1e-6,
        }
    )
    table = pareto.trials_table(data)
    paths = pareto.write_tables(
        table, tmp_path, teacher={"top1": 97.0, "macs": 10**6, "params": 2000, "throughput": 50.0}
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "trials.parquet",
        "pareto.parquet",
        "pareto.png",
        "pareto.csv",  # the previews MLflow's UI shows (test_orchestrator_front_preview.py)
        "pareto.html",
    }
    assert paths["plot"].stat().st_size > 10_000  # a real PNG, not an empty figure
    trials = pq.read_table(paths["trials"]).to_pylist()
    done = [r for r in trials if r["fully_trained"]]
    keep = brute_force([r["top1"] for r in done], [r["macs"] for r in done])
    expected = sorted(r["trial_id"] for r, k in zip(done, keep, strict=True) if k)
    front = pq.read_table(paths["pareto"]).to_pylist()
    assert sorted(r["trial_id"] for r in front) == expected
    assert "stopped" not in expected and len(expected) >= 2
    assert [r["macs"] for r in front] == sorted(r["macs"] for r in front)


def test_the_plot_labels_the_front_by_trial_and_its_legend_hides_no_point(tmp_path):
    data = rows(30)
    table = pareto.trials_table(data)
    front = pareto.front_table(table)
    teacher = {"top1": 97.0, "macs": 10**6, "params": 2000}
    fig = pareto.figure(table, front, teacher=teacher, title="t")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(front.column("trial_id").to_pylist())
    assert hidden_by_legend(fig) == []
    boxes = [t.get_window_extent() for t in ax.texts]  # labels moved apart
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    path = pareto.plot_hypervolume([(1, 0.5), (2, 0.6), (4, 0.65)], tmp_path / "hv.png")
    assert path.stat().st_size > 10_000


def test_the_hypervolume_axis_counts_finished_trials(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(pareto, "save", lambda fig, path: figures.append(fig) or path)
    pareto.plot_hypervolume([(1, 0.5), (2, 0.6), (4, 0.65)], tmp_path / "hv.png")
    assert figures[0].axes[0].get_xlabel() == "finished trials"
