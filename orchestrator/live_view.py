"""The sweep's compact console: a progress bar over trials and one line per trial event.

Ray Tune's own reporter prints a config box and a result box per trial (over a thousand lines
for the 16-trial demo); this callback replaces it (the driver runs Tune with ``verbose=0`` and
sends Ray's output to ``ray.log`` in the sweep folder; ``-v`` brings it back). A trial prints a
line when it starts, when its search ends (pruned top-1 and MACs), when it is stopped early
(ASHA), retried, fails or finishes; the bar shows trials done out of ``num_samples``.

The bar leaves ``sys.stdout``/``sys.stderr`` alone: rich's default, on a terminal only, routes
them through the bar while it is shown, which sent Tune's status tables and the workers' lines
back to the terminal (1,100 lines for the demo); tests/test_orchestrator_console.py runs the
driver under a pty.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_CONSOLE: Console | None = None  # the driver's terminal console (use), for every LiveView


def use(console: Console | None) -> None:
    """Print the live view on ``console`` (the driver's terminal, when Ray's output goes to a
    file). A module setting, not an attribute: Tune pickles its callbacks with the sweep's
    state, and a view restored by ``--resume`` must print where the new driver says."""
    global _CONSOLE
    _CONSOLE = console


class LiveView(Callback):
    """Tune callback: one line per trial event and a bar over the sweep's trials.

    Args:
        num_samples: trials the sweep runs (the bar's total).
        explored: the explored parameter names (``search/target``, ...): only those are shown
            when a trial starts (the fixed ones are the same for every trial).
        console: where to print; default the one set by ``use`` (else a new stdout console).
    """

    def __init__(
        self, num_samples: int, explored: list[str], console: Console | None = None
    ) -> None:
        self.num_samples = num_samples
        self.explored = set(explored)
        self.done: set[str] = set()
        self.best = -math.inf
        self.searched: set[str] = set()
        self._console = console
        self._progress: Progress | None = None

    def __getstate__(self) -> dict:  # the console and the live bar stay in this process
        return {**self.__dict__, "_console": None, "_progress": None}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = _CONSOLE or Console()
        return self._console

    @property
    def progress(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[best]}"),
                console=self.console,
                transient=True,
                # rich's default wraps sys.stdout/sys.stderr while the bar is live (only on a
                # terminal), sending Tune's status tables and the workers' lines back to it:
                # they go to ray.log (driver_output.py), and the bar must leave them there
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.task = self._progress.add_task(
                "trials", total=self.num_samples, completed=len(self.done), best=""
            )
        return self._progress

    def _line(self, trial: Any, text: str) -> None:
        self.console.print(f"[bold]{trial.trial_id}[/] {text}", highlight=False)

    def _explored_params(self, trial: Any) -> str:
        parts = []
        for section, settings in trial.config.items():
            if not isinstance(settings, dict):
                continue
            for name, value in settings.items():
                if f"{section}/{name}" in self.explored:
                    shown = f"{value:.3g}" if isinstance(value, float) else str(value)
                    parts.append(f"{name} {shown}")
        return ", ".join(parts)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self.progress.live.is_started:
            self.progress.start()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, f"started: {self._explored_params(trial)}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "[yellow]retrying from its last checkpoint[/]")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if result.get("phase") == "search" and trial.trial_id not in self.searched:
            self.searched.add(trial.trial_id)
            self._line(
                trial,
                f"searched: {result.get('macs_ratio', math.nan):.3f} of the MACs, top-1 "
                f"{result.get('pruned_top1', result.get('top1', math.nan)):.2f} % before fine-tune",
            )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("fully_trained") and math.isfinite(result.get("top1", math.nan)):
            self.best = max(self.best, result["top1"])
        self._finish(trial)
        if result.get("failed"):
            self._line(trial, f"[red]failed[/]: {result.get('error', '')}")
        elif result.get("fully_trained"):
            top1 = result.get("top1", math.nan)
            self._line(
                trial,
                f"done: top-1 [green]{top1:.2f} %[/] at {result.get('macs_ratio', math.nan):.3f} "
                "of the MACs",
            )
        else:
            self._line(
                trial,
                f"stopped early (ASHA) at iteration {result.get('training_iteration', '?')}: "
                f"top-1 {result.get('top1', math.nan):.2f} %",
            )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial)
        self._line(trial, "[red]error[/] (retries spent; its Ray log is in ray.log)")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _finish(self, trial: Any) -> None:
        if trial.trial_id not in self.done:
            self.done.add(trial.trial_id)
            best = f"best top-1 {self.best:.2f} %" if math.isfinite(self.best) else ""
            self.progress.update(self.task, completed=len(self.done), best=best)
