"""One driver per sweep folder, and one first use of a shared SQLite store (orchestrator/lock.py).

The end-to-end case (a second ``python -m orchestrator.sweep`` of a running sweep) is in
test_orchestrator_interrupt.py; these check the lock's own promises with plain processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until, write_config

from orchestrator.lock import LOCK, OWNER, SweepBusy, SweepLock

HOLD = """
import sys, time
from orchestrator.lock import SweepLock
with SweepLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""

TRY = """
import sys
from orchestrator.lock import SweepBusy, SweepLock
try:
    with SweepLock(sys.argv[1]):
        print("acquired")
except SweepBusy as err:
    print(err)
"""


def python(code: str, *args: str, **kwargs):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        **kwargs,
    )


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    folder = tmp_path / "sweep"
    with SweepLock(folder):
        (folder / "teacher.pt").write_text("x")
        out = python(TRY, str(folder)).stdout.strip()
        assert out.startswith(f"{folder} is in use by another sweep driver (pid {os.getpid()} on ")
        assert out.endswith("); wait for it to end or stop it")
        with pytest.raises(SweepBusy):  # the same process, a second driver object: refused too
            SweepLock(folder).__enter__()
    assert python(TRY, str(folder)).stdout.strip() == "acquired"  # released at the end
    assert sorted(p.name for p in folder.iterdir()) == [LOCK, "teacher.pt"]  # record removed


def test_a_sigkilled_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"(pid {holder.pid} on " in python(TRY, str(folder)).stdout
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait(timeout=30)
        assert python(TRY, str(folder)).stdout.strip() == "acquired"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_fresh_folder_nobody_wrote_into_is_removed(tmp_path):
    folder = tmp_path / "results" / "sweep"
    with SweepLock(folder):
        assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK, OWNER])
    assert not (tmp_path / "results").exists()  # with the parent it made for the folder
    folder.mkdir(parents=True)
    with SweepLock(folder):  # not created by the lock: left in place, even if empty
        pass
    assert folder.is_dir()


def test_concurrent_first_use_of_one_sqlite_store(tmp_path):
    """Four drivers meet a fresh SQLite tracking store at once: MLflow's schema migration
    runs once, under the lock, and every process can then use the store.

    A file barrier makes them race: each imports MLflow, says it is ready, and waits for "go",
    which the test gives only when all four are ready (a start time guessed in advance let a
    slow interpreter arrive after the others had finished).
    """
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from orchestrator.tracking import init_sqlite\n"
        "from mlflow import MlflowClient\n"
        "barrier = Path(sys.argv[2])\n"
        "(barrier / f'ready-{sys.argv[3]}').touch()\n"
        "while not (barrier / 'go').exists():\n"
        "    time.sleep(0.01)\n"
        "init_sqlite(sys.argv[1])\n"
        "MlflowClient(sys.argv[1]).create_experiment(sys.argv[3])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, str(barrier), f"sweep{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        wait_until(
            lambda: (
                len(list(barrier.glob("ready-*"))) == 4 or any(p.poll() is not None for p in procs)
            ),
            timeout=180,
            what="four drivers ready",
        )
        assert all(p.poll() is None for p in procs)  # all four wait at the barrier
        assert not (tmp_path / "results").exists()  # and none has touched the store yet
        (barrier / "go").touch()
        errors = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-1500:] for e in errors]
    from mlflow import MlflowClient

    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert names == {"Default", "sweep0", "sweep1", "sweep2", "sweep3"}
    assert Path(tmp_path / "results" / "mlflow.db.lock").exists()


def test_the_existing_sweep_check_agrees_with_tunes_can_restore(tmp_path, capsys):
    """The driver looks for Tune's state without importing Tune (~1 s before the teacher);
    it answers what ``Tuner.can_restore`` answers for a whole state and for none, but a 0-byte
    ``tuner.pkl`` (a Tuner build that failed: issue 26), which can_restore takes for a sweep,
    is none; ``--resume`` of nothing is refused."""
    import pickle

    from ray import tune

    from orchestrator.sweep import main
    from orchestrator.sweep_state import restorable

    folder = tmp_path / "results" / "s"
    folder.mkdir(parents=True)
    assert restorable(str(folder)) is tune.Tuner.can_restore(str(folder)) is False
    (folder / "tuner.pkl").write_bytes(b"")
    assert tune.Tuner.can_restore(str(folder)) is True and restorable(str(folder)) is False
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"a": 1}))
    assert restorable(str(folder)) is tune.Tuner.can_restore(str(folder)) is True
    assert restorable(f"file://{folder}") is True

    config = write_config(tmp_path, "fresh")
    assert main([str(config), "--resume"]) == 2
    assert "--resume: no sweep to resume in" in capsys.readouterr().err
    assert not (tmp_path / "results" / "fresh").exists()
