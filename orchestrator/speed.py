"""Measured speed of the Pareto front: the teacher and every front model timed side by side.

Each trial times itself while other trials share the node, so the per-trial ``throughput`` can
contradict the MACs (a 0.26-MAC model slower than the teacher). At the end of a sweep the
teacher and the front's pruned models are timed in one process, on one device, with the same
threads and batch: a warm-up call each, then interleaved rounds (teacher, model 1, model 2, ...,
teacher, ...) so any load from elsewhere hits every model alike, and the median of the rounds
(``torch.utils.benchmark.Timer``, which also pins the thread count). On a cluster it runs as one
Ray task with the teacher's resources (``resources.teacher_cpus`` / ``teacher_gpus``): on a GPU
worker when those ask for a GPU.

Columns added to ``pareto.parquet`` (and the console table): ``latency_ms`` (median ms per batch
of ``data.eval_batch_size``), ``speedup`` (teacher latency / model latency) and
``fraction_of_limit`` (speed-up / (1 / MAC ratio): 1 would mean time scales with MACs). The
previews (``pareto.csv``, ``pareto.html``) are written again with them, and each front trial's
child run gets ``latency_ms`` and ``speedup_x`` as metrics, so MLflow's runs table sorts by
measured speed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the driver may have no display
import matplotlib.pyplot as plt
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from rich.console import Console
from torch import nn
from torch.utils import benchmark
from torch.utils.benchmark.utils.timer import timer as clock

import prune_core
from orchestrator import front_preview, pareto
from orchestrator._atomic import atomic_write
from orchestrator._paths import contained
from orchestrator.mlflow_names import SPEED_METRICS
from orchestrator.model import create_model, load_teacher
from orchestrator.schema import Experiment
from orchestrator.tracking import client

ROUNDS = 5  # interleaved rounds; the median of them is reported
# Weights built at once while the front is timed (time_front): small models are timed all
# together, interleaved; larger ones in groups, down to one model at a time.
MODEL_BYTES = 1 << 30
TEACHER = "teacher"


def latencies(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    *,
    threads: int,
    rounds: int = ROUNDS,
    min_run_time: float = 0.1,
    settle: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median latency (ms per call on ``x``) of each model, timed in interleaved rounds.

    Args:
        models: name -> model, on ``x``'s device, in eval mode.
        x: one batch (B, C, H, W).
        threads: torch threads for every timing (``benchmark.Timer(num_threads=...)``).
        min_run_time: seconds each model runs per round: the calls one ``blocked_autorange``
            of that length made (the warm-up), then one block of that many calls per round,
            timed with torch.utils.benchmark's clock (it synchronizes an accelerator).
        settle: called between the warm-up and the timed rounds (the driver waits there for
            Ray's shutdown, which runs meanwhile, so that it cannot disturb the rounds).
    Returns:
        name -> median over ``rounds`` of the per-call time, in ms.
    """
    timers = {
        name: benchmark.Timer(
            stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads
        )
        for name, model in models.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in models}
    calls: dict[str, int] = {}
    with torch.inference_mode():
        for name, timer in timers.items():  # warm-up (lazy inits, allocator, kernels) and
            # the block size, once: blocked_autorange re-estimates it on every call, which
            # cost as much again as the timing itself
            warm = timer.blocked_autorange(min_run_time=min_run_time)
            calls[name] = max(1, warm.number_per_run * len(warm.raw_times))
        if settle is not None:
            settle()
        # The rounds use the stdlib's timeit with torch's clock: ``Timer.timeit`` runs 2 more
        # calls as a warm-up before every block, 40 % of a 3-call block of the digits teacher,
        # and the models are warm by now
        blocks = {
            name: timeit.Timer("model(x)", timer=clock, globals={"model": model, "x": x})
            for name, model in models.items()
        }
        threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(rounds):
                for name, block in blocks.items():  # one block of >= min_run_time per round
                    samples[name].append(block.timeit(calls[name]) / calls[name])
        finally:
            torch.set_num_threads(threads_before)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def speed_columns(front: pa.Table, measured: dict[str, float]) -> pa.Table:
    """``front`` with ``latency_ms``, ``speedup`` and ``fraction_of_limit`` per trial
    (``measured``: trial id or ``teacher`` -> ms per batch)."""
    teacher_ms = measured[TEACHER]
    rows = front.to_pylist()
    ms = [measured.get(r["trial_id"], math.nan) for r in rows]
    speedup = [teacher_ms / m if m and math.isfinite(m) else math.nan for m in ms]
    limit = [s * r["macs_ratio"] for s, r in zip(speedup, rows, strict=True)]
    for name, values in (("latency_ms", ms), ("speedup", speedup), ("fraction_of_limit", limit)):
        if name in front.column_names:
            front = front.drop_columns([name])
        front = front.append_column(name, pa.array(values, pa.float64()))
    return front


def time_front(
    teacher: nn.Module,
    pruned: Mapping[str, nn.Module | Callable[[], nn.Module]],
    input_size: tuple[int, int, int],
    batch: int,
    threads: int,
    device: str | None = None,
    settle: Callable[[], None] | None = None,
    budget: int = MODEL_BYTES,
) -> dict[str, float]:
    """The teacher and each pruned model (trial id -> model, or a function that builds it)
    timed side by side on one device (CUDA when there is one, else CPU); ms per batch of
    ``batch`` images.

    The models are built and timed in groups that fit ``budget`` bytes of weights (sized
    by the teacher's, which no pruned model exceeds), each with the teacher in its rounds,
    and dropped before the next group is built: a front of small models is one group (all
    interleaved), a front of large ones streams one model at a time, in memory O(one model).
    The teacher's latency is the median of its groups'."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device).eval()
    x = torch.randn(batch, *input_size, device=device)
    size = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    per_group = max(1, budget // max(1, size))
    items = list(pruned.items())
    measured: dict[str, float] = {}
    teacher_ms: list[float] = []
    for start in range(0, max(1, len(items)), per_group):
        models = {TEACHER: teacher}
        for name, model in items[start : start + per_group]:
            models[name] = (model if isinstance(model, nn.Module) else model()).to(device).eval()
        got = latencies(models, x, threads=threads, settle=settle if start == 0 else None)
        teacher_ms.append(got.pop(TEACHER))
        measured.update(got)
        del models  # this group's models go before the next is built
    return {TEACHER: statistics.median(teacher_ms), **measured}


def _download_pruned(c, run_id: str, directory: Path) -> tuple[str, dict]:
    """(plan JSON, weights) of a trial's child run: the artifacts every finished trial logs."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = Path(c.download_artifacts(run_id, "plan.json", str(directory))).read_text()
    weights = Path(c.download_artifacts(run_id, "weights.pt", str(directory)))
    return plan, torch.load(weights, map_location="cpu", weights_only=True)


def in_driver(exp: Experiment, *, local: bool) -> bool:
    """Whether the front is timed in the driver's own process: on a local Ray with no GPU
    asked for (the trials are done, the driver's CPU is free, and a fresh worker would first
    spend seconds importing torch); else in one Ray task with the teacher's resources."""
    return local and not exp.resources.teacher_gpus


def _timing_task(
    exp: Experiment,
    teacher_state: dict,
    plans: Mapping[str, tuple[str, dict] | ray.ObjectRef | Callable[[], tuple[str, dict]]],
    settle: Callable[[], None] | None = None,
):
    """One process, one device: rebuild the teacher, then each pruned model when its group
    is timed (``plans``: trial id -> its (plan JSON, weights), an object reference to them,
    or a function that fetches them), and time them (:func:`time_front`)."""
    threads = exp.resources.threads(exp.resources.teacher_cpus)  # as the teacher trained
    torch.set_num_threads(threads)
    teacher = load_teacher(exp, teacher_state)

    def builder(source) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            if isinstance(source, ray.ObjectRef):
                plan, weights = ray.get(source)
            else:
                plan, weights = source() if callable(source) else source
            model = create_model(exp, load_checkpoint=False)
            return prune_core.load_pruned(model, prune_core.Plan.from_json(plan), weights)

        return build

    pruned = {trial: builder(source) for trial, source in plans.items()}
    return time_front(
        teacher, pruned, exp.input_size, exp.data.eval_batch_size, threads, settle=settle
    )


def measure_front(
    exp: Experiment,
    uri: str,
    parent_id: str,
    teacher_state: dict,
    teacher: dict,
    console: Console | None = None,
    *,
    local: bool = False,
    settle: Callable[[], None] | None = None,
) -> pa.Table | None:
    """Time the front side by side (module doc) in one Ray task, or in the driver
    (:func:`in_driver`, where ``settle`` runs before the timed rounds); add the speed columns
    to ``pareto.parquet``, plot ``speedup.png``, log both to the parent run, print the table.

    Returns the front with its speed columns, or None when no trial finished.
    """
    path = exp.sweep_dir / "pareto.parquet"
    front = pq.read_table(path) if path.is_file() else None
    if front is None or front.num_rows == 0:
        return None
    c = client(uri)
    r = exp.resources
    with tempfile.TemporaryDirectory(prefix="front-speed-") as tmp:
        # each model's files in a folder of its own, fetched when its group is timed (a
        # folder by position: a trial id read from MLflow never becomes a path)
        fetch = {
            row["trial_id"]: partial(_download_pruned, c, row["run_id"], contained(tmp, f"m{i}"))
            for i, row in enumerate(front.to_pylist())
        }
        if in_driver(exp, local=local):
            measured = _timing_task(exp, teacher_state, fetch, settle)
        else:  # the task may run where MLflow cannot be reached: the object store carries
            # the models, put one at a time (the driver holds one), fetched one at a time
            refs = {trial: ray.put(get()) for trial, get in fetch.items()}
            task = ray.remote(num_cpus=r.teacher_cpus, num_gpus=r.teacher_gpus)(_timing_task)
            measured = ray.get(task.remote(exp, teacher_state, refs))
    front = speed_columns(front, measured)
    atomic_write(path, lambda p: pq.write_table(front, p))
    png = plot_speedup(front, exp.sweep_dir / "speedup.png", teacher=teacher)
    trials_file = exp.sweep_dir / "trials.parquet"
    trials = pq.read_table(trials_file) if trials_file.is_file() else front
    timed_teacher = {**teacher, "latency_ms": measured[TEACHER]}
    previews = front_preview.write(
        trials, front, exp.sweep_dir, teacher=timed_teacher, title=f"{exp.name}: timed front"
    )
    for file in (path, png, *previews.values()):
        c.log_artifact(parent_id, str(file))
    c.log_metric(parent_id, "teacher_latency_ms", measured[TEACHER])
    log_child_speed(c, front)
    pareto.print_front(
        front,
        teacher={**teacher, "latency_ms": measured[TEACHER]},
        title=f"Pareto front, timed side by side (batch {exp.data.eval_batch_size}, "
        f"{'GPU' if r.teacher_gpus else f'{r.threads(r.teacher_cpus)} CPU thread(s)'})",
        console=console,
    )
    return front


def log_child_speed(c, front: pa.Table) -> int:
    """``latency_ms`` and ``speedup_x`` on each timed front trial's child run (one
    ``log_batch`` per run, step 0), to 4 significant digits (the runs table shows what a
    person compares; the rounds' spread is far wider); the number of runs written. MLflow
    errors propagate."""
    from mlflow.entities import Metric  # here: the timing task never needs MLflow

    now, written = int(time.time() * 1000), 0
    for r in front.to_pylist():
        values = {SPEED_METRICS[k]: r.get(k) for k in SPEED_METRICS}
        if r.get("run_id") and all(
            isinstance(v, float) and math.isfinite(v) for v in values.values()
        ):
            metrics = [Metric(k, float(f"{v:.4g}"), now, 0) for k, v in values.items()]
            c.log_batch(r["run_id"], metrics=metrics)
            written += 1
    return written


def plot_speedup(front: pa.Table, png: Path, *, teacher: dict) -> Path:
    """top-1 vs measured speed-up: the front (filled, with its trial ids) and its 1/MAC-ratio
    limit (hollow); the legend outside the axes (pareto.finish: it hides no point)."""
    rows = [r for r in front.to_pylist() if math.isfinite(r["speedup"])]
    fig, ax = plt.subplots(figsize=(7.6, 4.4), dpi=120)
    ax.scatter(
        [r["speedup"] for r in rows],
        [r["top1"] for r in rows],
        c="tab:red",
        marker="D",
        label="Pareto front, measured",
        zorder=3,
    )
    ax.scatter(
        [1 / r["macs_ratio"] for r in rows],
        [r["top1"] for r in rows],
        facecolors="none",
        edgecolors="tab:gray",
        label="1 / MAC ratio (limit)",
        zorder=2,
    )
    for r in rows:
        ax.plot([r["speedup"], 1 / r["macs_ratio"]], [r["top1"]] * 2, c="tab:gray", lw=0.6)
    pareto.mark_teacher(ax, 1.0, teacher)
    ax.set_xlabel("speed-up over the teacher (×, same process, same batch)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    labels = [(r["speedup"], r["top1"], str(r["trial_id"])) for r in rows]
    pareto.finish(fig, ax, labels, below=True)  # a faster model is less accurate: the
    # region below and left of a front point is the empty one
    return pareto.save(fig, png)
