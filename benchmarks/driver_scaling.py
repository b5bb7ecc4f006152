"""The sweep driver's own cost as the number of finished trials grows (issue 25).

    python -m benchmarks.driver_scaling --trials 16 1000 --outage-ops 10000 --out FILE.csv

No training and no Ray cluster: the real driver path is fed synthetic finished trials, as Tune's
event loop would feed it. For each trial count ``n``, in a fresh temporary folder with MLflow on
SQLite: a parent run, then ``n`` trials through the Tune callback (``TrialLogger``:
``on_trial_start``, one ``on_trial_result`` per epoch, ``on_trial_complete``, and
``on_step_end`` between events), as fast as the driver takes them (Tune never waits on the
logger); then the end of a sweep as ``orchestrator.sweep`` runs it (``on_experiment_end``,
``flush``, ``summary``, ``end_sweep``: the tables, the front, the hypervolume and the
parameter importances). Trials are drawn from the digits space (7 explored settings), top-1
rising with the MAC ratio plus noise; a fifth of them stop early (ASHA) and 1 in 20 fails.

Columns, one row per trial count:

- ``driver_cpu_s_per_trial``: CPU seconds of the whole process (every thread: Tune's part, the
  logger's thread, MLflow's SQLite) from the first trial's start until every submitted
  operation is applied, divided by ``n``.
- ``refresh_p95_s``: the 95th percentile of one rebuild of the tables (wall).
- ``max_queue``: the most rebuilds waiting in the logger's queue at any submission.
- ``end_s``: the wall time of the end of the sweep (above), after the trials' operations.
- ``wall_s``: the wall time of the whole row (set-up excluded).
- ``lost_ops``, ``outbox_replay_s``: with ``--outage-ops K``, after the end of the largest
  row's sweep, MLflow goes away (a dead URI) while ``K`` tracking operations are submitted
  (trials of ``--outage-epochs`` results each: start, results, complete), then comes back:
  the time ``flush`` takes to replay the outbox, and how many of the ``K`` operations are
  missing from MLflow afterwards (a run, a metric step, a finished status). Blank in the
  other rows. ``outbox_replay_cpu_s``: the replay's CPU seconds (every thread of the process:
  the writer's, MLflow's SQLite), steadier than its wall time on a shared machine.

Noisy machines: CPU seconds are steadier than wall time; run it more than once.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._fake_trial import FakeTrial

COLUMNS = (
    "trials",
    "driver_cpu_s_per_trial",
    "refresh_p95_s",
    "max_queue",
    "end_s",
    "wall_s",
    "lost_ops",
    "outbox_replay_s",
    "outbox_replay_cpu_s",
)
DEAD_URI = "http://127.0.0.1:9"  # the discard port: connection refused at once
INIT_MODES = ("uniform", "magnitude", "attn_single", "attn_leave_out")


def _config(rng: random.Random) -> dict[str, Any]:
    mode = rng.choice(INIT_MODES)
    search = {
        "target": rng.uniform(0.1, 0.7),
        "init_mode": mode,
        "sim_temperature": math.exp(rng.uniform(math.log(0.1), math.log(10.0))),
        "mac_loss_weight": math.exp(rng.uniform(math.log(2.0), math.log(20.0))),
        "lr": 0.0005,
        "logit_lr": math.exp(rng.uniform(math.log(0.02), math.log(0.2))),
    }
    if mode != "uniform":
        search["init_scale"] = rng.uniform(0.5, 2.0)
    return {
        "search": search,
        "finetune": {"lr": math.exp(rng.uniform(math.log(3e-4), math.log(3e-3)))},
    }


def _results(trial: FakeTrial, rng: random.Random, epochs: int, stop: int | None) -> list[dict]:
    """One result per iteration: iteration 1 is the pruned model, then one per epoch."""
    ratio = min(0.99, max(0.05, trial.config["search"]["target"] + rng.gauss(0, 0.01)))
    final = 100 * (1 - 0.5 * math.exp(-5 * ratio)) + rng.gauss(0, 1.0)
    iterations = epochs + 1 if stop is None else stop
    out = []
    for it in range(1, iterations + 1):
        out.append(
            {
                "top1": final - 10.0 * (epochs + 1 - it) / (epochs + 1),
                "train_loss": 1.0 / it,
                "lr": 1e-3,
                "macs": int(5_000_000 * ratio),
                "macs_ratio": ratio,
                "params": int(200_000 * ratio),
                "throughput": 1000.0 / ratio,
                "pruned_top1": final - 15.0,
                "search_final_loss": 0.5,
                "search_soft_ratio": ratio,
                "fully_trained": float(it == epochs + 1),
                "finetune_workers": 1,
                "time_total_s": 2.0 * it,
                "training_iteration": it,
                "timestamp": time.time(),
                "phase": "finetune" if it > 1 else "pruned",
            }
        )
    return out


class Counter:
    """Rebuilds requested but not yet started, for a logger that does not count them itself."""

    def __init__(self, logger) -> None:
        self.logger, self.requested, self.started, self.durations = logger, 0, 0, []
        if hasattr(logger, "pending_rebuilds"):  # it counts them itself
            return
        submit, refresh = logger.submit, logger.refresh

        def counted_submit(op: dict) -> None:
            self.requested += op.get("op") == "refresh"
            submit(op)

        def timed_refresh(*args, **kwargs):
            self.started += 1
            t0 = time.perf_counter()
            try:
                return refresh(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - t0)

        logger.submit, logger.refresh = counted_submit, timed_refresh

    def pending(self) -> int:
        if hasattr(self.logger, "pending_rebuilds"):
            return self.logger.pending_rebuilds()
        return max(0, self.requested - self.started)

    def rebuild_times(self) -> list[float]:
        if hasattr(self.logger, "rebuild_times"):
            return list(self.logger.rebuild_times())
        return self.durations


def _store(tmp: Path, name: str) -> tuple[str, str]:
    from orchestrator import tracking

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    exp_id = tracking.experiment_id(uri, name, tmp / "artifacts")
    parent = tracking.start_parent(uri, exp_id, name, {"name": name}, [])
    return uri, parent


def _logger(uri: str, parent: str, sweep_dir: Path, name: str):
    from orchestrator.config import load_config
    from orchestrator.space import leaves
    from orchestrator.trial_logger import TrialLogger

    exp = load_config(Path(__file__).resolve().parent.parent / "experiments" / "digits.yaml")
    names = list(leaves(exp.tunable_sections))
    return TrialLogger(uri, parent, str(sweep_dir), name, names, print_fronts=False)


def _feed(logger, counter: Counter, trials: list[FakeTrial], rng, epochs: int) -> int:
    """Tune's events for ``trials``, in order; the most rebuilds pending at a submission."""
    worst = 0
    for i, trial in enumerate(trials):
        logger.on_trial_start(iteration=i, trials=trials, trial=trial)
        stop = None if rng.random() >= 0.2 else rng.randint(1, epochs)
        for result in _results(trial, rng, epochs, stop):
            if rng.random() < 0.05 and result["training_iteration"] == 1:
                result = {**result, "failed": 1, "top1": float("nan"), "error": "NaN loss"}
                trial.last_result = result
                logger.on_trial_result(iteration=i, trials=trials, trial=trial, result=result)
                break
            trial.last_result = result
            logger.on_trial_result(iteration=i, trials=trials, trial=trial, result=result)
            logger.on_step_end(iteration=i, trials=trials)
        trial.status = "TERMINATED"
        logger.on_trial_complete(iteration=i, trials=trials, trial=trial)
        logger.on_step_end(iteration=i, trials=trials)
        worst = max(worst, counter.pending())
    return worst


def _set_uri(logger, uri: str) -> None:
    """Point the logger (and its writer and table, where it has them) at ``uri``."""
    logger.uri = uri
    if hasattr(logger, "writer"):
        logger.writer.uri = logger.writer.runs.uri = logger.writer.table.uri = uri


def _outage(logger, ops: int, epochs: int, rng) -> tuple[int, float, float]:
    """(operations missing from MLflow after the replay, the replay's wall and CPU seconds)."""
    from orchestrator.tracking import TRIAL_TAG, children, client

    per_trial = epochs + 2  # start, the results, complete
    trials = [
        FakeTrial(f"outage{i:05d}", _config(rng)) for i in range(max(1, round(ops / per_trial)))
    ]
    real = logger.uri
    _set_uri(logger, DEAD_URI)
    try:
        for trial in trials:
            logger.on_trial_start(iteration=0, trials=trials, trial=trial)
            for result in _results(trial, rng, epochs - 1, None):
                trial.last_result = result
                logger.on_trial_result(iteration=0, trials=trials, trial=trial, result=result)
            logger.on_trial_complete(iteration=0, trials=trials, trial=trial)
        logger.wait()
    finally:
        _set_uri(logger, real)
    t0, cpu0 = time.perf_counter(), time.process_time()
    logger.flush(force=True)
    replay, replay_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    runs = {r.data.tags.get(TRIAL_TAG): r for r in children(real, logger.parent_id)}
    c, lost = client(real), 0
    for trial in trials:
        run = runs.get(trial.trial_id)
        if run is None:
            lost += per_trial
            continue
        steps = c.get_metric_history(run.info.run_id, "training_iteration")
        lost += epochs - len({m.step for m in steps})
        lost += run.info.status != "FINISHED"
    return lost, replay, replay_cpu


def row(
    n: int, *, epochs: int, outage_ops: int, seed: int, outage_epochs: int = 30
) -> dict[str, Any]:
    rng = random.Random(seed)
    import matplotlib.pyplot  # noqa: F401  (imported once, before any rebuild is timed)

    with tempfile.TemporaryDirectory(prefix="driver-scaling-") as tmp:
        name = f"scale{n}"
        uri, parent = _store(Path(tmp), name)
        sweep_dir = Path(tmp) / name
        sweep_dir.mkdir()
        logger = _logger(uri, parent, sweep_dir, name)
        counter = Counter(logger)
        trials = [FakeTrial(f"{i:05d}", _config(rng)) for i in range(n)]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        worst = _feed(logger, counter, trials, rng, epochs)
        logger.wait()  # every trial's operations applied: the trials' share ends here
        cpu = time.process_time() - cpu0
        end0 = time.perf_counter()
        logger.on_experiment_end(trials=trials)
        logger.flush()
        logger.summary()
        logger.end_sweep("FINISHED", say=lambda line: None)
        end = time.perf_counter() - end0
        wall = time.perf_counter() - wall0
        lost, replay, replay_cpu = ("", "", "")
        if outage_ops:
            lost, replay, replay_cpu = _outage(logger, outage_ops, outage_epochs, rng)
        times = counter.rebuild_times() or [math.nan]
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
        return {
            "trials": n,
            "driver_cpu_s_per_trial": round(cpu / n, 4),
            "refresh_p95_s": round(p95, 3),
            "max_queue": worst,
            "end_s": round(end, 2),
            "wall_s": round(wall, 1),
            "lost_ops": lost,
            "outbox_replay_s": round(replay, 2) if replay != "" else "",
            "outbox_replay_cpu_s": round(replay_cpu, 2) if replay_cpu != "" else "",
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.driver_scaling")
    p.add_argument("--trials", type=int, nargs="+", default=[16, 1000])
    p.add_argument("--outage-ops", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3, help="fine-tune epochs per trial")
    p.add_argument("--outage-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import logging

    import mlflow  # noqa: F401  (its loggers exist from here on)

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    from orchestrator import driver_output

    driver_output.warn = lambda message: None  # the outage's warnings: not the benchmark's
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    largest = max(args.trials)
    for n in args.trials:
        outage = args.outage_ops if n == largest else 0
        r = row(
            n,
            epochs=args.epochs,
            outage_ops=outage,
            seed=args.seed,
            outage_epochs=args.outage_epochs,
        )
        rows.append(r)
        print(", ".join(f"{k}={r[k]}" for k in COLUMNS), flush=True)
        with args.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
