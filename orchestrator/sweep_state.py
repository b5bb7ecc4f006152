"""What a sweep folder holds that a later run must find again: ``sweep.json`` (the parent MLflow
run and its tracking URI, written once, atomically, readable by its owner only, credentials
masked) and Tune's experiment state (whether there is a sweep to ``--resume``). Neither needs
Tune or MLflow imported to answer."""

from __future__ import annotations

import json
import os

from orchestrator import space as space_mod
from orchestrator._atomic import atomic_write
from orchestrator._redact import redact
from orchestrator.outbox import PRIVATE
from orchestrator.schema import Experiment
from orchestrator.tracking import TrackingError

SWEEP_STATE = "sweep.json"  # parent run id and tracking URI, for --resume and report


def parent_run(exp: Experiment, uri: str) -> tuple[str, bool]:
    """The sweep's parent MLflow run, created once (True) or found again on --resume (False),
    through ``sweep.json``. TrackingError when a restored sweep is given another URI."""
    from orchestrator import tracking  # here: it loads MLflow

    state_file = exp.sweep_dir / SWEEP_STATE
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state["tracking_uri"] not in (uri, redact(uri)):  # stored redacted (before: whole)
            raise TrackingError(
                f"this sweep logs to {redact(state['tracking_uri'])}, not {redact(uri)} "
                "(a restored sweep keeps its tracking URI)"
            )
        tracking.reopen_parent(uri, state["parent_run_id"])
        return state["parent_run_id"], False
    artifact_root = (
        None if uri.startswith(("http:", "https:")) else (exp.sweep_dir.parent / "mlartifacts")
    )
    exp_id = tracking.experiment_id(uri, exp.tracking.experiment or exp.name, artifact_root)
    parent = tracking.start_parent(
        uri,
        exp_id,
        exp.name,
        exp.model_dump(mode="json"),
        space_mod.describe(exp.tunable_sections),
    )
    state = {"parent_run_id": parent, "tracking_uri": redact(uri), "experiment_id": exp_id}
    atomic_write(state_file, json.dumps(state, indent=1), mode=PRIVATE)
    return parent, True


TUNER_STATE = "tuner.pkl"  # Tune's Tuner, written as it is built (ray/tune/impl/tuner_internal.py)


def _tuner_file(path: str):
    """(pyarrow filesystem, path of ``tuner.pkl``) of the sweep at ``path`` (folder or URI)."""
    import pyarrow.fs  # here: a config error or --dry-run answers without it

    if "://" in path:
        fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
    else:
        fs, fs_path = pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    return fs, f"{fs_path.rstrip('/')}/{TUNER_STATE}"


def tuner_state(path: str) -> str:
    """``"none"`` (no ``tuner.pkl``), ``"torn"`` (empty or cut short: Tune creates the file,
    then pickles the Tuner into it, so a build that failed in between left 0 bytes) or
    ``"ok"`` (a whole pickle). Read with :mod:`pickletools`, which walks the opcodes to the
    STOP without running any of them: no import, no object is made (unpickling a bucket's
    file is ``--resume``'s to do, on purpose)."""
    import pickletools

    import pyarrow.fs

    fs, file = _tuner_file(path)
    if fs.get_file_info(file).type == pyarrow.fs.FileType.NotFound:
        return "none"
    with fs.open_input_stream(file) as f:
        data = f.read()
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # any error, on purpose: ValueError, EOFError, ... all mean cut short
        return "torn"
    return "ok" if ops and ops[-1][0].name == "STOP" else "torn"


def restorable(path: str) -> bool:
    """Whether ``path`` (a folder or a storage URI) holds a Tune experiment that can be
    restored: a whole ``tuner.pkl`` (:func:`tuner_state`; Tune's ``Tuner.can_restore`` only
    asks whether it exists, and a 0-byte one left by a failed start made the next start ask
    for ``--resume``, which died with EOFError), without importing Tune (~1 s) before the
    teacher starts."""
    return tuner_state(path) == "ok"


def discard_tuner(path: str) -> None:
    """Remove ``tuner.pkl`` of a start that failed before its first trial (a Tuner that could
    not be built): nothing is left that a rerun would take for a sweep to resume."""
    fs, file = _tuner_file(path)
    try:
        fs.delete_file(file)
    except (FileNotFoundError, OSError):
        pass
