"""``python -m orchestrator.sweep experiments/<name>.yaml``: the sweep driver.

Ray Tune runs the trials; Optuna (through OptunaSearch, define-by-run) chooses them, as a
two-objective study (max top-1, min MACs) whose metric/mode lists live *only* on the searcher
(a metric on ``TuneConfig`` would silently make the study single-objective); ASHA stops weak
trials on its own scalar; ``FailureConfig`` retries a failed trial from its checkpoint. The
teacher is made once per sweep and handed to every trial through the object store.

Bad input (missing file, bad field, unknown model, a tracking URI on the retired file store)
exits with status 2 and one line on stderr, before anything is written. ``--resume`` continues
an interrupted sweep from its storage directory (finished trials are not re-run, the same
parent MLflow run is continued); without it, an existing sweep directory is refused rather
than mixed into.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rich.console import Console

from orchestrator import preflight, sweep_run, sweep_state
from orchestrator._redact import redact
from orchestrator.config import ConfigError, check_inputs, load_config, with_img_size
from orchestrator.dry_run import print_plan
from orchestrator.lock import SweepBusy, SweepLock
from orchestrator.schema import Experiment
from orchestrator.tracking import TrackingError, check_uri, ping

# Ray, Optuna, torch and the trial code are imported inside the functions that use them, so
# `--dry-run` and a bad config answer in about a second without them (tests check that
# importing this module loads none of torch, ray, mlflow).

# MLflow's defaults (7 retries with exponential backoff, 120 s timeouts) turn a dead server
# into minutes of silence per call; a sweep wants to know in seconds (the user may override).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Prune a vision transformer at many MAC budgets: Ray Tune + Optuna + MLflow.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/digits.yaml")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto': the running one); default: start locally",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep in <storage.path>/<name>",
    )
    p.add_argument(
        "--accept-changes",
        action="store_true",
        help="with --resume: go on although the YAML changed since the sweep started (the "
        "changed fields are recorded on the parent MLflow run)",
    )
    p.add_argument("--num-samples", type=int, default=None, help="override sweep.num_samples")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (e.g. http://head:5000); default tracking.uri, else SQLite "
        "in the storage path",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print the space and the resources, run nothing",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Ray's and Tune's full output and the front after every trial (default: a "
        "compact live view; Ray's output goes to <storage.path>/<name>/ray.log)",
    )
    return p.parse_args(argv)


def fail(message: str, code: int = 2) -> int:
    """One line on stderr (a URI's password masked); ``code`` (2: refused input)."""
    print(redact(message), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    # torch.utils.benchmark (imported by prune_core) warns about CUDA on CPU-only machines; an
    # error must stay the only line on stderr.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
    for var, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)
    args = parse_args(argv)
    if args.tracking_uri and redact(args.tracking_uri) != args.tracking_uri:
        print(  # masked everywhere the sweep writes, but a command line is public
            "orchestrator.sweep: warning: --tracking-uri holds a credential, which `ps` shows "
            "every local user and Ray records as the job's entrypoint; give it as ${VAR} in "
            "tracking.uri, or in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD",
            file=sys.stderr,
        )
    try:
        exp = load_config(args.config)
        if args.num_samples is not None:
            if args.num_samples < 1:
                raise ConfigError(args.config, "--num-samples", "must be >= 1")
            exp = exp.model_copy(
                update={"sweep": exp.sweep.model_copy(update={"num_samples": args.num_samples})}
            )
        check_inputs(exp, args.config)
        exp = with_img_size(exp, args.config)  # hf: the image processor's, when omitted
        uri = check_uri(args.tracking_uri or exp.tracking_uri())
        exp = _masked(exp, uri)  # from here on `uri` alone holds the tracking password
        # the model check (torch, timm: seconds) runs beside the teacher in a real run
        checks = preflight.check(exp, args.config, local=args.address is None, model=args.dry_run)
    except ConfigError as err:
        return fail(str(err))
    except TrackingError as err:
        return fail(f"{args.config}: tracking.uri: {err}")
    if args.dry_run:
        print_plan(
            exp, uri, args.config, checks, Console(width=None if sys.stdout.isatty() else 120)
        )
        return 0
    try:
        ping(uri)  # a dead tracking server stops the sweep here, before any teacher or trial
    except TrackingError as err:
        return fail(f"orchestrator.sweep: {err}")
    try:
        with SweepLock(exp.sweep_dir) as lock:  # held until the driver ends (lock.py)
            code = _locked_main(args, exp, uri)
            if code == 2:  # refused input: Ray's start-up log is not worth a sweep folder
                lock.disposable.add(sweep_run.DRIVER_LOG)
            return code
    except SweepBusy as err:
        return fail(f"{args.config}: {err}")
    except TrackingError as err:
        return fail(f"{args.config}: tracking: {err}")


def _masked(exp: Experiment, uri: str) -> Experiment:
    """``exp`` with the credentials of ``tracking.uri`` masked (_redact), so that no copy of it
    holds them: Tune's state (tuner.pkl, maybe in a bucket), the trials' arguments, the parent
    run's params and ``config.json``; ``uri`` is what the driver connects with. MLflow's own
    "View run at <URL>" lines are turned off when the URI carries credentials."""
    if redact(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if exp.tracking.uri is None:
        return exp
    tracking = exp.tracking.model_copy(update={"uri": redact(exp.tracking.uri)})
    return exp.model_copy(update={"tracking": tracking})


def _locked_main(args: argparse.Namespace, exp: Experiment, uri: str) -> int:
    """What only the folder's owner may do: look at the folder, then run the sweep."""
    path = exp.tune_dir
    if args.accept_changes and not args.resume:
        return fail(f"{args.config}: --accept-changes goes with --resume")
    state = sweep_state.tuner_state(path)
    restorable = state == "ok"
    if args.resume and state == "torn":
        return fail(
            f"{args.config}: --resume: {path}/{sweep_state.TUNER_STATE} is empty or cut short "
            "(a start that failed before its first trial): start it again without --resume"
        )
    if args.resume and not restorable:
        return fail(f"{args.config}: --resume: no sweep to resume in {path}")
    changes = sweep_state.config_changes(exp) if args.resume else {}
    if changes and not args.accept_changes:  # Tune would restore the old Optuna space and
        # the trials train with the new file: both, mixed without a word
        return fail(
            f"{args.config}: --resume: changed since the sweep started: {', '.join(changes)}; "
            "resume with the file it started with, or pass --accept-changes (recorded on the "
            "parent run)"
        )
    if restorable and not args.resume:
        return fail(
            f"{args.config}: {path} already holds sweep {exp.name!r}: pass --resume to "
            "continue it, or change name / storage.path"
        )
    return sweep_run.run(
        exp,
        uri,
        address=args.address,
        resume=args.resume,
        source=args.config,
        verbose=args.verbose,
        changes=changes,
    )


if __name__ == "__main__":
    code = main()  # Ray is shut down, MLflow written, files closed and the lock released
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)  # skips the teardown of torch, timm and Ray's modules: 2-3 s measured
