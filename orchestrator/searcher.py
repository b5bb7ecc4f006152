"""OptunaSearch that tells a failed trial (``failed`` in its last result) to Optuna as FAIL.

A trial whose loss went NaN ends with a terminal report (``failed = 1``, ``top1 = NaN``) rather
than an exception, so it is not retried. Ray tells a finished trial's last values with state
COMPLETE, Optuna refuses NaN in a COMPLETE trial, and Ray only logs that refusal: the study
would keep an orphan RUNNING trial. Routing it through Ray's own error path records FAIL.
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FailureAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if result and result.get("failed"):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)
