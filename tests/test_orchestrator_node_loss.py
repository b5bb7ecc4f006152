"""A worker node lost mid-sweep on a real multi-node Ray cluster (issue 12): nothing may be lost.

``ray.cluster_utils.Cluster`` starts a head (0 CPUs: it holds the GCS, the driver and its
objects, never a trial) and two 1-CPU worker nodes on this machine; the storage path is a local
folder every node sees. The real driver joins it (``--address``) and runs 2 trials, one per
worker node. When a trial has reported fine-tune epoch 1 (and checkpointed it) it stalls
(``ORCHESTRATOR_FAULTS``, see orchestrator/faults.py), and the test removes the node its worker
runs on: its raylet and agents SIGKILLed, its workers dying with the raylet, as when a machine
is lost. Then:

- the driver exits 0, every trial finishes exactly once (``trials.parquet``: TERMINATED and
  fully trained, no trial id twice);
- the trial of the lost node resumes on the other node from its last checkpoint: no second
  search, epochs 0..3 each reported once (Tune's result.json), reported by a worker of the
  surviving node;
- MLflow lost and duplicated nothing: one FINISHED child run per trial, each with top-1 at steps
  1..4, the parent run FINISHED.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    TARGET_RANGE,
    children,
    fault_rules,
    kill_group,
    mlflow_client,
    random_sweep,
    tune_results,
    wait_until,
    write_config,
)

from orchestrator import faults

pytestmark = [pytest.mark.sweep, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

NUM_SAMPLES = 2


# ----------------------------------------------------------------------------- processes
def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc; Ray's tests run on Linux only)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:  # ended meanwhile
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # comm may hold spaces
    return out


def _ancestors(pid: int, parents: dict[int, int]) -> list[int]:
    chain = [pid]
    while chain[-1] in parents and parents[chain[-1]] > 1:
        chain.append(parents[chain[-1]])
    return chain


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _node_of(pid: int, nodes: list) -> object:
    """The cluster node whose raylet started the worker ``pid`` (its parent chain)."""
    chain = _ancestors(pid, _parents())
    owners = [n for n in nodes if _raylet_pid(n) in chain]
    assert len(owners) == 1, f"worker {pid} (chain {chain}) is under {len(owners)} raylets"
    return owners[0]


def _workers_of(node) -> set[int]:
    """Every process below the node's raylet now (its Ray workers among them)."""
    raylet, parents = _raylet_pid(node), _parents()
    return {pid for pid in parents if raylet in _ancestors(pid, parents)[1:]}


def _tail(*paths: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in paths if p.is_file())


# ----------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def node_loss(tmp_path_factory):
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("node_loss")
    rules = fault_rules(tmp, {"point": "epoch_end", "epoch": 1, "action": "stall", "seconds": 300})
    config = write_config(
        tmp,
        "nodeloss",
        seed=1,
        finetune={"epochs": 3},
        search=TARGET_RANGE,
        sweep=random_sweep(NUM_SAMPLES, concurrent=2, max_failures=2),
        # num_cpus only sizes a Ray started locally; the joined cluster has 1 CPU per worker
        resources={"num_cpus": None, "cpus_per_trial": 1, "teacher_cpus": 1, "torch_threads": 1},
    )
    sweep_dir = tmp / "results" / "nodeloss"
    logs = (tmp / "driver.log", sweep_dir / "ray.log")
    cluster, driver = None, None
    with pytest.MonkeyPatch.context() as mp:
        # Cluster writes its address to /tmp/ray/ray_current_cluster, where any plain
        # ray.init() on this machine (another sweep test running meanwhile) would find it and
        # join this cluster instead of starting its own; the driver gets --address anyway.
        mp.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        mp.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
        # A Ray worker inherits its raylet's environment, not the driver's: the nodes started
        # here must carry the fault rules.
        mp.setenv(faults.ENV, str(rules))
        try:
            cluster = Cluster(
                initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
            )
            workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
            cluster.wait_for_nodes()
            log = logs[0].open("w")
            driver = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.sweep", str(config)]
                + ["--address", cluster.address],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stall = rules.with_name("fired-0.json")
            # written after the epoch's report and checkpoint, just before the stall: the
            # node is lost mid-trial, past its report
            fired = wait_until(lambda: json.loads(stall.read_text()), timeout=400, every=0.3,
                               what="a trial reached the stall", proc=driver,
                               log=logs[0])  # fmt: skip
            lost = _node_of(fired["pid"], workers)
            (kept,) = [n for n in workers if n is not lost]
            removed_at = time.monotonic()
            # SIGKILL, no SIGTERM: a machine lost, not drained (the GCS then marks the node
            # dead by missed heartbeats; a graceful removal passed the same test)
            cluster.remove_node(lost, allow_graceful=False)
            seen: set[int] = set()  # every process the surviving node ran after the loss
            while driver.poll() is None:
                assert time.monotonic() < removed_at + 400, "the driver did not finish"
                seen |= _workers_of(kept)
                time.sleep(0.3)
            code = driver.returncode
            print(f"driver ended {time.monotonic() - removed_at:.1f} s after the node loss")
        finally:
            if driver is not None and driver.poll() is None:
                kill_group(driver.pid)
                driver.wait()
            if cluster is not None:
                cluster.shutdown()
    return {
        "tmp": tmp,
        "dir": sweep_dir,
        "code": code,
        "fired": fired,
        "kept": seen,
        "log": _tail(*logs),
        "driver_log": logs[0].read_text(),
    }


def _runs_by_trial(node_loss) -> dict:
    state = json.loads((node_loss["dir"] / "sweep.json").read_text())
    runs = children(mlflow_client(node_loss["tmp"]), state["parent_run_id"])
    return {r.data.tags["trial_id"]: r for r in runs}


def test_sweep_survives_losing_a_worker_node(node_loss):
    assert node_loss["code"] == 0, node_loss["log"]
    trials = pq.read_table(node_loss["dir"] / "trials.parquet").to_pylist()
    assert len(trials) == NUM_SAMPLES
    assert len({t["trial_id"] for t in trials}) == NUM_SAMPLES
    assert all(t["status"] == "TERMINATED" and t["fully_trained"] for t in trials), trials
    assert node_loss["fired"]["trial_id"] in {t["trial_id"] for t in trials}
    retried = f"{node_loss['fired']['trial_id']} retrying from its last checkpoint"
    assert node_loss["driver_log"].count(retried) == 1, node_loss["driver_log"]


def test_trial_of_the_lost_node_resumes_on_the_other_from_its_checkpoint(node_loss):
    """One search, epochs 0..3 each reported once, one final result: nothing redone or lost."""
    stalled = node_loss["fired"]
    with pytest.raises(ProcessLookupError):
        os.kill(stalled["pid"], 0)  # the worker went with its node
    rows = tune_results(node_loss["dir"])[stalled["trial_id"]]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3], rows
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["phase"] for r in rows].count("search") == 1
    assert [r["phase"] for r in rows].count("done") == 1
    assert {r["pid"] for r in rows[:2]} == {stalled["pid"]}  # search and epoch 1: lost node
    assert {r["pid"] for r in rows[2:]} <= node_loss["kept"]  # epochs 2, 3: the other node


def test_mlflow_lost_and_duplicated_nothing(node_loss):
    client = mlflow_client(node_loss["tmp"])
    state = json.loads((node_loss["dir"] / "sweep.json").read_text())
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    runs = children(client, state["parent_run_id"])
    assert len(runs) == NUM_SAMPLES
    assert set(_runs_by_trial(node_loss)) == {
        p.name.removeprefix("trial_") for p in node_loss["dir"].glob("trial_*")
    }
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert run.data.metrics["fully_trained"] == 1.0
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "top1_pct")]
        assert steps == [1, 2, 3, 4], (run.data.tags["trial_id"], steps)
