"""One run of a sweep (new or resumed), as the named steps a reader follows.

``run`` sets up the driver's output (``DriverOutput``: the compact console, Ray's lines in the
sweep's ``ray.log``) and hands a :class:`SweepRun` its console and error stream; no module
state. The steps, in order:

1. ``start_ray``: a local Ray of the configured size, or the cluster at ``--address``;
2. ``_start_teacher``: the cluster check, a new head's driver files, the teacher task
   (it trains beside Tune, ``teacher_job.py``), the model check, the SQLite store's first use;
3. ``_open_tracking``: the MLflow parent run, the accepted YAML changes, the ``TrialLogger``;
4. ``_fit``: Tune's ``Tuner``, built or restored, run to its end;
5. ``_conclude``: the front's tables, its timed speed, the hypervolume plot, the headline;
6. ``_close`` (always): the buffered tracking, the parent run's end, the mirror, the link to
   the runs table, Ray's shutdown.

A tracking record that neither MLflow nor the outbox took is counted in ``lost``; ``run``
turns a successful sweep with a loss into exit status 1 (never a silent loss).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from rich.console import Console

from orchestrator import end_summary, preflight, sweep_state
from orchestrator import space as space_mod
from orchestrator._redact import redact
from orchestrator.config import ConfigError
from orchestrator.driver_output import DriverOutput
from orchestrator.schema import Experiment

DRIVER_LOG = "ray.log"  # Ray's and Tune's output in compact mode (driver_output.py)


def run(
    exp: Experiment,
    uri: str,
    *,
    address: str | None,
    resume: bool,
    source: str,
    verbose: bool = False,
    changes: dict | None = None,
) -> int:
    """Run (or resume) the sweep; the exit status (0, 1: failed or lost records, 2: refused,
    130: interrupted). The driver's lines go to the terminal and, unless ``verbose``, Ray's
    output to ``<sweep folder>/ray.log``. ``changes``: fields the YAML changed since the sweep
    started, accepted (``--accept-changes``): recorded on the parent run."""
    with DriverOutput(exp.sweep_dir / DRIVER_LOG, verbose=verbose) as out:
        job = SweepRun(
            exp,
            uri,
            address=address,
            resume=resume,
            source=source,
            verbose=verbose,
            changes=changes or {},
            console=out.console,
            err=None if verbose else out.err,
        )
        try:
            code = job.run()
        finally:
            if (view := sys.modules.get("orchestrator.live_view")) is not None:
                view.use(None)  # the run imported it (it loads Tune) once the teacher started
        return 1 if code == 0 and job.lost else code


def resume_hint(source: str, exp: Experiment) -> str:
    from ray import tune

    if tune.Tuner.can_restore(exp.tune_dir):
        return f"resume with: python -m orchestrator.sweep {source} --resume"
    return f"start it again with: python -m orchestrator.sweep {source}"


def check_cluster(exp: Experiment, source: str, console: Console) -> None:
    """A joined cluster (``--address``): every request must fit a node it has or may add.

    ConfigError when it cannot; when the autoscaler's node types are unknown, a warning (a
    node type not yet listed may still come), since refusing could stop a valid sweep.
    """
    nodes, known = preflight.cluster_nodes()
    try:
        preflight.check_resources(exp, source, nodes, "the cluster")
    except ConfigError as err:
        if known:
            raise
        console.print(f"[yellow]warning: {err}, unless the autoscaler adds a larger node[/]")


def start_ray(exp: Experiment, address: str | None, resume: bool) -> str | None:
    """Step 1: a local Ray of the configured size, or the cluster at ``address``; the error
    line when the cluster cannot be reached."""
    import ray

    # A checkpoint per epoch is the point (restarts resume from it): no snapshot warnings.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not resume:  # make_tuner adds Tune's JSON and CSV loggers, not its TensorBoard one; a
        # restored sweep keeps Tune's defaults (one from before that change has none of its own)
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    init: dict[str, Any] = {"include_dashboard": False}
    if address is None:
        init.update(num_cpus=exp.resources.num_cpus, num_gpus=exp.resources.num_gpus)
    try:
        ray.init(address=address, **init)
    except ConnectionError as err:
        return f"orchestrator.sweep: --address {address}: {str(err).splitlines()[0]}"
    except Exception as err:  # Ray raises a bare Exception when its node does not come up
        # in time (an overloaded machine): one line, not a traceback; nothing was started
        return f"orchestrator.sweep: Ray did not start: {str(err).splitlines()[0]}"
    return None


def unlogged_line(uri: str, left: int, lost: int, sweep_dir) -> str:
    """What the end says when MLflow did not take ``left`` records, ``lost`` of them in no
    outbox either (a full disk)."""
    where = sweep_dir / "tracking-outbox.jsonl"
    if lost:
        tail = (
            f"{lost} of them could not be written to {where} either (disk full?) and are "
            "lost: the trials' results are in Tune's folders"
        )
    else:
        tail = f"they are kept in {where}: run with --resume when it is back"
    return f"orchestrator.sweep: MLflow at {uri} did not take {left} tracking record(s); {tail}"


class SweepRun:
    """The steps of one sweep (module doc) and what they share: the parent run, the tracking
    logger, the teacher job, the final status and the count of lost tracking records."""

    def __init__(
        self,
        exp: Experiment,
        uri: str,
        *,
        address: str | None,
        resume: bool,
        source: str,
        verbose: bool,
        changes: dict,
        console: Console,
        err: TextIO | None,
    ) -> None:
        self.exp, self.uri, self.address, self.resume = exp, uri, address, resume
        self.source, self.verbose, self.changes = source, verbose, changes
        self.console, self.err = console, err
        self.started = time.perf_counter()
        self.parent: str | None = None
        self.fresh = False  # a new parent run (not one a resumed sweep continues)
        self.status = "FAILED"
        self.logger: Any = None
        self.job: Any = None
        self.closing: threading.Thread | None = None  # Ray's shutdown, overlapped
        self.lost = 0

    def fail(self, message: str, code: int = 2) -> int:
        """One line on the terminal's stderr (a URI's password masked); ``code``."""
        print(redact(message), file=self.err or sys.stderr)
        return code

    def say(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, highlight=False, markup=False)

    # ------------------------------------------------------------------ the sequence
    def run(self) -> int:
        import ray

        if (refused := start_ray(self.exp, self.address, self.resume)) is not None:
            return self.fail(refused)
        try:
            self._start_teacher()
            self._open_tracking()
            grid = self._fit()
            return self._conclude(grid)
        except KeyboardInterrupt:  # before Tune's own handler (teacher), or a second Ctrl-C
            return self._interrupted()
        except ConfigError as err:  # the cluster cannot run it, or the model check refused it
            if self.job is not None:
                self.job.cancel()
            return self.fail(str(err))
        except ray.exceptions.RayError as err:  # the teacher task: one line, not a traceback
            cause = getattr(err, "cause", None) or err
            return self.fail(f"orchestrator.sweep: teacher: {str(cause).splitlines()[0]}", 1)
        finally:
            self._close()

    def _interrupted(self) -> int:
        if self.job is not None:
            self.job.cancel()
        self.status = "KILLED"
        message = f"orchestrator.sweep: interrupted; {resume_hint(self.source, self.exp)}"
        return self.fail(message, 130)

    # ------------------------------------------------------------------ 2. the teacher
    def _start_teacher(self) -> None:
        from orchestrator.teacher_job import TeacherJob, reserved_cpus

        exp, console = self.exp, self.console
        if self.address is not None:
            check_cluster(exp, self.source, console)  # local Ray was checked before it started
        if self.resume:  # a new head: the driver's files come back (mirror loads Tune: ~0.6 s)
            from orchestrator import mirror

            if pulled := mirror.pull(exp):
                where = redact(mirror.mirror_uri(exp).partition("?")[0])
                console.print(f"{pulled} driver files from {where}", soft_wrap=True)
        if warning := preflight.gpu_room_warning(exp):
            console.print(f"[yellow]warning: {warning}[/]")
        console.print(f"teacher: {exp.sweep_dir / 'teacher'}")
        # the teacher trains from here on; Tune starts beside it (teacher_job.py); first:
        node_cpus = preflight.local_resources(exp)[0] if self.address is None else None
        cpus = None if node_cpus is None else reserved_cpus(exp, node_cpus)
        self.job = TeacherJob(exp, cpus)
        preflight.check_model(exp, self.source)  # torch + timm (`--dry-run` ran it before Ray)
        from orchestrator.tracking import init_sqlite  # (MLflow: ~1 s to import)

        init_sqlite(self.uri)  # first use of a shared SQLite store: its migration, once

    # ------------------------------------------------------------------ 3. tracking
    def _open_tracking(self) -> None:
        from orchestrator import live_view, mirror, trial_logger
        from orchestrator.tuner import TeacherWatch

        exp, console = self.exp, self.console
        live_view.use(console)
        self.parent, self.fresh = sweep_state.parent_run(exp, self.uri)
        if self.changes:  # --accept-changes: on the parent run; the new file is the reference
            sweep_state.record_changes(exp, self.uri, self.parent, self.changes)
            console.print(
                f"accepted changes, recorded on the parent run: {', '.join(self.changes)}"
            )
        self.logger = trial_logger.TrialLogger(
            self.uri,
            self.parent,
            str(exp.sweep_dir.resolve()),
            exp.name,
            space_mod.explored(exp.tunable_sections),  # a child logs what varies per trial
            storage_uri=exp.storage_uri,
            print_fronts=self.verbose,
            refresh_every_s=exp.sweep.refresh_every_s,
            resume=self.resume,  # its table and child runs are read back from MLflow, once
        )
        mirror.push(exp)  # sweep.json (and a stored teacher): what a new head needs to resume

        def teacher_ready(teacher: dict) -> None:  # from Tune's loop once the task has ended
            console.print(f"teacher top-1 {teacher['top1']:.2f} %, {teacher['macs']:,} MACs")
            if self.fresh or self.job.trained:  # a resumed parent has the stored teacher's
                self.logger.log_teacher(teacher)
            mirror.push(exp)

        TeacherWatch.watch(self.job, teacher_ready)

    # ------------------------------------------------------------------ 4. Tune
    def _fit(self):
        from ray import tune

        from orchestrator import mirror
        from orchestrator.live_view import LiveView
        from orchestrator.tuner import TeacherWatch, make_trainable, make_tuner

        exp = self.exp
        trainable = make_trainable(exp, self.job.state_ref())
        path = exp.tune_dir
        if self.resume:
            self.logger.flush()  # what an earlier run could not log (MLflow down), first
            tuner = tune.Tuner.restore(
                path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            callbacks = [self.logger] + ([mirror.DriverMirror(exp)] if exp.storage.is_uri else [])
            if not self.verbose:
                explored = space_mod.explored(exp.tunable_sections)
                callbacks.append(LiveView(exp.sweep.num_samples, explored))
            try:
                tuner = make_tuner(exp, trainable, callbacks)
            except BaseException:  # Tune created tuner.pkl, then could not pickle into it: a
                sweep_state.discard_tuner(path)  # 0-byte file a rerun took for a sweep
                raise
        grid = tuner.fit()
        self.logger.flush()
        if TeacherWatch.error is not None:
            raise TeacherWatch.error
        return grid

    # ------------------------------------------------------------------ 5. the front
    def _conclude(self, grid) -> int:
        import ray

        from orchestrator import pareto, speed, tracking
        from orchestrator.tuner import interrupted

        exp, console = self.exp, self.console
        if interrupted(grid, exp.sweep.num_samples):
            return self._interrupted()
        summary = self.logger.summary()  # trials.parquet / pareto.parquet with every trial
        teacher_state, teacher = self.job.result()
        if speed.in_driver(exp, local=self.address is None):  # Ray's part is done: its
            # shutdown (~1.3 s, mostly waiting for processes to exit) overlaps loading the
            # front's models and their warm-up; the timed rounds wait for it (speed.latencies)
            self.closing = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            self.closing.start()
        timed = None
        try:  # insight, not bookkeeping: a failure here never costs the sweep's results
            timed = speed.measure_front(  # then adds the measured columns to pareto.parquet
                exp,
                self.uri,
                self.parent,
                teacher_state,
                teacher,
                console=console,
                local=self.address is None,
                settle=self.closing.join if self.closing is not None else None,
            )
        except Exception as err:  # any error, on purpose
            console.print(f"front speed: not measured ({tracking.first_line(err)})")
        if timed is None and not self.verbose and summary.get("front") is not None:
            pareto.print_front(summary["front"], teacher=teacher, console=console)
        try:
            end_summary.hypervolume_plot(self.uri, self.parent, exp.sweep_dir)
        except Exception as err:  # any error, on purpose (as the front's speed above)
            console.print(f"hypervolume plot: not drawn ({tracking.first_line(err)})")
        counts = end_summary.counts(grid)
        self.status = "FINISHED"
        seconds = time.perf_counter() - self.started
        for line in end_summary.headline(counts, seconds, summary["hypervolume"], exp.sweep_dir):
            self.say(line)
        if counts.failed == len(grid):
            return self.fail("orchestrator.sweep: every trial failed (see the Ray logs above)", 1)
        return 0

    # ------------------------------------------------------------------ 6. always
    def _close(self) -> None:
        import ray

        from orchestrator import mirror, tracking

        exp = self.exp
        if self.logger is not None:
            if not self.logger.end_sweep(self.status, say=self.console.print):
                left, self.lost = self.logger.unlogged()
                self.fail(unlogged_line(self.uri, left, self.lost, exp.sweep_dir))
        elif self.parent is not None:
            tracking.end_parent(self.uri, self.parent, self.status)
        if self.parent is not None:
            mirror.push_or_warn(exp)  # the final tables and any buffered tracking
        if self.status == "FINISHED":  # last: where to look next
            for line in end_summary.mlflow_lines(self.uri, exp.sweep_dir, self.parent):
                self.say(line)
        if self.closing is not None:
            self.closing.join()
        else:
            ray.shutdown()
