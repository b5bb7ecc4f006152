"""Files the orchestrator writes are whole or absent: a crash mid-write never leaves a file that
is read back as valid (the previous version stays, or the reader refuses it).

Crashes are simulated by making the writer raise after it has written part of its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from orchestrator import checkpoint, outbox, pareto


def _rows(n: int) -> list[dict]:
    return [
        {
            "trial_id": f"t{i}",
            "status": "TERMINATED",
            "fully_trained": True,
            "top1": 90.0 + i,
            "macs": 1000 * (i + 1),
            "macs_ratio": 0.2 * (i + 1),
            "params": 10,
            "throughput": 1.0,
            "pruned_top1": 50.0,
            "iterations": 3,
            "run_id": f"r{i}",
            "error": None,
        }
        for i in range(n)
    ]


def test_tables_and_plot_survive_a_crash_mid_write(tmp_path, monkeypatch):
    import matplotlib.figure

    pareto.write_tables(pareto.trials_table(_rows(2)), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {
        "trials.parquet",
        "pareto.parquet",
        "pareto.png",
        "pareto.csv",
        "pareto.html",
    }

    def torn_parquet(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half a table")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", torn_parquet)
    with pytest.raises(OSError):
        pareto.write_tables(pareto.trials_table(_rows(3)), tmp_path)
    monkeypatch.undo()

    def torn_png(self, where, **kw):
        Path(where).write_bytes(b"\x89PNG half an image")
        raise OSError("killed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", torn_png)
    with pytest.raises(OSError):
        pareto.plot(
            pareto.trials_table(_rows(3)),
            pareto.front_table(pareto.trials_table(_rows(3))),
            tmp_path / "pareto.png",
        )
    monkeypatch.undo()
    for name, data in before.items():  # the previous versions, byte for byte
        assert (tmp_path / name).read_bytes() == data, name
    assert pq.read_table(tmp_path / "trials.parquet").num_rows == 2


def test_outbox_is_compacted_whole_and_ignores_a_torn_line(tmp_path, monkeypatch):
    box = outbox.Outbox(tmp_path)
    box.append({"op": "start", "trial": "a"})
    box.append({"op": "result", "trial": "a", "result": {"top1": float("nan"), "x": 1}})
    assert [op["op"] for op in box.pending()] == ["start", "result"]

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)  # compaction (after a partial replay) is atomic
    with pytest.raises(OSError):
        box.replace([{"op": "complete", "trial": "a"}])
    monkeypatch.undo()
    assert [op["op"] for op in box.pending()] == ["start", "result"]  # old version intact
    assert [p.name for p in tmp_path.iterdir()] == [outbox.OUTBOX]  # no temporary file left
    with box.path.open("a") as f:  # a torn append (killed mid-write): never parsed as an op
        f.write('{"op": "comp')
    assert [op["op"] for op in box.pending()] == ["start", "result"]
    box.append({"op": "complete", "trial": "a"})  # starts a line of its own
    assert [op["op"] for op in box.pending()] == ["start", "result", "complete"]


@pytest.mark.parametrize("form", ["bytes", "writer"])
def test_atomic_write_failing_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, form):
    from orchestrator._atomic import atomic_write

    target = tmp_path / "table.parquet"
    atomic_write(target, b"old")
    assert target.read_bytes() == b"old"

    def torn(path: str) -> None:
        Path(path).write_bytes(b"half of the n")
        raise OSError("disk full")

    def killed(src, dst) -> None:
        raise OSError("killed before the rename")

    if form == "bytes":  # the rename never happens: the process dies between write and rename
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "replace", killed)
            with pytest.raises(OSError):
                atomic_write(target, b"new")
    else:
        with pytest.raises(OSError):
            atomic_write(target, torn)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
    atomic_write(target, lambda p: Path(p).write_bytes(b"new"), mode=0o600)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o600


def test_one_atomic_write_for_prune_core_and_the_orchestrator():
    """prune_core's implementation is the orchestrator's too (loaded without importing torch
    where prune_core was not imported yet)."""
    import prune_core._atomic
    from orchestrator import _atomic

    assert _atomic.atomic_write is prune_core._atomic.atomic_write


def _checkpoint(directory: Path, epoch: int) -> Path:
    d = directory / f"checkpoint_{epoch:06d}"
    d.mkdir(parents=True)
    reporter = checkpoint.Reporter('{"plan": 1}', {"macs": 5}, [{"step": 0, "loss": 1.0}])
    reporter.write(
        d, {"epoch": epoch}, {checkpoint.STATE: {"model": {"w": torch.ones(64)}, "epoch": epoch}}
    )
    return d


@pytest.mark.parametrize("damage", ["truncate", "missing", "torn_meta"])
def test_half_copied_checkpoint_is_never_resumed_from(tmp_path, damage):
    from ray import tune

    older = _checkpoint(tmp_path, 1)
    newer = _checkpoint(tmp_path, 2)
    state = newer / checkpoint.STATE
    if damage == "truncate":  # the copy into storage was cut short
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "missing":  # killed before the weights were copied at all
        state.unlink()
    else:
        (newer / checkpoint.META).write_text('{"summary": {"macs"')
    with pytest.raises((OSError, ValueError, RuntimeError, KeyError)):
        checkpoint.read_checkpoint(newer)
    saved = checkpoint.restore(tune.Checkpoint.from_directory(str(older)))
    assert saved["result"] == {"epoch": 1} and saved["unreported"] == []
    assert saved[checkpoint.STATE]["epoch"] == 1


def test_intact_newer_checkpoint_is_preferred(tmp_path):
    """And every checkpoint newer than Tune's comes back, oldest first, to be reported again
    in order (a driver killed after a trial's last epochs: Tune's snapshot had only the
    first; re-reporting the newest alone gave the final result an earlier epoch's number)."""
    from ray import tune

    older = _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 3)
    saved = checkpoint.restore(tune.Checkpoint.from_directory(str(older)))
    assert saved["result"] == {"epoch": 3}
    assert [old["result"] for old in saved["unreported"]] == [{"epoch": 2}, {"epoch": 3}]
    assert [old[checkpoint.STATE]["epoch"] for old in saved["unreported"]] == [2, 3]
    entry = json.loads((older / checkpoint.META).read_text())["files"][checkpoint.STATE]
    assert entry["size"] == (older / checkpoint.STATE).stat().st_size
    assert entry["sha256"] == hashlib.sha256((older / checkpoint.STATE).read_bytes()).hexdigest()


def _flip_one_byte(path: Path) -> None:
    """Same size, one bit changed: what a bad disk or an overwritten bucket object leaves."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_checkpoint_whose_sha256_differs_falls_back_to_the_older_kept_one(tmp_path, capsys):
    from ray import tune

    _checkpoint(tmp_path, 1)
    newer = _checkpoint(tmp_path, 2)
    _flip_one_byte(newer / checkpoint.STATE)
    with pytest.raises(ValueError, match="sha256 differs"):
        checkpoint.read_checkpoint(newer)
    saved = checkpoint.restore(tune.Checkpoint.from_directory(str(newer)))
    assert saved["result"] == {"epoch": 1} and saved["unreported"] == []
    assert saved[checkpoint.STATE]["epoch"] == 1
    err = capsys.readouterr().err
    assert f"checkpoint {newer} rejected" in err and "sha256 differs" in err


def test_no_intact_checkpoint_means_the_trial_starts_over(tmp_path, capsys):
    from ray import tune

    older, newer = _checkpoint(tmp_path, 1), _checkpoint(tmp_path, 2)
    _flip_one_byte(older / checkpoint.PLAN)
    _flip_one_byte(newer / checkpoint.STATE)
    assert checkpoint.restore(tune.Checkpoint.from_directory(str(newer))) is None
    err = capsys.readouterr().err
    assert err.count("rejected") == 2 and "the trial starts over" in err


def test_a_manifest_from_before_the_sha256_is_checked_by_size(tmp_path):
    d = _checkpoint(tmp_path, 1)
    meta = json.loads((d / checkpoint.META).read_text())
    meta["files"] = {name: e["size"] for name, e in meta["files"].items()}
    (d / checkpoint.META).write_text(json.dumps(meta))
    assert checkpoint.read_checkpoint(d)[checkpoint.STATE]["epoch"] == 1
    (d / checkpoint.PLAN).write_text("{}")
    with pytest.raises(ValueError, match="missing or truncated"):
        checkpoint.read_checkpoint(d)


def test_a_manifest_naming_a_path_outside_the_checkpoint_is_refused(tmp_path):
    d = _checkpoint(tmp_path, 1)
    (tmp_path / "outside.pt").write_bytes(b"x")
    meta = json.loads((d / checkpoint.META).read_text())
    meta["files"]["../outside.pt"] = {"size": 1}
    (d / checkpoint.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a plain name"):
        checkpoint.read_checkpoint(d)
