"""Item 4: the orchestrator's overhead on the digits sweep, and hypervolume vs sampler.

    python -m benchmarks.sweep_efficiency overhead   # experiments/digits.yaml as shipped
    python -m benchmarks.sweep_efficiency samplers --samplers nsga2 tpe random --seeds 0 1 \
        --trials 24

``overhead`` runs ``python -m orchestrator.sweep`` on a copy of the digits config (own name and
storage under ``benchmarks/.cache/sweeps``, everything else unchanged) and compares its wall
time with the work it holds: the teacher (until the driver prints its top-1) plus each trial's
own time spread over the concurrent slots: Ray's ``time_total_s`` (measured inside the trial)
less the ``teacher_wait_s`` of its first report (trials start while the teacher trains and
wait for it before doing anything else: waiting is not work).
Overhead = (wall - teacher - Σ trial time / slots) / wall: start-up (Python imports, Ray up,
until the driver announces the teacher), MLflow, scheduling, trial actor start-up and the idle
slot at the tail all count as overhead. Each run appends a row to results/sweep_overhead.csv.

``samplers`` runs the same sweep with ``--trials`` trials per (sampler, seed); the teacher of a
seed is trained once and copied into its other sweeps' directories (the driver finds a stored
teacher and does not retrain it). Hypervolume (the
orchestrator's own, in (MAC ratio, top-1) against (1, 0)) is taken over the fully trained
trials among the first 8/16/24 trials in start order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from benchmarks.digits_setup import CACHE, machine

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = CACHE / "sweeps"
RESULTS = Path(__file__).resolve().parent / "results"


def write_config(name: str, *, seed: int | None = None, sampler: str | None = None) -> Path:
    config = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    config["name"] = name
    config["storage"] = {"path": str(SWEEPS)}
    config["tracking"] = {**config.get("tracking", {}), "uri": None}
    if seed is not None:
        config["seed"] = seed
    if sampler is not None:
        config["sweep"]["sampler"] = sampler
    SWEEPS.mkdir(parents=True, exist_ok=True)
    path = SWEEPS / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def config_commit() -> str:
    """The commit that last changed experiments/digits.yaml (the config evolves)."""
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h %cs", "--", "experiments/digits.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "uncommitted"


CALLBACKS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")


def code_commit() -> str:
    """HEAD, with ``-dirty`` when files other than the benchmark results differ from it
    (the results CSV this run appends to must not mark the code it measured as dirty)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"
    )
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")


def profiled_sweep(config: str, report: str) -> int:
    """The sweep CLI in this process, timing the driver-side tracking callbacks.

    Tune calls its callbacks in the driver's event loop, so time spent there (MLflow writes,
    Pareto rebuilds) delays starting the next trial. Only the top-level callbacks are wrapped.
    """
    import functools

    from orchestrator import sweep, trial_logger

    spent = {name: [0.0, 0] for name in CALLBACKS}

    def timed(name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name][0] += time.perf_counter() - t
                spent[name][1] += 1

        return wrapper

    for name in CALLBACKS:
        logger = trial_logger.TrialLogger
        setattr(logger, name, timed(name, getattr(logger, name)))
    try:
        return sweep.main([config])
    finally:
        Path(report).write_text(
            json.dumps({k: {"seconds": v[0], "calls": v[1]} for k, v in spent.items()})
        )


def run_sweep(
    config: Path, num_samples: int | None, log: Path, callbacks: Path | None = None
) -> dict:
    """Run the sweep CLI; wall time, and when the teacher was ready (driver's own line)."""
    cmd = [sys.executable, "-m", "orchestrator.sweep", str(config)]
    if callbacks is not None:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.sweep_efficiency",
            "_profiled",
            str(config),
            str(callbacks),
        ]
    if num_samples is not None:
        cmd += ["--num-samples", str(num_samples)]
    started, epoch_start = time.perf_counter(), time.time()
    teacher_ready = startup = None
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in proc.stdout:
            out.write(line)
            if startup is None and line.startswith("teacher: "):
                startup = time.perf_counter() - started  # Python, Ray up; teacher next
            if teacher_ready is None and "teacher top-1" in line:
                teacher_ready = time.perf_counter() - started
        code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"sweep {config} exited {code}; see {log}")
    return {
        "wall_s": wall,
        "teacher_s": teacher_ready or 0.0,
        "startup_s": startup or 0.0,
        "start": epoch_start,
        "end": epoch_start + wall,
    }


def trial_starts(sweep_dir: Path) -> dict[str, float]:
    """trial_id -> when the trial's own work started: its first report's timestamp minus its
    duration, plus the time it waited for the teacher (trials start while it trains)."""
    starts = {}
    for result in sweep_dir.glob("trial_*/result.json"):
        first = result.read_text().split("\n", 1)[0]
        if first.strip():
            record = json.loads(first)
            starts[str(record["trial_id"])] = (
                record["timestamp"] - record["time_this_iter_s"] + record.get("teacher_wait_s", 0)
            )
    return starts


def trial_ends(sweep_dir: Path) -> list[float]:
    ends = []
    for result in sweep_dir.glob("trial_*/result.json"):
        lines = [x for x in result.read_text().splitlines() if x.strip()]
        if lines:
            ends.append(float(json.loads(lines[-1])["timestamp"]))
    return ends


def trial_times(sweep_dir: Path) -> list[float]:
    """Each trial's own time: the last ``time_total_s`` Ray recorded for it, less the time it
    waited for the teacher (``teacher_wait_s`` of its first report: waiting is not work)."""
    times = []
    for result in sorted(sweep_dir.glob("trial_*/result.json")):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        if lines:
            waited = float(lines[0].get("teacher_wait_s", 0.0))
            times.append(float(lines[-1]["time_total_s"]) - waited)
    if not times:
        raise SystemExit(f"no trial results under {sweep_dir}")
    return times


def overhead(args: argparse.Namespace) -> None:
    name = f"bench_overhead_{int(time.time())}"
    config = write_config(name)
    exp = yaml.safe_load(config.read_text())
    slots = min(
        exp["sweep"]["max_concurrent_trials"],
        exp["resources"]["num_cpus"] // exp["resources"]["cpus_per_trial"],
    )
    callbacks = SWEEPS / f"{name}.callbacks.json" if args.profile else None
    timing = run_sweep(config, None, SWEEPS / f"{name}.log", callbacks)
    times = trial_times(SWEEPS / name)
    work = timing["teacher_s"] - timing["startup_s"] + sum(times) / slots
    code = code_commit()
    row = {
        "sweep": f"experiments/digits.yaml @ {config_commit()}",
        "code": code,
        "reuse_actors": exp["sweep"].get("reuse_actors", True),
        "trials": len(times),
        "slots": slots,
        "wall_s": timing["wall_s"],
        "startup_s": timing["startup_s"],  # process start -> Ray up (counted as overhead)
        "teacher_s": timing["teacher_s"] - timing["startup_s"],
        "sum_trial_s": sum(times),
        "ideal_s": work,
        "overhead_pct": 100 * (timing["wall_s"] - work) / timing["wall_s"],
        # where the rest goes: teacher ready -> first trial starts, the trials' span
        # against their slot-time, last trial ends -> the driver exits
        "to_first_trial_s": min(trial_starts(SWEEPS / name).values())
        - timing["start"]
        - timing["teacher_s"],
        "trial_span_s": max(trial_ends(SWEEPS / name)) - min(trial_starts(SWEEPS / name).values()),
        "after_last_trial_s": timing["end"] - max(trial_ends(SWEEPS / name)),
        "tracking_callbacks_s": (
            sum(v["seconds"] for v in json.loads(callbacks.read_text()).values())
            if callbacks
            else float("nan")
        ),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sweep_overhead.csv"  # one row per run: the overhead varies run to run
    previous = pd.read_csv(out) if out.is_file() else None
    table = pd.DataFrame([row]) if previous is None else pd.concat([previous, pd.DataFrame([row])])
    table.to_csv(out, index=False, float_format="%.4g")
    print(json.dumps(row, indent=1))


def samplers(args: argparse.Namespace) -> None:
    rows = []
    out = RESULTS / "sweep_samplers.csv"
    for seed in args.seeds:
        teacher = None
        for sampler in args.samplers:
            name = f"bench_{sampler}_s{seed}_{args.trials}"
            sweep_dir = SWEEPS / name
            if not (sweep_dir / "trials.parquet").is_file():
                config = write_config(name, seed=seed, sampler=sampler)
                if teacher is not None:  # the driver finds it and does not retrain
                    shutil.copytree(teacher, sweep_dir / "teacher", dirs_exist_ok=True)
                run_sweep(config, args.trials, SWEEPS / f"{name}.log")
            if teacher is None:
                teacher = sweep_dir / "teacher"
            trials = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
            starts = trial_starts(sweep_dir)  # Tune's trial ids are random: order by start
            trials.sort(key=lambda r: starts.get(str(r["trial_id"]), float("inf")))
            from orchestrator.pareto import hypervolume

            for n in args.checkpoints:
                first = [r for r in trials[:n] if r["fully_trained"] and r["top1"] is not None]
                hv = hypervolume([r["top1"] for r in first], [r["macs_ratio"] for r in first])
                rows.append(
                    {
                        "config": config_commit(),
                        "sampler": sampler,
                        "seed": seed,
                        "after_trials": n,
                        "fully_trained": len(first),
                        "hypervolume": hv,
                    }
                )
                print(
                    f"{sampler:>7} seed {seed} after {n:>2} trials: hypervolume {hv:.4f} "
                    f"({len(first)} fully trained)",
                    flush=True,
                )
            pd.DataFrame(rows).to_csv(out, index=False, float_format="%.5g")
    df = pd.DataFrame(rows)
    table = df.groupby(["sampler", "after_trials"]).hypervolume.agg(["mean", "std"]).unstack()
    print(table.round(4).to_string())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="wall time vs the trials' own time, digits sweep")
    o.add_argument(
        "--profile",
        action="store_true",
        help="also time the driver-side MLflow callbacks (in-process wrapper)",
    )
    inner = sub.add_parser("_profiled", help="(internal) the sweep with timed callbacks")
    inner.add_argument("config")
    inner.add_argument("report")
    s = sub.add_parser("samplers", help="hypervolume after N trials: NSGA-II vs TPE vs random")
    s.add_argument(
        "--samplers",
        nargs="+",
        default=["nsga2", "tpe", "random"],
        choices=["nsga2", "tpe", "random"],
    )
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    s.add_argument("--trials", type=int, default=24)
    s.add_argument("--checkpoints", type=int, nargs="+", default=[8, 16, 24])
    args = p.parse_args(argv)
    if args.what == "samplers":
        if args.trials < 1 or any(not 0 < c <= args.trials for c in args.checkpoints):
            p.error("--trials must be >= 1 and every --checkpoints value in [1, --trials]")
        samplers(args)
    elif args.what == "_profiled":
        return profiled_sweep(args.config, args.report)
    else:
        overhead(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
