"""What a user would write instead of ``orchestrator.sweep``: Ray Tune + OptunaSearch (TPE) +
Ray's own ``MLflowLoggerCallback``, around the same trial function, with Tune's defaults
everywhere else (its JSON/CSV/TensorBoard loggers, its trial names, a normal exit).

    python -m benchmarks.bare_tune CONFIG.yaml --teacher DIR --rusage FILE.json

The trials are the project's (``orchestrator.trial.run_trial`` with the experiment and the
stored teacher, as ``orchestrator.tuner.make_trainable`` wraps it) and so is the space
(``orchestrator.space.DefineByRun``: the same settings, ranges, order and conditions a user
would write by hand), so both drivers run the same trials; only the driver differs. Used by
``benchmarks.driver_vs_tune``; ``--rusage`` writes the process's own CPU time at exit.
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
from pathlib import Path


def _write_rusage(path: Path) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    path.write_text(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--teacher", type=Path, required=True, help="a stored teacher folder")
    p.add_argument("--rusage", type=Path, default=None)
    args = p.parse_args(argv)
    if args.rusage is not None:
        atexit.register(_write_rusage, args.rusage)

    import optuna
    import ray
    import torch
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.config import load_config
    from orchestrator.space import DefineByRun
    from orchestrator.trial import run_trial

    exp = load_config(args.config)
    ray.init(num_cpus=exp.resources.num_cpus, include_dashboard=False)
    state = torch.load(args.teacher / "teacher.pt", map_location="cpu", weights_only=True)
    trainable = tune.with_parameters(run_trial, experiment=exp, teacher=[ray.put(state)])
    trainable = tune.with_resources(trainable, {"cpu": exp.resources.cpus_per_trial, "gpu": 0})
    searcher = OptunaSearch(
        space=DefineByRun(exp.tunable_sections),
        metric=["top1", "macs"],
        mode=["max", "min"],
        sampler=optuna.samplers.TPESampler(seed=exp.seed),
    )
    storage = Path(exp.storage.path).resolve()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=exp.sweep.num_samples,
            max_concurrent_trials=exp.sweep.max_concurrent_trials,
            reuse_actors=exp.sweep.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=exp.name,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=exp.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{storage / exp.name}-mlflow.db",
                    experiment_name=exp.name,
                    save_artifact=True,
                )
            ],
        ),
    )
    results = tuner.fit()
    results.get_dataframe().to_csv(storage / f"{exp.name}-results.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
