"""storage.path: a local/NFS directory, s3:// or gs:// (Tune's storage_path; pyarrow resolves
it); anything else is refused with one line naming the field and the accepted forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import ROOT, error_of, minimal, run_sweep_cli, write_config

from orchestrator.config import parse_config


@pytest.mark.parametrize(
    "uri", ["s3://bucket/sweeps", "gs://bucket/team/sweeps/", "gcs://bucket/sweeps"]
)
def test_cloud_storage_goes_to_tune_driver_files_stay_local(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(minimal(storage={"path": uri, "local_dir": "state"}), "x.yaml")
    assert config.storage.is_uri
    assert config.storage_uri == uri.rstrip("/")
    assert config.tune_dir == f"{uri.rstrip('/')}/t"
    assert config.sweep_dir == tmp_path / "state" / "t"  # teacher, sweep.json, tables, outbox
    assert config.tracking_uri() == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"


def test_local_storage_is_absolute_and_shared_by_tune_and_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(minimal(storage={"path": "nfs/results"}), "x.yaml")
    assert not config.storage.is_uri
    assert config.storage_uri == str(tmp_path / "nfs" / "results")
    assert config.tune_dir == str(config.sweep_dir) == str(tmp_path / "nfs" / "results" / "t")


ALLOWED = "use a local/NFS path, s3://bucket/prefix or gs://bucket/prefix"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "hdfs://namenode/x",
            "experiments/x.yaml: storage.path: hdfs://namenode/x: unsupported scheme 'hdfs'; "
            + ALLOWED,
        ),
        (
            "http://host/x",
            "experiments/x.yaml: storage.path: http://host/x: unsupported scheme 'http'; "
            + ALLOWED,
        ),
        ("s3://", "experiments/x.yaml: storage.path: s3://: no bucket"),
    ],
)
def test_unsupported_storage_is_refused_with_one_line(path, expected):
    assert error_of(minimal(storage={"path": path})) == expected


def test_inputs_must_still_be_local(tmp_path):
    raw = minimal(data={"kind": "parquet", "train": "s3://b/train", "val": str(tmp_path)})
    assert error_of(raw) == (
        "experiments/x.yaml: data.train: s3://b/train: unsupported scheme "
        "'s3'; use only local or mounted (NFS) paths"
    )


def test_dry_run_shows_the_cloud_storage(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    raw["storage"] = {"path": "s3://my-bucket/sweeps", "local_dir": str(tmp_path / "state")}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_sweep_cli(path, "--dry-run", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "s3://my-bucket/sweeps/digits" in proc.stdout
    assert not Path(tmp_path / "state").exists()  # a dry run writes nothing


def test_storage_uri_options_stay_after_the_sweep_name():
    config = parse_config(
        minimal(
            storage={"path": "s3://bucket/sweeps/?endpoint_override=127.0.0.1:9000&scheme=http"}
        ),
        "x.yaml",
    )
    assert config.tune_dir == "s3://bucket/sweeps/t?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.sweep
def test_sweep_on_s3_compatible_storage(tmp_path):
    """A real sweep whose Tune storage is S3 (moto's server on loopback, via pyarrow)."""
    moto_server = pytest.importorskip("moto.server")
    import json
    import os

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        query = f"endpoint_override={host}:{port}&scheme=http&allow_bucket_creation=true"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ.setdefault(key, env[key])
        s3 = pafs.S3FileSystem(
            endpoint_override=f"{host}:{port}",
            scheme="http",
            allow_bucket_creation=True,
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )
        s3.create_dir("sweeps")
        config = write_config(
            tmp_path,
            "ons3",
            finetune={"epochs": 1},
            search={"target": 0.5},
            storage={
                "path": f"s3://sweeps/results?{query}",
                "local_dir": str(tmp_path / "results"),
            },
            sweep={"num_samples": 2, "max_concurrent_trials": 2, "asha": None, "max_failures": 0},
        )
        proc = run_sweep_cli(config, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        local = tmp_path / "results" / "ons3"
        trials = pq.read_table(local / "trials.parquet").to_pylist()
        assert len(trials) == 2 and all(t["fully_trained"] for t in trials)
        stored = [
            f.path
            for f in s3.get_file_info(pafs.FileSelector("sweeps/results/ons3", recursive=True))
        ]
        for t in trials:  # Tune's results and every checkpoint live in the bucket
            assert f"sweeps/results/ons3/trial_{t['trial_id']}/result.json" in stored
            assert any(
                p.startswith(f"sweeps/results/ons3/trial_{t['trial_id']}/checkpoint_")
                and p.endswith("weights.pt")
                for p in stored
            )
        assert not list(local.glob("trial_*"))  # nothing of Tune's on the local disk
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
        parent = json.loads((local / "sweep.json").read_text())["parent_run_id"]
        for run in client.search_runs(
            [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
        ):
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"plan.json", "weights.pt"} <= names  # fetched back from the bucket

        # The head dies with its disk: a new head resumes from the bucket alone (the driver's
        # files come back from the mirror; the teacher is not retrained, the parent run stays).
        mirrored = {
            f.path
            for f in s3.get_file_info(
                pafs.FileSelector("sweeps/results/ons3.driver", recursive=True)
            )
        }
        assert {
            "sweeps/results/ons3.driver/sweep.json",
            "sweeps/results/ons3.driver/trials.parquet",
        } <= mirrored
        assert any(p.startswith("sweeps/results/ons3.driver/teacher/") for p in mirrored)
        import shutil

        shutil.rmtree(local)
        proc = run_sweep_cli(config, "--resume", timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "driver files from s3://sweeps/results/ons3.driver" in proc.stdout
        assert "teacher epoch" not in proc.stdout + proc.stderr
        assert json.loads((local / "sweep.json").read_text())["parent_run_id"] == parent
        assert len(pq.read_table(local / "trials.parquet").to_pylist()) == 2
    finally:
        server.stop()
