"""orchestrator.pick on an hf sweep (``model.source: hf``): export and register rebuild the
transformers model from the config the sweep's parent run keeps, never from a path or a
download, with the same round-trip checks as for timm.

The sweep is faked as in test_orchestrator_pick.py, without Ray or training: the parent run
is the sweep's own (``sweep_state.parent_run`` on a YAML naming a ``save_pretrained`` folder:
config.json and hf_config.json artifacts, sweep.json), its teacher is
``orchestrator.model.create_model`` (the pretrained ViT made prunable), each trial a
``magnitude_plan`` of it saved as a child run's plan.json and weights.pt, and the front a
pareto.parquet.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers as tf
from _fake_sweep import log_pruned_trial, save_tiny_hf_vit
from helpers import write_config
from rich.console import Console

import prune_core as pc
from orchestrator import hf_model, pareto, pick, pick_export, pick_hf, sweep_state
from orchestrator.config import load_config, with_img_size
from orchestrator.model import create_model
from orchestrator.pruned_pyfunc import build
from orchestrator.report import Refused
from orchestrator.tracking import PARENT_TAG, client

KEEPS = {"t0": (0.5, 80.0, 1.0), "t1": (0.75, 90.0, 1.5)}  # keep, top-1, ms
SIZE = (3, 8, 8)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pick-hf")
    folder = tmp / "tiny-vit"
    save_tiny_hf_vit(folder)
    model = {"source": "hf", "name": str(folder), "kwargs": {"attn_implementation": "eager"}}
    path = write_config(tmp, "hf-pick", model=model, teacher={"epochs": 0})
    exp = with_img_size(load_config(path), path)
    exp.sweep_dir.mkdir(parents=True)
    uri = exp.tracking_uri()
    parent, _ = sweep_state.parent_run(exp, uri)
    teacher = create_model(exp)
    c = client(uri)
    exp_id = c.get_run(parent).info.experiment_id
    c.log_metric(parent, "teacher_top1", 95.0)
    rows, models = [], {}
    for trial, (keep, top1, _) in KEEPS.items():
        params = {"search/target": keep}
        model, row = log_pruned_trial(
            c, exp_id, parent, trial, teacher, keep, top1, tmp / trial, SIZE, 2, params
        )
        rows.append(row)
        models[trial] = model
    front = pareto.front_table(pareto.trials_table(rows))
    ms = [KEEPS[t][2] for t in front.column("trial_id").to_pylist()]
    front = front.append_column("latency_ms", pa.array(ms, pa.float64()))
    pq.write_table(front, exp.sweep_dir / "pareto.parquet")
    ratios = {r["trial_id"]: r["macs_ratio"] for r in rows}
    return {"exp": exp, "uri": uri, "parent": parent, "models": models, "ratios": ratios}


def _run(*argv) -> tuple[int, str]:
    out = io.StringIO()
    code = pick.main([str(a) for a in argv], console=Console(file=out, width=120))
    return code, out.getvalue()


def _x() -> torch.Tensor:
    return torch.randn(5, *SIZE, generator=torch.Generator().manual_seed(1))


def _want(sweep) -> np.ndarray:
    with torch.no_grad():
        return sweep["models"]["t0"](_x()).logits.numpy()


def test_the_parent_run_keeps_the_transformers_config(sweep, tmp_path):
    got = client(sweep["uri"]).download_artifacts(
        sweep["parent"], hf_model.CONFIG_ARTIFACT, str(tmp_path)
    )
    kept = json.loads(open(got).read())
    assert kept == hf_model.config_dict(sweep["exp"].model.name)
    assert (kept["model_type"], kept["hidden_size"], len(kept["id2label"])) == ("vit", 32, 10)


@pytest.fixture(scope="module")
def exported(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    ratio = (sweep["ratios"]["t0"] + sweep["ratios"]["t1"]) / 2
    code, text = _run(
        sweep["exp"].sweep_dir, "--max-macs-ratio", ratio, "--export", out, "--register", "vit-p"
    )
    assert code == 0, text
    assert "picked trial t0:" in text
    return out, text


def test_export_rebuilds_the_hf_model_from_its_config_beside_it(sweep, exported):
    import onnxruntime as ort

    out, text = exported
    assert sorted(p.name for p in out.iterdir()) == [  # one ONNX file: weights inside
        "README.md",
        "config.json",
        "model.json",
        "model.onnx",
        "plan.json",
        "sweep.yaml",
        "weights.pt",
    ]
    arch = json.loads((out / "model.json").read_text())
    assert arch == {
        "source": "hf",
        "name": sweep["exp"].model.name,
        "num_classes": 10,
        "img_size": 8,
        "kwargs": {"attn_implementation": "eager"},
        "config": "config.json",
    }
    want = _want(sweep)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert np.abs(session.run(None, {"images": _x().numpy()})[0] - want).max() < 1e-4
    hf_config = json.loads((out / "config.json").read_text())
    rebuilt = build(arch, out / "plan.json", out / "weights.pt", hf_config=hf_config)
    with torch.no_grad():
        assert np.abs(rebuilt(_x()).logits.numpy() - want).max() < 1e-4
    # the folder is also a transformers config folder: from_config, then the pruned widths
    base = tf.AutoModelForImageClassification.from_config(tf.AutoConfig.from_pretrained(out))
    fresh = pc.load_pruned(pc.make_prunable(base), out / "plan.json", out / "weights.pt")
    with torch.no_grad():
        assert np.abs(fresh.eval()(_x()).logits.numpy() - want).max() < 1e-4
    with pytest.raises(ValueError, match="pass hf_config"):
        build(arch, out / "plan.json", out / "weights.pt")
    card = (out / "README.md").read_text()
    for piece in (
        "(transformers vit, from_pretrained)",
        "hf_config=json.load(open('config.json'))",
        "| top-1 | 80.00 % |",
        "`search/target` | 0.5 |",
    ):
        assert piece in card, piece


def test_registered_hf_version_predicts_as_the_pruned_model(sweep, exported):
    import mlflow
    from mlflow import MlflowClient

    _, text = exported
    assert "registered: models:/vit-p/1 (alias @pareto-" in text
    alias = text.split("(alias @")[1].split(")")[0]
    c = MlflowClient(sweep["uri"], registry_uri=sweep["uri"])
    version = c.get_model_version_by_alias("vit-p", alias)
    assert math.isclose(float(version.tags["macs_ratio"]), sweep["ratios"]["t0"], abs_tol=1e-4)
    assert version.tags["top1"] == "80.00" and version.tags["trial_id"] == "t0"
    assert c.get_run(version.run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(sweep["uri"])
    try:
        model = mlflow.pyfunc.load_model("models:/vit-p/1")
        got = model.predict(_x().numpy())
        onnx_got = mlflow.pyfunc.load_model(version.tags["onnx_model_uri"]).predict(_x().numpy())
        requirements = open(mlflow.pyfunc.get_model_dependencies("models:/vit-p/1")).read()
    finally:
        mlflow.set_tracking_uri(None)
    want = _want(sweep)
    assert got.shape == (5, 10) and np.abs(got - want).max() < 1e-4
    onnx_got = next(iter(onnx_got.values())) if isinstance(onnx_got, dict) else onnx_got
    assert np.abs(np.asarray(onnx_got) - want).max() < 1e-4
    assert f"transformers=={tf.__version__}" in requirements.split()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"auto_map": {"AutoModel": "x.Y"}}, "auto_map is not accepted: code from outside"),
        ({"model_type": "timm_wrapper"}, "model_type 'timm_wrapper' is not an image classifier"),
        ({"model_type": "bert"}, "model_type 'bert' is not an image classifier"),
        ({"dtype": "float16"}, "dtype 'float16' is not float32"),
        ({"quantization_config": {"bits": 4}}, "quantization_config is not accepted"),
        ({"id2label": {"0": "a", "1": "b"}}, "2 labels, but model.num_classes is 10"),
        ({"num_channels": "3"}, "num_channels '3' is out of range"),
        ({"hidden_size": object()}, "not a JSON mapping of plain values"),
    ],
)
def test_a_transformers_config_read_back_is_checked(sweep, change, words):
    config = {**hf_model.config_dict(sweep["exp"].model.name), **change}
    with pytest.raises(Refused) as err:
        pick_hf.check_config(config, 10)
    assert str(err.value).startswith("hf_config.json: ") and words in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "model, words",
    [
        ({"kwargs": {"attn_implementation": "flash_attention_2"}}, "attn_implementation"),
        ({"kwargs": {"cache_dir": "/tmp"}}, "model.kwargs.cache_dir is not accepted"),
        ({"name": "a\nb"}, "model.name 'a\\nb' is not a name"),
        ({"source": "onnx"}, "model.source 'onnx' is neither timm nor hf"),
    ],
)
def test_the_model_section_of_an_hf_sweep_read_back_is_checked(sweep, model, words):
    section = {**sweep["exp"].model.model_dump(mode="json"), **model}
    with pytest.raises(Refused, match="config.json: ") as err:
        pick_export.check_arch(section)
    assert words in str(err.value)


def test_an_hf_sweep_whose_parent_run_lacks_the_config_is_refused_in_one_line(
    sweep, tmp_path, capsys
):
    """A sweep started before the parent run kept hf_config.json: one line, nothing written."""
    c = client(sweep["uri"])
    old = c.get_run(sweep["parent"])
    parent = c.create_run(old.info.experiment_id).info.run_id
    c.log_artifact(parent, c.download_artifacts(sweep["parent"], "config.json", str(tmp_path)))
    front = pq.read_table(sweep["exp"].sweep_dir / "pareto.parquet").to_pylist()
    row = next(r for r in front if r["trial_id"] == "t0")
    child = c.create_run(old.info.experiment_id, tags={PARENT_TAG: parent}).info.run_id
    for name in ("plan.json", "weights.pt"):
        c.log_artifact(child, c.download_artifacts(row["run_id"], name, str(tmp_path)))
    folder = tmp_path / "old-sweep"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{**row, "run_id": child}]), folder / "pareto.parquet")
    (folder / "sweep.json").write_text(
        json.dumps({"parent_run_id": parent, "tracking_uri": sweep["uri"]})
    )
    assert _run(folder, "--export", tmp_path / "out")[0] == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the parent run has no hf_config.json: the sweep started before pick" in err
    assert not (tmp_path / "out").exists()
