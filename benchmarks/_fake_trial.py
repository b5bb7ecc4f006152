"""A stand-in for a Ray Tune trial: what the driver's Tune callback (``TrialLogger``) reads of
one. ``benchmarks.driver_scaling`` and the logger's tests feed the callback with it, without
Tune; a real ``ray.tune.experiment.Trial`` needs a running experiment to exist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeTrial:
    """What the logger reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    error_file: Any = None  # read by on_trial_error (trial_artifacts.error_reason)
    status: str = "RUNNING"  # on_experiment_end settles the TERMINATED ones
