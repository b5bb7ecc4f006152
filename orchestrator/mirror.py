"""The driver's own files of a sweep, mirrored next to Tune's when storage is a bucket.

With ``storage.path: s3://…`` (or ``gs://…``) Tune keeps trials, checkpoints and its
experiment state in the bucket, but the driver's files (the teacher, ``sweep.json`` with the
MLflow parent run, the tracking outbox, the Pareto tables) live in ``storage.local_dir`` on the
head node. If the head dies, a new head must find them to resume without retraining the teacher
or starting a second parent run; so they are copied to ``<storage>/<name>.driver/`` and copied
back by ``--resume`` when the local directory lacks them.

Copies go file by file through pyarrow (Ray's own storage layer, same credentials); an object
store only ever shows whole objects, so a head killed mid-copy leaves the previous version.
Temporary files (a leading dot) are never copied. The teacher is copied once (it never changes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
from ray.tune import Callback

from orchestrator import driver_output
from orchestrator.outbox import OUTBOX, PRIVATE
from orchestrator.schema import Experiment
from orchestrator.sweep_state import SWEEP_STATE

SUFFIX = ".driver"
WRITE_ONCE = ("teacher",)  # top-level folders whose files never change once written
PRIVATE_FILES = (SWEEP_STATE, OUTBOX)  # the owner's only, on a new head too


def mirror_uri(exp: Experiment) -> str | None:
    """``<storage>/<name>.driver`` (URI options kept after ``?``), or None for local storage."""
    if not exp.storage.is_uri:
        return None
    base, sep, query = exp.storage_uri.partition("?")
    return f"{base.rstrip('/')}/{exp.name}{SUFFIX}{sep}{query}"


def _remote(uri: str):

    return pafs.FileSystem.from_uri(uri)


def _local_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def push(exp: Experiment) -> int:
    """Copy the driver's files to the mirror; returns how many were copied (0 when local)."""
    uri = mirror_uri(exp)
    if uri is None or not exp.sweep_dir.is_dir():
        return 0

    fs, root = _remote(uri)
    local = pafs.LocalFileSystem()
    copied = 0
    for path in _local_files(exp.sweep_dir):
        rel = path.relative_to(exp.sweep_dir).as_posix()
        target = f"{root.rstrip('/')}/{rel}"
        if rel.split("/", 1)[0] in WRITE_ONCE:
            info = fs.get_file_info(target)
            if info.type == pafs.FileType.File and info.size == path.stat().st_size:
                continue
        pafs.copy_files(str(path), target, source_filesystem=local, destination_filesystem=fs)
        copied += 1
    return copied


def pull(exp: Experiment) -> int:
    """Copy mirrored files that are missing locally (a new head); returns how many."""
    uri = mirror_uri(exp)
    if uri is None:
        return 0

    fs, root = _remote(uri)
    root = root.rstrip("/")
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    local = pafs.LocalFileSystem()
    copied = 0
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root) + 1 :]
        target = exp.sweep_dir / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")  # never a half-copied file under its name
        pafs.copy_files(info.path, str(tmp), source_filesystem=fs, destination_filesystem=local)
        if rel in PRIVATE_FILES:  # as the driver writes them (outbox.PRIVATE)
            os.chmod(tmp, PRIVATE)
        tmp.replace(target)
        copied += 1
    return copied


def push_or_warn(exp: Experiment) -> None:
    """``push``, reporting a failed copy instead of raising: the sweep goes on, and the next
    push (after the next trial, or at the end) copies everything again."""
    try:
        push(exp)
    except OSError as err:
        driver_output.warn(
            f"orchestrator.sweep: could not mirror {exp.sweep_dir} to {mirror_uri(exp)}: {err}"
        )


class DriverMirror(Callback):
    """Tune callback: push the mirror after every finished trial (the tables have changed)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        push_or_warn(self.exp)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        push_or_warn(self.exp)
