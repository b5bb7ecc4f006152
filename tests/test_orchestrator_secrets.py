"""A password in ``tracking.uri`` is used to connect and never stored, logged or printed.

``tracking.uri: http://sweeper:${TRACKING_PW}@host:port`` is expanded from the environment
(config.py). The sweep below talks to a real ``mlflow server`` through a proxy that refuses
every request without that password (so the driver must use the real URI everywhere), then
the secret is looked for in every file of the sweep's storage folder, in everything the
server stored (its database and artifact folder: params, tags, ``config.json``, tables), and
in every line the driver wrote. The same with the server down (the one-line error), and in
``--dry-run``. ``sweep.json`` (it names the tracking server and the parent run) is 0600; the
rest of the folder follows the umask.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pickle
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import (
    MlflowServer,
    children,
    error_of,
    free_port,
    minimal,
    sweep_cmd,
    write_config,
)

from orchestrator.config import load_config
from orchestrator.outbox import Outbox
from orchestrator.tracking import TrackingError

SECRET = "s3cr3t-XYZ"  # what TRACKING_PW holds
USER = "sweeper"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # MLflow's SQLAlchemy
URI_TEMPLATE = "http://" + USER + ":${TRACKING_PW}@127.0.0.1:{port}"


class AuthProxy:
    """Forwards to the MLflow server only requests that carry ``USER:SECRET`` (HTTP basic
    auth, as a client sends it for a URI with userinfo); any other request gets 401."""

    def __init__(self, upstream_port: int) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.headers.get("Authorization") != expected:
                    proxy.refused += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "authorization", "connection")
                }
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    data = reply.read()
                finally:
                    conn.close()
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def files_holding(root: Path, secret: str) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and secret.encode() in p.read_bytes()
    )


def small(tmp: Path, name: str, uri: str) -> Path:
    return write_config(
        tmp,
        name,
        teacher={"epochs": 1, "lr": 0.003},
        search={"target": 0.5, "steps": 4, "sim_every": 2},
        finetune={"epochs": 1},
        sweep={"num_samples": 1, "max_concurrent_trials": 1, "sampler": "random", "asha": None},
        tracking={"uri": uri, "experiment": "secrets"},
    )


@pytest.mark.sweep
def test_a_password_in_the_tracking_uri_is_used_but_never_stored_or_printed(tmp_path):
    from mlflow import MlflowClient

    server_root = tmp_path / "server"
    server_root.mkdir()
    server = MlflowServer(server_root)
    server.start()
    proxy = AuthProxy(server.port)
    try:
        server.wait_up()
        config = small(tmp_path, "secret", URI_TEMPLATE.replace("{port}", str(proxy.port)))
        env = {**os.environ, "TRACKING_PW": SECRET}
        dry = subprocess.run(
            sweep_cmd(config, "--dry-run"),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert SECRET not in dry.stdout + dry.stderr
        assert f"{USER}:***@127.0.0.1:{proxy.port}" in dry.stdout  # redacted, still readable

        proc = subprocess.run(
            sweep_cmd(config), capture_output=True, text=True, env=env, timeout=600, check=False
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        assert proxy.refused == 0  # every request carried the password: the real URI was used
        leaks = [line for line in output.splitlines() if SECRET in line]
        assert not leaks, leaks

        results = tmp_path / "results"
        assert not files_holding(results, SECRET)  # sweep.json, ray.log, Tune's state, tables
        server.kill()  # its database settled: params, tags, artifacts (config.json, tables)
        assert not files_holding(server_root, SECRET)

        server.start()
        server.wait_up()
        client = MlflowClient(server.uri)
        state = json.loads((results / "secret" / "sweep.json").read_text())
        redacted = f"http://{USER}:***@127.0.0.1:{proxy.port}"
        assert state["tracking_uri"] == redacted
        parent = client.get_run(state["parent_run_id"])
        assert parent.data.params["tracking.uri"] == redacted
        assert parent.info.status == "FINISHED"
        assert len(children(client, state["parent_run_id"])) == 1

        # sweep.json names the tracking server and the parent run: the owner's only; the
        # folder and the other files follow the umask
        umask = os.umask(0)
        os.umask(umask)
        sweep_dir = results / "secret"
        assert stat.S_IMODE((sweep_dir / "sweep.json").stat().st_mode) == 0o600
        assert stat.S_IMODE(sweep_dir.stat().st_mode) == 0o777 & ~umask
        assert stat.S_IMODE((sweep_dir / "trials.parquet").stat().st_mode) == 0o666 & ~umask
    finally:
        proxy.close()
        server.kill()


def test_a_dead_tracking_server_is_one_line_without_the_password(tmp_path):
    uri = URI_TEMPLATE.replace("{port}", str(free_port()))
    config = small(tmp_path, "down", uri)
    proc = subprocess.run(
        sweep_cmd(config),
        capture_output=True,
        text=True,
        env={**os.environ, "TRACKING_PW": SECRET},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    port = uri.rsplit(":", 1)[1]
    assert line == (
        f"orchestrator.sweep: cannot reach the MLflow server at "
        f"http://{USER}:***@127.0.0.1:{port}: connection refused"
    )
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- fast checks
def test_the_parent_runs_params_and_config_json_hold_no_password(tmp_path):
    from mlflow import MlflowClient

    from orchestrator import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"tracking": {"uri": f"http://{USER}:{SECRET}@h:5000"}, "storage": {"path": "r"}}
    exp_id = tracking.experiment_id(store, "x", tmp_path / "artifacts")
    run_id = tracking.start_parent(store, exp_id, "x", config, [("search/target", "0.5")])
    client = MlflowClient(store)
    assert client.get_run(run_id).data.params["tracking.uri"] == f"http://{USER}:***@h:5000"
    saved = Path(client.download_artifacts(run_id, "config.json", str(tmp_path)))
    assert json.loads(saved.read_text())["tracking"]["uri"] == f"http://{USER}:***@h:5000"
    assert not files_holding(tmp_path, SECRET)


def test_tunes_pickled_logger_holds_no_password_yet_resumes_with_it(tmp_path):
    from orchestrator.trial_logger import TrialLogger

    real = f"http://{USER}:{SECRET}@127.0.0.1:5000"
    blob = pickle.dumps(TrialLogger(real, "parent", str(tmp_path), "t", []))  # as in tuner.pkl
    assert SECRET.encode() not in blob
    assert pickle.loads(blob).uri == real  # a driver given the URI (--resume) connects with it


def test_a_resumed_sweep_compares_the_uri_without_showing_the_password(tmp_path):
    from orchestrator.sweep_state import parent_run

    exp = load_config(write_config(tmp_path, "resumed", tracking={"uri": "sqlite:///x.db"}))
    exp.sweep_dir.mkdir(parents=True)
    (exp.sweep_dir / "sweep.json").write_text(
        json.dumps({"parent_run_id": "p", "tracking_uri": f"http://{USER}:***@a:5000"})
    )
    with pytest.raises(TrackingError) as info:
        parent_run(exp, f"http://{USER}:{SECRET}@b:5000")
    assert str(info.value) == (
        f"this sweep logs to http://{USER}:***@a:5000, not http://{USER}:***@b:5000 "
        "(a restored sweep keeps its tracking URI)"
    )


def test_credentials_in_the_storage_uri_are_refused_without_being_shown():
    """Tune keeps ``storage.path`` whole in its state (tuner.pkl): a credential there cannot
    be masked, so it is refused; pyarrow takes them from the environment or the role."""
    for path in (f"s3://AKIAEXAMPLE:{SECRET}@bucket/sweeps", f"gs://b/p?access_token={SECRET}"):
        message = error_of(minimal(storage__path=path))
        assert message.startswith("experiments/x.yaml: storage.path: ")
        assert "no credentials in the URI" in message and SECRET not in message


def test_the_outbox_is_created_for_its_owner_only(tmp_path):
    umask = os.umask(0o022)
    try:
        leftover = tmp_path / f".tracking-outbox.jsonl.{os.getpid()}.tmp"
        leftover.write_text("")  # a crash's temporary file, 0644: rewritten, not reused as is
        box = Outbox(tmp_path)
        box.append({"op": "start", "trial": "a", "config": {"search/lr": 0.1}})
        box.append({"op": "refresh"})
        assert stat.S_IMODE(box.path.stat().st_mode) == 0o600
        assert len(box.pending()) == 2
        (tmp_path / "table.parquet").write_bytes(b"x")  # the folder's other files: the umask
        assert stat.S_IMODE((tmp_path / "table.parquet").stat().st_mode) == 0o644
    finally:
        os.umask(umask)


def test_files_pulled_back_from_the_bucket_keep_their_modes(tmp_path, monkeypatch):
    """``--resume`` on a new head: sweep.json and the outbox come back 0600, the rest as the
    umask makes them (the bucket is a local folder here)."""
    import pyarrow.fs as pafs

    from orchestrator import mirror

    remote = tmp_path / "bucket"
    (remote / "teacher").mkdir(parents=True)
    for name in ("sweep.json", "tracking-outbox.jsonl", "trials.parquet", "teacher/teacher.json"):
        (remote / name).write_text("{}")
        (remote / name).chmod(0o644)
    monkeypatch.setattr(mirror, "_remote", lambda uri: (pafs.LocalFileSystem(), str(remote)))
    exp = load_config(
        write_config(
            tmp_path, "pulled", storage={"path": "s3://b/p", "local_dir": str(tmp_path / "r")}
        )
    )
    umask = os.umask(0o022)
    try:
        assert mirror.pull(exp) == 4
    finally:
        os.umask(umask)
    modes = {
        p.relative_to(exp.sweep_dir).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in exp.sweep_dir.rglob("*")
        if p.is_file()
    }
    assert modes == {
        "sweep.json": 0o600,
        "tracking-outbox.jsonl": 0o600,
        "trials.parquet": 0o644,
        "teacher/teacher.json": 0o644,
    }


def test_a_password_on_the_command_line_is_warned_about_and_masked(tmp_path, capsys):
    from orchestrator.sweep import main

    config = small(tmp_path, "flag", "sqlite:///unused.db")
    uri = f"http://{USER}:{SECRET}@127.0.0.1:5000"
    assert main([str(config), "--dry-run", "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert f"http://{USER}:***@127.0.0.1:5000" in out
    assert "--tracking-uri holds a credential, which `ps` shows every local user" in err
