"""orchestrator.pick: a model off a finished sweep's front, exported and registered.

The sweep is faked, without Ray or training: a tiny flatten_vit_micro made prunable, pruned by
``magnitude_plan`` at three widths, each saved as a trial (a child run of a parent run holding
config.json and the teacher's metrics, with plan.json and weights.pt artifacts), a
pareto.parquet with the columns pareto.py and speed.py write, and a sweep.json.
"""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
from _fake_sweep import log_pruned_trial
from rich.console import Console

import prune_core as pc
from orchestrator import pareto, pick
from orchestrator.config import load_config, parse_config
from orchestrator.pruned_pyfunc import build
from prune_core.deploy import onnx_opset

ARCH = {
    "name": "flatten_vit_micro",
    "num_classes": 10,
    "img_size": 8,
    "kwargs": {"patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 4},
}
KEEPS = {
    "t0": (0.5, 80.0, 1.0),
    "t1": (0.75, 90.0, 1.5),
    "t2": (0.25, 60.0, 0.8),
}  # keep, top-1, ms
SIZE = (3, 8, 8)
ROOT = Path(__file__).resolve().parents[1]


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    a = ARCH
    model = timm.create_model(
        a["name"], num_classes=a["num_classes"], img_size=a["img_size"], **a["kwargs"]
    )
    return pc.make_prunable(model).eval()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("pick") / "results"
    sweep_dir = root / "digits"
    sweep_dir.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("digits", artifact_location=(root / "mlartifacts").as_uri())
    teacher = _teacher()
    teacher_macs = pc.count_macs(teacher, SIZE)
    parent = c.create_run(exp, run_name="digits", tags={"git_commit": "abc123"}).info.run_id
    # config.json as a sweep logs it: the digits demo's, on this test's small model (its
    # search.target explored, search.lr a fixed leaf, search.steps a plain setting)
    config = load_config(ROOT / "experiments" / "digits.yaml").model_dump(mode="json")
    config["model"].update(ARCH)
    files = root / "files"
    files.mkdir()
    (files / "config.json").write_text(json.dumps(config))
    c.log_artifact(parent, str(files / "config.json"))
    c.log_metric(parent, "teacher_top1", 95.0)
    c.log_metric(parent, "teacher_macs", float(teacher_macs))
    rows, models = [], {}
    for trial, (keep, top1, _) in KEEPS.items():
        params = {"search/target": keep, "finetune/lr": 0.001}
        model, row = log_pruned_trial(
            c, exp, parent, trial, teacher, keep, top1, files / trial, SIZE, 9, params
        )
        rows.append({**row, "param_search/target": keep})
        models[trial] = model
    front = pareto.front_table(pareto.trials_table(rows))
    ms = {t: KEEPS[t][2] for t in KEEPS}
    for name, values in (
        ("latency_ms", [ms[t] for t in front.column("trial_id").to_pylist()]),
        ("speedup", [2.0 / ms[t] for t in front.column("trial_id").to_pylist()]),
        ("fraction_of_limit", [0.5] * front.num_rows),
    ):
        front = front.append_column(name, pa.array(values, pa.float64()))
    pq.write_table(front, sweep_dir / "pareto.parquet")
    c.log_artifact(parent, str(sweep_dir / "pareto.parquet"))
    state = {"parent_run_id": parent, "tracking_uri": uri, "experiment_id": exp}
    (sweep_dir / "sweep.json").write_text(json.dumps(state))
    ratios = {r["trial_id"]: r["macs_ratio"] for r in rows}
    return {
        "dir": sweep_dir,
        "uri": uri,
        "parent": parent,
        "models": models,
        "ratios": ratios,
        "config": config,
    }


def _run(*argv) -> tuple[int, str]:
    out = io.StringIO()
    code = pick.main([str(a) for a in argv], console=Console(file=out, width=120))
    return code, out.getvalue()


def test_pick_under_each_constraint_kind(sweep):
    r = sweep["ratios"]
    assert r["t2"] < r["t0"] < r["t1"] < 1.0
    cases = [
        ((), "t1"),  # no budget: the most accurate
        (("--max-macs-ratio", (r["t0"] + r["t1"]) / 2), "t0"),
        (("--max-latency-ms", 1.2), "t0"),
        (("--min-top1", 70), "t1"),
        (("--min-top1", 70, "--order", "cheapest"), "t0"),
        (("--order", "fastest"), "t2"),
        (("--max-latency-ms", 1.2, "--order", "cheapest"), "t2"),
    ]
    for args, want in cases:
        code, text = _run(sweep["dir"], *args)
        assert code == 0, (args, text)
        assert f"picked trial {want}:" in text, (args, text)
    code, text = _run(sweep["dir"], "--max-latency-ms", 1.2)
    assert "2 of 3 Pareto trials within latency <= 1.2 ms" in text
    assert "the most accurate of them (--order accurate)" in text


def test_no_trial_within_the_budget_is_one_line_naming_the_closest(sweep, capsys):
    code, _ = _run(sweep["dir"], "--max-macs-ratio", 0.01)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    over = sweep["ratios"]["t2"] - 0.01
    assert "closest is trial t2" in err and f"{over:.3f} over" in err, err
    code, _ = _run(sweep["dir"], "--min-top1", 99, "--max-latency-ms", 5)
    err = capsys.readouterr().err.strip()
    assert code == 1 and "closest is trial t1" in err and "9.00 points under" in err, err


def test_a_parent_run_id_is_a_source_and_its_front_is_checked(sweep, tmp_path, capsys):
    code, text = _run(sweep["parent"], "--tracking-uri", sweep["uri"], "--min-top1", 85)
    assert code == 0 and "picked trial t1:" in text
    bad = pq.read_table(sweep["dir"] / "pareto.parquet").to_pylist()
    bad[0]["run_id"] = "../../etc/passwd"
    folder = tmp_path / "bad"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(bad), folder / "pareto.parquet")
    assert _run(folder)[0] == 1
    assert "is not an MLflow run id" in capsys.readouterr().err
    untimed = pq.read_table(sweep["dir"] / "pareto.parquet").drop_columns(["latency_ms"])
    pq.write_table(untimed, folder / "pareto.parquet")
    assert _run(folder, "--max-latency-ms", 1)[0] == 1
    assert "--max-latency-ms: the front was not timed" in capsys.readouterr().err
    pq.write_table(pa.table({"trial_id": ["x"], "top1": ["high"]}), folder / "pareto.parquet")
    assert _run(folder)[0] == 1
    assert "pareto.parquet has no 'run_id' column" in capsys.readouterr().err


def test_kwargs_that_would_read_a_file_are_refused():
    from orchestrator.pick_export import check_arch
    from orchestrator.report import Refused

    for kwargs in ({"checkpoint_path": "/tmp/x.pth"}, {"act_layer": "../x"}):
        with pytest.raises(Refused):
            check_arch({**ARCH, "kwargs": kwargs})
    with pytest.raises(Refused):
        check_arch({**ARCH, "name": "no_such_model"})


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    budget = ("--max-macs-ratio", 0.6)
    code, text = _run(sweep["dir"], *budget, "--export", out, "--register", "digits-pruned")
    assert code == 0, text
    return out, text


def _x() -> torch.Tensor:
    return torch.randn(5, *SIZE, generator=torch.Generator().manual_seed(1))


def test_export_round_trip(sweep, exported):
    import onnxruntime as ort

    out, text = exported
    assert f"exported: {out}" in text
    assert sorted(p.name for p in out.iterdir()) == [  # one ONNX file: weights inside
        "README.md",
        "model.json",
        "model.onnx",
        "plan.json",
        "sweep.yaml",
        "weights.pt",
    ]
    # the sweep's config as it ran, as a YAML the sweep takes back
    want = parse_config(copy.deepcopy(sweep["config"])).model_dump(mode="json")
    assert load_config(out / "sweep.yaml").model_dump(mode="json") == want
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    want = sweep["models"]["t0"](_x()).detach().numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": _x().numpy()})[0] - want).max() < 1e-4
    loaded = pc.load_pruned(_teacher(), out / "plan.json", out / "weights.pt").eval()
    assert np.abs(loaded(_x()).detach().numpy() - want).max() < 1e-4
    rebuilt = build(
        json.loads((out / "model.json").read_text()), out / "plan.json", out / "weights.pt"
    )
    assert np.abs(rebuilt(_x()).detach().numpy() - want).max() < 1e-4
    card = (out / "README.md").read_text()
    for piece in (
        "flatten_vit_micro",
        "| teacher top-1 | 95.00 % |",
        "| top-1 | 80.00 % |",
        f"{sweep['ratios']['t0']:.3f}",
        "2.00× over the teacher",
        "`search/target` | 0.5 |",  # the trial's explored value (its child run's param)
        "`search/lr` | 0.0005 (fixed) |",  # the sweep's fixed settings, from config.json
        "`search/steps` | 100 (fixed) |",
        "| data | digits",
        "`abc123`",
        "git checkout abc123",
        "python -m orchestrator.sweep sweep.yaml",
        f"| ONNX | opset {onnx_opset(out / 'model.onnx')}, dynamic batch",
        "python -m orchestrator.pick ",
    ):
        assert piece in card, piece
    assert "`search/target` | " not in card.replace("`search/target` | 0.5 |", "")  # once


def test_export_refuses_an_opset_and_an_existing_folder_leaving_nothing(sweep, tmp_path, capsys):
    out = tmp_path / "m"
    assert _run(sweep["dir"], "--export", out, "--opset", 10)[0] == 1
    assert "opset 10 is not supported" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _run(sweep["dir"], "--export", out)[0] == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_registered_version_with_tags_alias_and_pyfunc_prediction(sweep, exported):
    import mlflow
    import onnxruntime as ort
    from mlflow import MlflowClient

    out, text = exported
    assert "registered: models:/digits-pruned/1 (alias @pareto-0_6)" in text
    c = MlflowClient(sweep["uri"], registry_uri=sweep["uri"])
    version = c.get_model_version_by_alias("digits-pruned", "pareto-0_6")
    assert str(version.version) == "1"
    assert math.isclose(float(version.tags["macs_ratio"]), sweep["ratios"]["t0"], abs_tol=1e-4)
    assert version.tags["top1"] == "80.00" and version.tags["trial_id"] == "t0"
    trial_run = c.get_run(version.run_id)
    assert trial_run.data.tags["trial_id"] == "t0" and trial_run.info.status == "FINISHED"
    mlflow.set_tracking_uri(sweep["uri"])
    try:
        model = mlflow.pyfunc.load_model("models:/digits-pruned/1")
        got = model.predict(_x().numpy())
        onnx_model = mlflow.pyfunc.load_model(version.tags["onnx_model_uri"])
        onnx_got = onnx_model.predict(_x().numpy())
    finally:
        mlflow.set_tracking_uri(None)
    assert model.metadata.signature is not None
    want = sweep["models"]["t0"](_x()).detach().numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_file = session.run(None, {"images": _x().numpy()})[0]
    assert np.abs(got - want).max() < 1e-4 and np.abs(got - onnx_file).max() < 1e-4
    onnx_got = next(iter(onnx_got.values())) if isinstance(onnx_got, dict) else onnx_got
    assert np.abs(np.asarray(onnx_got) - want).max() < 1e-4


def test_the_exported_sweep_yaml_takes_nothing_from_this_machine_and_masks_credentials(sweep):
    from orchestrator.pick_export import sweep_yaml

    config = copy.deepcopy(sweep["config"])
    config["data"]["root"] = "$HOME/fashion"  # read from MLflow: never expanded here
    config["tracking"]["uri"] = "http://alice:s3cret@mlflow.internal:5000"
    text = sweep_yaml(config)
    assert "$HOME/fashion" in text and str(Path.home()) not in text
    assert "s3cret" not in text and "mlflow.internal:5000" in text
    assert sweep_yaml({"name": "digits", "model": ARCH}) is None  # not a whole config
