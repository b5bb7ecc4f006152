"""ASHA within MAC buckets: a cheap trial is judged against cheap trials only."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from orchestrator.scheduler import MacBucketASHA


def decisions(buckets: int) -> dict[str, str]:
    """Four trials report iteration 1 in turn: two large (0.8 of the MACs), two small (0.2)."""
    scheduler = MacBucketASHA(
        buckets=buckets,
        metric="top1",
        mode="max",
        time_attr="training_iteration",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
    )
    out = {}
    for name, ratio, top1 in (
        ("big_a", 0.8, 90.0),
        ("big_b", 0.8, 95.0),
        ("small_c", 0.2, 50.0),
        ("small_d", 0.2, 40.0),
    ):
        trial = SimpleNamespace(trial_id=name)
        result = {"training_iteration": 1, "top1": top1, "macs_ratio": ratio}
        out[name] = scheduler.on_trial_result(None, trial, result)
    return out


def test_plain_asha_stops_the_cheap_trials():
    d = decisions(buckets=1)
    assert d["small_c"] == TrialScheduler.STOP and d["small_d"] == TrialScheduler.STOP


def test_bucketed_asha_ranks_within_the_mac_band():
    d = decisions(buckets=2)
    assert d["small_c"] == TrialScheduler.CONTINUE  # the best small model so far
    assert d["small_d"] == TrialScheduler.STOP  # worse than small_c, its only peer
    assert d["big_b"] == TrialScheduler.CONTINUE


def test_results_without_macs_ratio_are_left_alone():
    scheduler = MacBucketASHA(buckets=3, metric="top1", mode="max", max_t=4, grace_period=1)
    trial = SimpleNamespace(trial_id="x")
    assert (
        scheduler.on_trial_result(None, trial, {"training_iteration": 1, "top1": 1.0})
        == TrialScheduler.CONTINUE
    )
    assert scheduler.set_search_properties("top1", "max") is False
