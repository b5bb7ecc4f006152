"""CPU per Optuna suggestion as the finished trials grow, with the sweep's own space (issue 25).

    python -m benchmarks.sampler_cost --trials 16 1000 [--asks 20]

The digits space (experiments/digits.yaml: 7 explored settings, ``init_scale`` only when
``init_mode`` is not uniform) suggested define-by-run as the sweep does, in a two-objective
study (max top-1, min MACs) holding ``n`` finished trials (drawn at random, top-1 rising with
the MAC target); then ``--asks`` suggestions by each sampler, each told at once. Prints the CPU
milliseconds per suggestion (``ask`` + every setting suggested + ``tell``).
"""

from __future__ import annotations

import argparse
import math
import random
import time
import warnings
from pathlib import Path

import optuna

from orchestrator import space
from orchestrator.config import load_config

SAMPLERS = {
    "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=0, population_size=6),
    "tpe": lambda: optuna.samplers.TPESampler(seed=0),
    "tpe multivariate+group": lambda: optuna.samplers.TPESampler(
        seed=0, multivariate=True, group=True
    ),
}


def _study(n: int, suggest) -> optuna.Study:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    rng = random.Random(0)
    for _ in range(n):
        trial = study.ask()
        suggest(trial)
        target = trial.params["search/target"]
        study.tell(trial, [100 * (1 - 0.5 * math.exp(-5 * target)) + rng.gauss(0, 1), target])
    return study


def ms_per_ask(study: optuna.Study, suggest, asks: int) -> float:
    cpu = time.process_time()
    for _ in range(asks):
        trial = study.ask()
        suggest(trial)
        study.tell(trial, [90.0, 0.5])
    return 1e3 * (time.process_time() - cpu) / asks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampler_cost")
    p.add_argument("--trials", type=int, nargs="+", default=[16, 1000])
    p.add_argument("--asks", type=int, default=20)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    exp = load_config(Path(__file__).resolve().parent.parent / "experiments" / "digits.yaml")
    suggest = space.DefineByRun(exp.tunable_sections)
    for n in args.trials:
        for name, make in SAMPLERS.items():
            study = _study(n, suggest)
            study.sampler = make()
            print(f"trials={n} sampler={name}: {ms_per_ask(study, suggest, args.asks):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
