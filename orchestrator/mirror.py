"""The driver's own files of a sweep, mirrored next to Tune's when storage is a bucket.

With ``storage.path: s3://…`` (or ``gs://…``) Tune keeps trials, checkpoints and its
experiment state in the bucket, but the driver's files (the teacher, ``sweep.json`` with the
MLflow parent run, the tracking outbox, the Pareto tables) live in ``storage.local_dir`` on the
head node. If the head dies, a new head must find them to resume without retraining the teacher
or starting a second parent run; so they are copied to ``<storage>/<name>.driver/`` and copied
back by ``--resume`` when the local directory lacks them.

Copies go file by file through pyarrow (Ray's own storage layer, same credentials); an object
store only ever shows whole objects, so a head killed mid-copy leaves the previous version.
Temporary files (a leading dot) are never copied. Only files new or changed since this
process last copied them are (size and mtime): the teacher once, ``ray.log`` only at the end
(it grows with every trial), and the pushes after each trial run on a thread of their own,
off Tune's loop, coalesced (``DriverMirror``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.fs as pafs
from ray.tune import Callback

from orchestrator import driver_output
from orchestrator._atomic import atomic_write
from orchestrator._paths import contained
from orchestrator.outbox import OUTBOX, PRIVATE
from orchestrator.schema import Experiment
from orchestrator.sweep_state import SWEEP_STATE

SUFFIX = ".driver"
LOGS = ("ray.log",)  # Ray's and Tune's output (sweep.DRIVER_LOG): copied at the end only
# what this process copied, by mirror URI: relative path -> (size, mtime_ns) of that copy
_PUSHED: dict[str, dict[str, tuple[int, int]]] = {}
_LOCK = threading.Lock()
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


def push(exp: Experiment, logs: bool = True) -> int:
    """Copy the driver's new or changed files to the mirror (size and mtime differ from the
    last copy this process made); returns how many were copied (0 when local). ``logs``:
    ``ray.log`` too (it grows all the time and an object cannot be appended to: it is copied
    at the end of the sweep, not after every trial)."""
    uri = mirror_uri(exp)
    if uri is None or not exp.sweep_dir.is_dir():
        return 0

    fs, root = _remote(uri)
    local = pafs.LocalFileSystem()
    copied = 0
    with _LOCK:  # one push at a time: the background one and the driver's last one
        pushed = _PUSHED.setdefault(uri, {})
        for path in _local_files(exp.sweep_dir):
            rel = path.relative_to(exp.sweep_dir).as_posix()
            if not logs and rel in LOGS:
                continue
            st = path.stat()
            version = (st.st_size, st.st_mtime_ns)
            if pushed.get(rel) == version:
                continue
            target = f"{root.rstrip('/')}/{rel}"
            if rel.split("/", 1)[0] in WRITE_ONCE:
                info = fs.get_file_info(target)
                if info.type == pafs.FileType.File and info.size == st.st_size:
                    pushed[rel] = version
                    continue
            pafs.copy_files(str(path), target, source_filesystem=local, destination_filesystem=fs)
            pushed[rel] = version
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
        target = contained(exp.sweep_dir, rel)  # a bucket key may hold ".." (_paths)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)

        def copy(tmp: str, source: str = info.path) -> None:
            pafs.copy_files(source, tmp, source_filesystem=fs, destination_filesystem=local)

        # never a half-copied file under its name; sweep.json and the outbox as the driver
        # writes them (outbox.PRIVATE)
        atomic_write(target, copy, mode=PRIVATE if rel in PRIVATE_FILES else None)
        copied += 1
    return copied


def push_or_warn(exp: Experiment, logs: bool = True) -> None:
    """``push``, reporting a failed copy instead of raising: the sweep goes on, and the next
    push (after the next trial, or at the end) copies what is left."""
    try:
        push(exp, logs)
    except OSError as err:
        driver_output.warn(
            f"orchestrator.sweep: could not mirror {exp.sweep_dir} to {mirror_uri(exp)}: {err}"
        )


class _Pusher:
    """The pushes asked for by Tune's loop, made on a thread of their own (a copy to a bucket
    takes its time, and the loop starts the next trial): requests made while one runs become
    one more push, never a queue."""

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._exp: Experiment | None = None
        self._thread: threading.Thread | None = None

    def request(self, exp: Experiment) -> None:
        self._exp = exp
        self._wanted.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mirror", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            push_or_warn(self._exp, logs=False)


_PUSHER = _Pusher()


class DriverMirror(Callback):
    """Tune callback: push the mirror after every finished trial (the tables have changed), in
    the background (:class:`_Pusher`); the driver pushes once more, with ``ray.log``, at the
    end."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        _PUSHER.request(self.exp)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        _PUSHER.request(self.exp)
