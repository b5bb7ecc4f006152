"""A sweep stopped with Ctrl-C, and a second driver started on the same folder (issue 12).

One real sweep (Ray local, 2 CPUs, tiny budgets) serves both: while it trains its teacher a
second driver of the same file is started and must be refused at once; once a trial has
finished, the first driver gets SIGINT as a terminal's Ctrl-C sends it (to its whole process
group). Tune traps that signal and returns normally, which the driver used to report as
success ("2 trials (0 failed)", exit 0, parent run FINISHED with trials pending).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import (
    TARGET_RANGE,
    children,
    kill_group,
    mlflow_client,
    random_sweep,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.sweep, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _finished(sweep_dir) -> list[str]:
    try:
        rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    except (OSError, ValueError):  # not there yet, or being replaced
        return []
    return [r["trial_id"] for r in rows if r["status"] == "TERMINATED"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupt")
    config = write_config(
        tmp,
        "stop",
        search=TARGET_RANGE,
        sweep=random_sweep(2, concurrent=1, max_failures=0),
    )
    sweep_dir = tmp / "results" / "stop"
    cmd = [sys.executable, "-m", "orchestrator.sweep", str(config)]
    log = (tmp / "first.log").open("w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    watch = {"proc": first, "log": tmp / "first.log"}
    try:
        wait_until((sweep_dir / ".driver.json").is_file, timeout=400,
                   what="the first driver owns the folder", **watch)  # fmt: skip
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        # one trial done and the next one running (its folder exists): a trial is cut short
        wait_until(lambda: _finished(sweep_dir) and len(list(sweep_dir.glob("trial_*"))) >= 2,
                   timeout=400, what="a trial finished and the next one running",
                   **watch)  # fmt: skip
        finished_before = _finished(sweep_dir)
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the terminal
        code = first.wait(timeout=300)
    finally:
        if first.poll() is None:
            kill_group(first.pid)
            first.wait()
    state = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow_client(tmp)
    parent_status = client.get_run(state["parent_run_id"]).info.status
    resumed = subprocess.run(
        cmd + ["--resume"], capture_output=True, text=True, timeout=600, check=False
    )
    return {
        "tmp": tmp,
        "dir": sweep_dir,
        "config": config,
        "first_pid": first.pid,
        "code": code,
        "log": (tmp / "first.log").read_text(),
        "second": second,
        "finished_before": finished_before,
        "parent_status": parent_status,
        "parent_id": state["parent_run_id"],
        "resumed": resumed,
    }


def test_a_second_driver_on_the_same_folder_is_refused_with_one_line(stopped):
    second = stopped["second"]
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    holder = f"pid {stopped['first_pid']} on {socket.gethostname()}, since "
    pattern = (
        re.escape(f"{stopped['config']}: {stopped['dir']} is in use by another sweep driver ")
        + re.escape(f"({holder}")
        + r"\d\d:\d\d:\d\d"
        + re.escape("); wait for it to end or stop it")
    )
    assert re.fullmatch(pattern, lines[0]), lines
    assert "teacher" not in second.stdout  # it trained nothing, started no Ray
    assert stopped["log"].count("teacher: ") == 1


def test_ctrl_c_exits_130_and_says_how_to_resume(stopped):
    assert stopped["code"] == 130, stopped["log"][-4000:]
    ours = [x for x in stopped["log"].splitlines() if x.startswith("orchestrator.sweep: ")]
    assert ours == [  # Ray's forwarded worker logs may come after it: not the last line
        "orchestrator.sweep: interrupted; resume with: python -m orchestrator.sweep "
        f"{stopped['config']} --resume"
    ]
    assert " complete, " not in stopped["log"]  # the success line is not printed
    assert "MLflow: parent run" not in stopped["log"]  # nor, after it, where to look
    assert len(stopped["finished_before"]) == 1


def test_ctrl_c_leaves_the_parent_run_killed(stopped):
    assert stopped["parent_status"] == "KILLED"


def test_resume_after_ctrl_c_finishes_the_sweep(stopped):
    resumed = stopped["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    trials = pq.read_table(stopped["dir"] / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t["status"] == "TERMINATED" for t in trials)
    assert set(stopped["finished_before"]) <= {t["trial_id"] for t in trials}
    client = mlflow_client(stopped["tmp"])
    assert client.get_run(stopped["parent_id"]).info.status == "FINISHED"
    runs = children(client, stopped["parent_id"])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(t["trial_id"] for t in trials)
    for run in runs:  # every epoch once, the interrupted trial's too
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "top1_pct")]
        assert steps == [1, 2, 3], (run.data.tags["trial_id"], steps)
    assert not (stopped["dir"] / ".driver.json").exists()  # the lock's record goes with it
