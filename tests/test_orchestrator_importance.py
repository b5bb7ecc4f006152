"""Parameter importances for top-1: over all trials and within MAC bands (no sweep needed)."""

from __future__ import annotations

import json
import random

from orchestrator import importance


def synthetic_trials(n: int = 36, seed: int = 0) -> list[dict]:
    """top-1 = 50 + 40·target + 6 if init_mode is attn_leave_out, + small noise; the
    temperature does nothing. init_scale is absent where init_mode is uniform (as sampled)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        target, tau = rng.uniform(0.1, 0.7), 10 ** rng.uniform(-1, 1)
        mode = ["uniform", "attn_leave_out"][i % 2]
        row = {
            "fully_trained": 1,
            "top1": 50 + 40 * target + 6 * (mode != "uniform") + rng.gauss(0, 0.2),
            "macs_ratio": target,
            "param_search/target": target,
            "param_search/sim_temperature": tau,
            "param_search/init_mode": mode,
            "param_search/lr": 5e-4,  # fixed: never attributed
        }
        if mode != "uniform":
            row["param_search/init_scale"] = rng.uniform(0.5, 2.0)
        rows.append(row)
    rows.append({"fully_trained": 0, "top1": 10.0, "macs_ratio": 0.3})  # stopped early: ignored
    return rows


def test_importances_find_the_knob_that_moved_top1(tmp_path) -> None:
    result = importance.param_importance(synthetic_trials())
    assert result["trials"] == 36
    overall = result["all"]
    assert set(overall) == {"search/target", "search/sim_temperature", "search/init_mode"}
    assert max(overall, key=overall.get) == "search/target"  # the budget explains most
    assert abs(sum(overall.values()) - 1) < 1e-6
    assert result["left_out"] == ["search/init_scale"]  # sampled in half of the trials only
    assert len(result["bands"]) == 3
    for band in result["bands"]:  # at one budget, the init mode is what mattered
        imp = band["importance"]
        assert "search/target" not in imp
        assert imp["search/init_mode"] > 2 * imp["search/sim_temperature"], band
    files = importance.write(result, tmp_path)
    assert json.loads(files["json"].read_text())["all"] == overall
    assert files["png"].stat().st_size > 5_000
    lines = importance.summary(result)
    assert lines[0].startswith("param importance for top-1 (fANOVA, 36 trials): search/target")
    assert len(lines) == 4


def test_too_few_trials_say_so() -> None:
    result = importance.param_importance(synthetic_trials(n=3))
    assert result["all"] == {} and result["bands"] == []
    assert importance.summary(result) == ["param importance: 3 finished trials, need 4"]
