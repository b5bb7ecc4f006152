"""Our sweep driver against the bare Ray Tune script a user would write, side by side.

    python -m benchmarks.driver_vs_tune --trials 16 --pairs 3 --out FILE.csv

Both run the same trials (``orchestrator.trial.run_trial``), search space, seed, resources and
stored teacher (trained once, before any timed run, by ``orchestrator.teacher.train_teacher``;
timed in neither): ``python -m orchestrator.sweep`` and ``python -m benchmarks.bare_tune``
(Tune + OptunaSearch with TPE + ``MLflowLoggerCallback``, Tune's defaults otherwise). The
config is ``experiments/digits.yaml`` with ``sampler: tpe``, ``--trials`` trials, 2 slots, no
ASHA, ``teacher.epochs 10``, ``search.steps 20`` and ``finetune.epochs 2`` (short trials: the
drivers' own costs weigh most). Runs alternate (ours, bare, ours, bare, ...), one pair after
the other, each in a fresh storage folder.

One row per run: ``driver`` (ours / bare), ``pair``, ``wall_s`` (the whole process),
``trials_sum_s`` (Σ of each trial's last ``time_total_s``, Tune's clock inside the trial),
``span_s`` (first trial's start to last trial's end), ``driver_cpu_s`` (the driver process's
own user + system CPU, all threads, no children), ``trials``, ``machine``, ``commit``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks import results_csv
from benchmarks.digits_setup import CACHE, machine
from benchmarks.sweep_efficiency import ROOT, code_commit

WORK = CACHE / "driver_vs_tune"
FIELDS = (
    "driver",
    "pair",
    "wall_s",
    "trials_sum_s",
    "span_s",
    "driver_cpu_s",
    "trials",
    "machine",
    "commit",
)


def write_config(name: str, trials: int, storage: Path) -> Path:
    config = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    config["name"] = name
    config["storage"] = {"path": str(storage)}
    config["tracking"] = {**config.get("tracking", {}), "uri": None}
    config["teacher"]["epochs"] = 10
    config["search"].update(steps=20, sim_every=10)
    config["finetune"]["epochs"] = 2
    config["sweep"].update(sampler="tpe", num_samples=trials, max_concurrent_trials=2, asha=None)
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stored_teacher(trials: int) -> Path:
    """The teacher both drivers use, trained once (``teacher.pt`` + ``teacher.json``)."""
    folder = WORK / "teacher"
    if (folder / "teacher.pt").is_file() and (folder / "teacher.json").is_file():
        return folder
    import torch

    from orchestrator.config import load_config
    from orchestrator.teacher import train_teacher

    exp = load_config(write_config("teacher", trials, WORK / "teacher-config"))
    state, metrics = train_teacher(exp)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "teacher.pt")
    (folder / "teacher.json").write_text(json.dumps(metrics, indent=1))
    return folder


def results_of(experiment_dir: Path) -> list[list[dict]]:
    """Every trial's reports (``result.json`` lines) under a Tune experiment folder."""
    trials = []
    for path in sorted(experiment_dir.glob("*/result.json")):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if lines:
            trials.append(lines)
    return trials


def trial_figures(experiment_dir: Path) -> dict:
    trials = results_of(experiment_dir)
    if not trials:
        raise SystemExit(f"no trial results under {experiment_dir}")
    starts = [t[0]["timestamp"] - t[0]["time_this_iter_s"] for t in trials]
    ends = [t[-1]["timestamp"] for t in trials]
    return {
        "trials_sum_s": sum(float(t[-1]["time_total_s"]) for t in trials),
        "span_s": max(ends) - min(starts),
        "trials": len(trials),
    }


def run_once(driver: str, pair: int, trials: int, teacher: Path) -> dict:
    name = f"{driver}{pair}"
    storage = WORK / f"run-{int(time.time())}-{name}"
    config = write_config(name, trials, storage)
    rusage = storage / "rusage.json"
    if driver == "ours":  # the driver finds the stored teacher and trains nothing
        shutil.copytree(teacher, storage / name / "teacher")
        cmd = [sys.executable, "-m", "benchmarks.driver_vs_tune", "_ours", str(config), str(rusage)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.bare_tune", str(config), "--teacher",
               str(teacher), "--rusage", str(rusage)]  # fmt: skip
    started = time.perf_counter()
    with (storage / "driver.log").open("w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{driver} exited {code}; see {storage / 'driver.log'}")
    return {
        "driver": driver,
        "pair": pair,
        "wall_s": wall,
        "driver_cpu_s": json.loads(rusage.read_text())["cpu_s"],
        **trial_figures(storage / name),
    }


def _ours(config: str, rusage: str) -> None:
    """``python -m orchestrator.sweep CONFIG`` in this process, its own CPU written at exit
    (the driver ends with ``os._exit``, as ``orchestrator.sweep``'s ``__main__`` does)."""
    from orchestrator.sweep import main

    code = main([config])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(rusage).write_text(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime}))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["_ours"]:
        _ours(sys.argv[2], sys.argv[3])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/driver_vs_tune.csv")
    args = p.parse_args(argv)
    teacher = stored_teacher(args.trials)
    where, commit = machine(), code_commit()
    for pair in range(args.pairs):
        for driver in ("ours", "bare"):
            row = {**run_once(driver, pair, args.trials, teacher), "machine": where}
            row["commit"] = commit
            results_csv.append_row(args.out, row, FIELDS)
            print(
                f"pair {pair} {driver:>4}: wall {row['wall_s']:.1f} s, trials "
                f"{row['trials_sum_s']:.1f} s, span {row['span_s']:.1f} s, driver CPU "
                f"{row['driver_cpu_s']:.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
