"""What ``--dry-run`` prints: the explored settings, the schedule and resources, the checks.

Torch-free on purpose, like config.py and space.py (``--dry-run`` answers in about a second);
the one torch-side lookup (Fashion-MNIST's folder) is imported where it is used.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator import space as space_mod
from orchestrator import versions
from orchestrator._redact import redact
from orchestrator.schema import Experiment


def print_plan(exp: Experiment, uri: str, source: str, checks: list[str], console: Console) -> None:
    """What --dry-run shows: the space Optuna explores, what each trial costs, and what the
    checks before a run found (preflight.py)."""
    r, f = exp.resources, exp.finetune
    table = Table(title=f"search space of {exp.name} ({source})", title_justify="left")
    table.add_column("parameter")
    table.add_column("values")
    for name, text in space_mod.describe(exp.tunable_sections):
        table.add_row(name, text)
    console.print(table)
    asha = exp.sweep.asha
    stopping = (
        f"ASHA on {asha.metric} ({asha.mode}) in {asha.mac_buckets} MAC bucket(s)"
        if asha
        else "no early stopping"
    )
    checkpoint = f", from {exp.model.checkpoint}" if exp.model.checkpoint else ""
    files = f" ({exp.data.train}, {exp.data.val})" if exp.data.kind != "digits" else ""
    if exp.data.kind == "fashion_mnist":
        from prune_core.fashion_mnist import fashion_mnist_dir

        subset = exp.data.train_subset
        files = (
            f" ({subset if subset else 'all'} of the 60,000 training images, "
            f"{fashion_mnist_dir(exp.data.root)})"
        )
    teacher_from = f" from {exp.teacher.checkpoint}" if exp.teacher.checkpoint else ""
    if exp.model.source == "hf":
        teacher_from = ", the pretrained weights (transformers from_pretrained)"
    finetune = (
        "in the trial"
        if f.workers == 1
        else f"Ray Train, {f.workers} workers x ({r.cpus_per_worker:g} CPU, "
        f"{r.gpus_per_worker:g} GPU)"
    )
    m = exp.model
    rows = [
        ("model", f"{m.name}, {m.num_classes} classes, {m.img_size} px{checkpoint}"),
        ("data", exp.data.kind + files),
        ("teacher", f"{exp.teacher.epochs} epochs{teacher_from}"),
        ("trial", f"search {exp.search.steps} steps, fine-tune {f.epochs} epochs"),
        (
            "sweep",
            (
                f"{exp.sweep.num_samples} trials, {exp.sweep.sampler} sampler, objectives "
                f"max top1 / min macs, {stopping}, {exp.sweep.max_failures} retries"
            ),
        ),
        (
            "per trial",
            (f"{r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU, {r.threads()} torch threads"),
        ),
        ("fine-tune", finetune),
        ("concurrency", f"{exp.sweep.max_concurrent_trials} trials at once"),
        ("teacher task", f"{r.teacher_cpus:g} CPU, {r.teacher_gpus:g} GPU"),
        (
            "storage",
            redact(exp.tune_dir)
            + (f" (driver files in {exp.sweep_dir.resolve()})" if exp.storage.is_uri else ""),
        ),
        ("tracking", redact(uri)),  # a password in it stays off the screen
    ]
    in_use, drift = versions.summary()
    rows += [("versions", in_use)] + [("checked", note) for note in checks]
    plan = Table(title="resources and schedule", title_justify="left", show_header=False)
    plan.add_column()
    plan.add_column()
    for key, value in rows:
        plan.add_row(key, value)
    console.print(plan)
    if drift:
        console.print(f"[yellow]warning:[/] {drift}")
