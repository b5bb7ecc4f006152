"""storage.path: a local/NFS directory, s3:// or gs:// (Tune's storage_path; pyarrow resolves
it); anything else is refused with one line naming the field and the accepted forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_orchestrator_config import ROOT, error_of, minimal

from orchestrator.config import parse_config


@pytest.mark.parametrize("uri", ["s3://bucket/sweeps", "gs://bucket/team/sweeps/",
                                 "gcs://bucket/sweeps"])
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


@pytest.mark.parametrize(("path", "expected"), [
    ("hdfs://namenode/x", "experiments/x.yaml: storage.path: hdfs://namenode/x: unsupported "
     "scheme 'hdfs'; use a local/NFS path, s3://bucket/prefix or gs://bucket/prefix"),
    ("http://host/x", "experiments/x.yaml: storage.path: http://host/x: unsupported scheme "
     "'http'; use a local/NFS path, s3://bucket/prefix or gs://bucket/prefix"),
    ("s3://", "experiments/x.yaml: storage.path: s3://: no bucket"),
])
def test_unsupported_storage_is_refused_with_one_line(path, expected):
    assert error_of(minimal(storage={"path": path})) == expected


def test_inputs_must_still_be_local(tmp_path):
    raw = minimal(data={"kind": "parquet", "train": "s3://b/train", "val": str(tmp_path)})
    assert error_of(raw) == ("experiments/x.yaml: data.train: s3://b/train: unsupported scheme "
                             "'s3'; use only local or mounted (NFS) paths")


def test_dry_run_shows_the_cloud_storage(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    raw["storage"] = {"path": "s3://my-bucket/sweeps", "local_dir": str(tmp_path / "state")}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "s3://my-bucket/sweeps/digits" in proc.stdout
    assert not Path(tmp_path / "state").exists()  # a dry run writes nothing
