"""Helpers shared by the tests (plain functions and constants; fixtures live in conftest.py).

One module, so that no test file imports another: tiny models and masks for prune_core, a tiny
experiment and its readers (MLflow, Tune's result files) for the orchestrator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml

import prune_core
from orchestrator.config import ConfigError, parse_config
from prune_core.convert import qk_kept_whole, supported_modules

ROOT = Path(__file__).resolve().parents[1]


def tiny_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    """flatten_vit_micro shrunk further: one linear and one softmax block, 8x8 input."""
    torch.manual_seed(seed)
    cfg = {
        "num_classes": 10,
        "img_size": 8,
        "patch_size": 2,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
    }
    cfg.update(kwargs)
    return timm.create_model("flatten_vit_micro", **cfg)


def off_init(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter moved off its init by N(0, 0.1²) noise (torch's global
    generator): zero-initialised tables, layer scales and biases would otherwise make a wrong
    conversion look exact."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def make_prunable_checked(model: torch.nn.Module, kinds: dict[str, int], whole: int):
    """``prune_core.make_prunable(model)``, checking the family's contract on the way: it
    converts ``kinds`` (kind -> modules), warns about nothing, leaves nothing convertible and
    keeps q/k whole in ``whole`` attention layers."""
    converted = list(supported_modules(model).values())
    assert {k: converted.count(k) for k in set(converted)} == kinds
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a supported model converts without a warning
        model = prune_core.make_prunable(model, verbose=False)
    assert supported_modules(model) == {}
    assert len(qk_kept_whole(model)) == whole
    return model


def search_and_prune(model: torch.nn.Module, teacher: torch.nn.Module, size: tuple[int, ...]):
    """The whole method on a family: ``search_plan`` (4 steps to 0.6 of the MACs, ``teacher``
    distilling) on 64 random images of 5 classes, then ``prune``; checks the losses are finite
    and the pruned MACs land in [0.55, 0.6] of the teacher's. Returns the plan and the loader."""
    images = torch.randn(64, *size)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, torch.randint(0, 5, (64,))), batch_size=16
    )
    config = prune_core.SearchConfig(target=0.6, steps=4, sim_every=2, tolerance=0.05)
    plan, history = prune_core.search_plan(
        model, loader, size, config, calib=images[:16], teacher=teacher, progress=False
    )
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    prune_core.prune(model)
    ratio = prune_core.count_macs(model, size) / prune_core.count_macs(teacher, size)
    assert 0.55 <= ratio <= 0.6
    return plan, loader


def random_masks(model: torch.nn.Module, keep: float = 0.5, seed: int = 0) -> None:
    """Hard masks with the same count per head at random positions (aligned where needed)."""
    g = torch.Generator().manual_seed(seed)
    for module in prune_core.prunable_modules(model).values():
        for gate in module.gates.values():
            k = max(1, round(keep * gate.channels))
            mask = torch.zeros(gate.num_heads, gate.channels)
            rows = [torch.randperm(gate.channels, generator=g)[:k] for _ in range(gate.num_heads)]
            for h in range(gate.num_heads):
                mask[h, rows[0] if gate.aligned else rows[h]] = 1.0
            gate.set_hard(mask)


def brute_force(top1: list[float], macs: list[float]) -> list[bool]:
    """O(n²) definition: dominated iff another point is >= on top-1, <= on MACs, one strictly."""
    n = len(top1)
    return [
        not any(
            top1[j] >= top1[i] and macs[j] <= macs[i] and (top1[j] > top1[i] or macs[j] < macs[i])
            for j in range(n)
        )
        for i in range(n)
    ]


def minimal(**overrides) -> dict:
    raw = {
        "name": "t",
        "model": {"name": "flatten_vit_micro", "num_classes": 10, "img_size": 8},
        "data": {"kind": "digits"},
        "teacher": {"epochs": 1},
        "search": {"target": 0.5},
        "finetune": {"epochs": 1},
    }
    for dotted, value in overrides.items():
        *path, last = dotted.split("__")
        node = raw
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "experiments/x.yaml")
    return str(info.value)


TINY = {
    "seed": 0,
    "model": {
        "name": "flatten_vit_micro",
        "num_classes": 10,
        "img_size": 8,
        "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 4},
    },
    "data": {"kind": "digits", "calib_images": 64},
    "teacher": {"epochs": 2, "lr": 0.003},
    "search": {"target": 0.5, "steps": 6, "sim_every": 3},
    "finetune": {"epochs": 2},
    "resources": {"num_cpus": 2, "cpus_per_trial": 1, "teacher_cpus": 1},
}


def write_config(tmp: Path, name: str, **sections) -> Path:
    """TINY with ``sections`` merged in (``search={"target": 0.3}`` keeps TINY's steps)."""
    raw = {
        **json.loads(json.dumps(TINY)),
        "name": name,
        "storage": {"path": str(tmp / "results")},
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and isinstance(raw.get(key), dict)
        raw[key] = {**raw[key], **value} if merge else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# one explored setting over a range: every trial of a sweep prunes to a different target
TARGET_RANGE = {"target": {"low": 0.4, "high": 0.8}}


def random_sweep(num_samples: int, *, concurrent: int, max_failures: int) -> dict:
    """A ``sweep`` section sampling at random without ASHA: every trial runs all its epochs, so
    a test knows which epochs (and fault points) each trial reaches."""
    return {
        "num_samples": num_samples,
        "max_concurrent_trials": concurrent,
        "sampler": "random",
        "asha": None,
        "max_failures": max_failures,
    }


def fault_rules(tmp: Path, *rules: dict) -> Path:
    """``rules`` written to ``tmp/faults/rules.json``, the file ``ORCHESTRATOR_FAULTS`` names
    (``orchestrator.faults``; a rule's firings are recorded beside it)."""
    path = tmp / "faults" / "rules.json"
    path.parent.mkdir()
    path.write_text(json.dumps(list(rules)))
    return path


def mlflow_client(tmp: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")


def children(client, parent_id: str) -> list:
    exp_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def tune_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Tune's per-trial result.json (one line per report)."""
    return {
        p.parent.name.removeprefix("trial_"): [
            json.loads(x) for x in p.read_text().split("\n") if x.strip()
        ]
        for p in sweep_dir.glob("trial_*/result.json")
    }


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group started with ``start_new_session``; a group that has already
    gone (the driver exited on its own, taking Ray with it) is no error, so the assertion that
    saw it exit is the one reported."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def sweep_cmd(*args: str | Path) -> list[str]:
    """``python -m orchestrator.sweep ARGS`` with this interpreter."""
    return [sys.executable, "-m", "orchestrator.sweep", *map(str, args)]


def run_sweep_cli(
    *args: str | Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """The driver as a user runs it (a subprocess), its output captured as text; never raises
    on a non-zero exit (the tests assert on it)."""
    return subprocess.run(
        sweep_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False,
        env=env, cwd=cwd,
    )  # fmt: skip


def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    every: float = 0.2,
) -> Any:
    """``check()``'s first truthy value, read every ``every`` s (the pace of the reads, not a
    synchronisation: the test waits for the condition itself). A ``check`` that raises
    FileNotFoundError or ValueError (a file not written yet, JSON half written) is not ready.

    Fails (AssertionError) with ``what`` after ``timeout`` s, or at once with the tail of
    ``log`` when ``proc`` (the driver) has exited meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (FileNotFoundError, ValueError):
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"exited ({proc.returncode}) before {what}\n{tail}")
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s: {what}"
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on a loopback port (SQLite and a local artifact folder under
    ``root``); a test may SIGKILL and restart it on the same port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        self.log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_up(self, timeout: float = 180) -> None:
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(healthy, timeout=timeout, what="mlflow server up", proc=self.proc,
                   log=self.root / "server.log", every=0.3)  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait()


def hidden_by_legend(fig) -> list[tuple[float, float]]:
    """The plotted points (scatter offsets, in data units) that the legend of ``fig``'s axes
    covers once drawn; a plot's legend must hide none."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for collection in ax.collections:
            for x, y in collection.get_offsets():
                if box.contains(*ax.transData.transform((x, y))):
                    hidden.append((float(x), float(y)))
    return hidden
