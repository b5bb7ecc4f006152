"""cluster.yaml is valid for `ray up` (offline) and runs only commands this project has."""

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
    ((remote, local),) = CONFIG["file_mounts"].items()
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
    command = next(c for c in CONFIG["head_start_ray_commands"] if "mlflow server" in c)
    flags = set(re.findall(r"(--[a-z-]+)", command))
    mlflow = Path(sys.executable).parent / "mlflow"
    help_text = subprocess.run(
        [str(mlflow), "server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in flags:
        assert flag in help_text, flag
