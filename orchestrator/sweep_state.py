"""What a sweep folder holds that a later run must find again: ``sweep.json`` (the parent MLflow
run and its tracking URI, written once, atomically, readable by its owner only, credentials
masked) and Tune's experiment state (whether there is a sweep to ``--resume``). Neither needs
Tune or MLflow imported to answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    files = {}
    if exp.model.source == "hf":  # what pick rebuilds the model from (no path read back)
        from orchestrator import hf_model

        files[hf_model.CONFIG_ARTIFACT] = hf_model.config_dict(exp.model.name)
    parent = tracking.start_parent(
        uri,
        exp_id,
        exp.name,
        exp.model_dump(mode="json"),
        space_mod.describe(exp.tunable_sections),
        files,
    )
    state = {"parent_run_id": parent, "tracking_uri": redact(uri), "experiment_id": exp_id}
    state["config"] = started_config(exp)  # what --resume compares the file with
    atomic_write(state_file, json.dumps(state, indent=1), mode=PRIVATE)
    return parent, True


def started_config(exp: Experiment) -> dict:
    """The experiment as ``sweep.json`` keeps it: JSON, credentials masked (as the parent's
    ``config.json``)."""
    return redact(exp.model_dump(mode="json"))


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(exp: Experiment) -> dict[str, tuple]:
    """Dotted field -> (value the sweep started with, value now) for every field the file
    changed since the sweep started (``sweep.json``; both sides masked alike). A field the
    started config lacks (a setting added to the schema since) is no change; a sweep.json
    without a config (from before this check) gives none."""
    state_file = exp.sweep_dir / SWEEP_STATE
    if not state_file.is_file():
        return {}
    before = json.loads(state_file.read_text()).get("config")
    if before is None:
        return {}
    old, new = _flat(redact(before)), _flat(started_config(exp))
    return {
        k: (old[k], new.get(k))
        for k in sorted(old.keys() | new.keys())
        if k in old and old[k] != new.get(k)
    }


def record_changes(exp: Experiment, uri: str, parent: str, changes: dict[str, tuple]) -> None:
    """``--resume --accept-changes``: the changes on the parent run (a ``config_changes`` tag
    listing the fields, the values in a ``config_changes.json`` artifact, appended to any
    earlier one) and the new config in ``sweep.json``, which the next ``--resume`` compares
    with."""
    import tempfile
    import time

    from orchestrator import tracking  # here: it loads MLflow
    from orchestrator.mlflow_limits import fit_tags

    c = tracking.client(uri)
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "changes": {
            k: {"started": a, "now": b} for k, a, b in ((k, *v) for k, v in changes.items())
        },
    }
    history = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = c.download_artifacts(parent, "config_changes.json", tmp)
            history = json.loads(Path(got).read_text())
        except Exception:  # any error, on purpose: none logged yet
            history = []
        (Path(tmp) / "config_changes.json").write_text(json.dumps(history + [entry], indent=1))
        c.log_artifact(parent, str(Path(tmp) / "config_changes.json"))
    for key, value in fit_tags({"config_changes": ", ".join(changes)}).items():
        c.set_tag(parent, key, value)
    state_file = exp.sweep_dir / SWEEP_STATE
    state = json.loads(state_file.read_text())
    state["config"] = started_config(exp)
    atomic_write(state_file, json.dumps(state, indent=1), mode=PRIVATE)


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
