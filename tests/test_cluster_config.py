"""cluster.yaml is valid for `ray up` (offline), runs only commands this project has, and lets
nobody in: nothing on all interfaces, Ray's token auth on every node, IMDSv2, roles of our own
whose policies (deploy/iam/) reach the project's bucket prefix only."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from helpers import ROOT

CONFIG = yaml.safe_load((ROOT / "cluster.yaml").read_text())
TEXT = (ROOT / "cluster.yaml").read_text()


def test_matches_the_schema_that_ships_with_ray() -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(CONFIG, json.loads(schema_path.read_text()))


def test_ray_accepts_it_after_merging_provider_defaults() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(dict(CONFIG)))


def test_a_typo_is_caught_by_the_same_check() -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    broken = dict(CONFIG, max_wrokers=3)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_path.read_text()))


def test_gpu_workers_and_a_trial_free_head() -> None:
    nodes = CONFIG["available_node_types"]
    assert nodes[CONFIG["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [n for name, n in nodes.items() if name != CONFIG["head_node_type"]]
    assert any(n["resources"].get("GPU", 0) >= 1 for n in workers)
    for n in nodes.values():  # the autoscaler rejects fractional resources
        assert all(isinstance(v, int) for v in n["resources"].values())


def test_mounted_project_is_what_the_setup_installs_at_the_locked_versions() -> None:
    ((remote, local),) = [(r, loc) for r, loc in CONFIG["file_mounts"].items() if loc == "."]
    assert (ROOT / local / "pyproject.toml").is_file()
    assert CONFIG["setup_commands"][:2] == [
        f"pip install -q -r {remote}/requirements-lock.txt",  # first: nothing resolves newer
        f"pip install -q --no-deps -e {remote}",
    ]


def test_the_image_runs_the_locked_ray_and_python() -> None:
    from orchestrator import versions

    image = CONFIG["docker"]["image"]
    assert image == f"rayproject/ray:{versions.locked()['ray']}-py311-gpu", image
    header = versions.LOCK.read_text().splitlines()[1]  # pip-compile names its Python
    assert header.endswith("with Python 3.11"), header


def test_every_python_module_it_names_exists() -> None:
    modules = set(re.findall(r"python -m ([\w.]+)", TEXT))
    assert "orchestrator.sweep" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_mlflow_server_flags_exist() -> None:
    # the server's command, not the pkill before it (which names no flag)
    (command,) = [c for c in CONFIG["head_start_ray_commands"] if "mlflow server --" in c]
    flags = set(re.findall(r"(--[a-z-]+)", command))
    mlflow = Path(sys.executable).parent / "mlflow"
    help_text = subprocess.run(
        [str(mlflow), "server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in flags:
        assert flag in help_text, flag


# ----------------------------------------------------------------------------- security
IAM = ROOT / "deploy" / "iam"
BUCKET, PREFIX = "YOUR-BUCKET", "flatten-prune"


def start_commands() -> list[tuple[str, str]]:
    """(node kind, command) for every `ray start` the cluster runs."""
    return [
        (kind, c)
        for kind in ("head_start_ray_commands", "worker_start_ray_commands")
        for c in CONFIG[kind]
        if re.search(r"\bray start\b", c)
    ]


def test_nothing_listens_on_all_interfaces() -> None:
    """ShadowRay (CVE-2023-48022): a dashboard / Jobs API on 0.0.0.0 runs anyone's code; the
    dashboard and MLflow bind the loopback and are reached through `ray dashboard` / `ray
    attach -p` tunnels."""
    assert "0.0.0.0" not in TEXT and "::/0" not in TEXT
    (head,) = [c for kind, c in start_commands() if kind == "head_start_ray_commands"]
    assert "--dashboard-host=127.0.0.1" in head
    (mlflow,) = [c for c in CONFIG["head_start_ray_commands"] if "mlflow server --" in c]
    assert re.search(r"--host[ =]127\.0\.0\.1\b", mlflow), mlflow


def test_every_node_starts_ray_with_token_auth_and_has_the_token() -> None:
    kinds = {kind for kind, _ in start_commands()}
    assert kinds == {"head_start_ray_commands", "worker_start_ray_commands"}
    for _, command in start_commands():
        assert command.startswith("RAY_AUTH_MODE=token ray start "), command
    # the driver and `ray exec` shells in the container connect with it too
    assert "--env RAY_AUTH_MODE=token" in CONFIG["docker"]["run_options"]
    # one token, made on the user's machine, at the path Ray reads on every node
    assert CONFIG["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_every_node_type_requires_imdsv2_and_wears_a_role_of_our_own() -> None:
    profiles = {}
    for name, node in CONFIG["available_node_types"].items():
        config = node["node_config"]
        assert config["MetadataOptions"]["HttpTokens"] == "required", name
        profiles[name] = config["IamInstanceProfile"]["Name"]  # never Ray's ray-autoscaler-v1
    head = CONFIG["head_node_type"]
    assert profiles.pop(head) == "flatten-prune-head"
    assert set(profiles.values()) == {"flatten-prune-worker"}


def _policy(name: str) -> dict:
    return json.loads((IAM / name).read_text())


def _statements(name: str) -> list[dict]:
    statements = _policy(name)["Statement"]
    return [statements] if isinstance(statements, dict) else statements


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("name", ["head-policy.json", "worker-policy.json"])
def test_role_policies_reach_the_projects_bucket_prefix_only(name: str) -> None:
    prefix = f"{PREFIX}/sweeps/" if name.startswith("worker") else f"{PREFIX}/"
    s3 = 0
    for st in _statements(name):
        actions, resources = _listed(st["Action"]), _listed(st["Resource"])
        assert st["Effect"] == "Allow" and "*" not in actions, st
        assert not any(a.endswith(":*") for a in actions), st  # no s3:*, ec2:*, iam:*
        if not any(a.startswith("s3:") for a in actions):
            continue
        s3 += 1
        assert all(a.startswith("s3:") for a in actions), st
        for resource in resources:
            assert resource != "*", st
            if resource == f"arn:aws:s3:::{BUCKET}":  # the bucket itself: listing, its region
                assert set(actions) <= {"s3:ListBucket", "s3:GetBucketLocation"}, st
                if "s3:ListBucket" in actions:
                    listed = st["Condition"]["StringLikeIfExists"]["s3:prefix"]
                    assert all(p.startswith(prefix) for p in _listed(listed)), st
            else:
                assert resource.startswith(f"arn:aws:s3:::{BUCKET}/{prefix}"), st
    assert s3 >= 2
    iam = [
        st for st in _statements(name) if any(a.startswith("iam:") for a in _listed(st["Action"]))
    ]
    if name.startswith("head"):  # the autoscaler hands workers their role, no other
        (passrole,) = iam
        assert passrole["Resource"].endswith(":role/flatten-prune-worker")
    else:
        assert not iam


def test_only_the_clusters_roles_write_the_prefix_and_the_bucket_keeps_versions() -> None:
    """--resume unpickles Tune's and Optuna's state from the bucket: whoever writes the prefix
    runs code on the head, so nobody but the cluster's roles may, and versions are kept."""
    assert _policy("bucket-versioning.json") == {"Status": "Enabled"}
    assert _policy("ec2-trust.json")["Statement"][0]["Principal"] == {
        "Service": "ec2.amazonaws.com"
    }
    (deny,) = [st for st in _statements("bucket-policy.json") if "s3:PutObject" in st["Action"]]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Resource"] == f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion"} <= set(deny["Action"])
    allowed = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert sorted(a.rsplit("/", 1)[1] for a in allowed) == [
        "flatten-prune-head",
        "flatten-prune-worker",
    ]


def test_mlflow_artifacts_go_under_the_policies_prefix() -> None:
    (mlflow,) = [c for c in CONFIG["head_start_ray_commands"] if "mlflow server --" in c]
    destination = re.search(r"--artifacts-destination (\S+)", mlflow).group(1)
    assert destination.startswith(f"s3://{BUCKET}/{PREFIX}/"), destination
