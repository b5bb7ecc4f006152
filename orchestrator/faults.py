"""Fault injection for chaos tests: make a trial raise, go NaN, or stall (to be SIGKILLed).

Recovery paths (retry from a checkpoint, a non-retryable NaN, a killed worker) are only worth
what their tests are, and a test can only reach inside a Ray worker through something the
worker inherits: the environment. ``ORCHESTRATOR_FAULTS=/path/faults.json`` names a JSON list
of rules; without it every hook is a no-op (one ``os.environ`` lookup).

A rule ``{"point": "epoch_end", "epoch": 1, "action": "raise"}`` fires once in the whole sweep,
in the first trial that reaches that point: it claims the rule by creating
``fired-<index>.json`` next to the rules file with ``O_EXCL`` (atomic even across processes),
and writes the trial id and the worker's pid there, so a test knows whom it hit.

Points: ``tuner`` (in the driver, as Tune pickles the Tuner into ``tuner.pkl`` while it is
built: ``tuner.BuildFault``), ``teacher`` (the teacher's task, trained and evaluated, before it
returns),
``before_finetune`` (the pruned model is built, no fine-tune epoch yet) and ``epoch_end``
(fine-tune epoch ``epoch``, 1-based, reported and checkpointed). Actions:
``raise`` (RuntimeError), ``nan`` (the caller poisons the model: its loss becomes NaN),
``stall`` (sleep ``seconds``, 120 by default: the test kills the worker meanwhile; with
``"until": "<name>"`` it ends early once that file exists next to the rules, so a test can
hold a sweep open while it checks something) and ``sigkill`` (the worker kills itself). Any
other action with ``"until"`` first waits the same way, then acts (a teacher that fails only
once the trials have started).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

ENV = "ORCHESTRATOR_FAULTS"


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` rule; retryable like any other trial error."""


def inject(point: str, epoch: int = 0, trial_id: str = "") -> str | None:
    """Fire the first unfired rule for ``point``/``epoch``; returns its action, or None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    rules = json.loads(Path(spec).read_text())
    for index, rule in enumerate(rules):
        if rule["point"] != point or rule.get("epoch", epoch) != epoch:
            continue
        marker = Path(spec).with_name(f"fired-{index}.json")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another trial (or this one before a restart) had it
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "trial_id": trial_id,
                    "pid": os.getpid(),
                    "action": rule["action"],
                    "point": point,
                    "epoch": epoch,
                    "time": time.time(),
                },
                f,
            )
        action = rule["action"]
        if action != "stall" and rule.get("until"):  # hold first, then act
            _stall(float(rule.get("seconds", 120)), rule["until"], Path(spec).parent)
        if action == "raise":
            raise InjectedFault(f"injected fault at {point} {epoch}")
        if action == "stall":
            _stall(float(rule.get("seconds", 120)), rule.get("until"), Path(spec).parent)
        elif action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        return action
    return None


def _stall(seconds: float, until: str | None, folder: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and (folder / until).exists()):
        time.sleep(0.2)
