"""The compact console: one line per trial event, the explored settings only."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from orchestrator.live_view import LiveView


def trial(trial_id: str, target: float, last: dict | None = None) -> SimpleNamespace:
    config = {"search": {"target": target, "lr": 5e-4}, "finetune": {"lr": 1e-3}}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last or {})


def test_one_line_per_event_and_only_explored_settings() -> None:
    out = io.StringIO()
    view = LiveView(3, ["search/target", "finetune/lr"], Console(file=out, width=120))
    a, b, c = trial("a", 0.5), trial("b", 0.3), trial("c", 0.7)
    for t in (a, b, c):
        view.on_trial_start(0, [], t)
    view.on_trial_result(0, [], a, {"phase": "search", "macs_ratio": 0.49, "pruned_top1": 80.0})
    view.on_trial_result(0, [], a, {"phase": "finetune", "top1": 90.0})  # no line
    a.last_result = {"fully_trained": 1, "top1": 95.5, "macs_ratio": 0.49}
    view.on_trial_complete(0, [], a)
    b.last_result = {"fully_trained": 0, "top1": 70.0, "training_iteration": 2}
    view.on_trial_complete(0, [], b)
    c.last_result = {"failed": 1, "error": "non-finite loss: nan at step 3"}
    view.on_trial_complete(0, [], c)
    view.on_experiment_end([])
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines[0] == "a started: target 0.5, lr 0.001"  # search/lr is fixed: not shown
    assert "a searched: 0.490 of the MACs, top-1 80.00 % before fine-tune" in lines
    assert "a done: top-1 95.50 % at 0.490 of the MACs" in lines
    assert "b stopped early (ASHA) at iteration 2: top-1 70.00 %" in lines
    assert "c failed: non-finite loss: nan at step 3" in lines
    assert len(lines) == 7
    assert view.done == {"a", "b", "c"} and view.best == 95.5


def test_the_view_pickles_with_the_sweep_state_and_prints_where_the_driver_says() -> None:
    import pickle

    from orchestrator import live_view

    view = LiveView(2, ["search/target"])
    view.on_step_begin(0, [])
    view.done.add("a")
    restored = pickle.loads(pickle.dumps(view))
    view.on_experiment_end([])
    out = io.StringIO()
    live_view.use(Console(file=out, width=80))
    try:
        restored.on_trial_start(0, [], trial("b", 0.25))
    finally:
        live_view.use(None)
    assert restored.done == {"a"}
    assert "b started: target 0.25" in out.getvalue()
