"""``model: {source: hf, name: <folder>}``: a transformers classifier saved with
``save_pretrained`` is checked by ``--dry-run``, its pretrained weights are the teacher (no
teacher training), its image processor sets the transforms, and a 2-trial digits sweep runs."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch
import transformers as tf
import yaml
from _fake_sweep import save_tiny_hf_vit
from helpers import TARGET_RANGE, write_config

import prune_core as pc
from orchestrator import hf_model
from orchestrator.config import load_config, with_img_size
from orchestrator.data import transforms
from orchestrator.sweep import main

MEAN, STD = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random-init ViT for 8x8 digits and its image processor, as save_pretrained
    writes them (no download)."""
    path = tmp_path_factory.mktemp("hf") / "tiny-vit"
    return save_tiny_hf_vit(path, image_mean=MEAN, image_std=STD)


def _edited_copy(folder, dest, name: str, **changes):
    """A copy of the saved model ``folder`` at ``dest`` with ``changes`` set in its JSON file
    ``name`` (``config.json``, ``preprocessor_config.json``)."""
    shutil.copytree(folder, dest)
    data = json.loads((dest / name).read_text())
    (dest / name).write_text(json.dumps({**data, **changes}))
    return dest


def hf_config(tmp, folder, experiment="hf", **model):
    model = {"source": "hf", "name": str(folder), "num_classes": 10, "img_size": 8, **model}
    return write_config(
        tmp,
        experiment,
        model={"kwargs": {}, **model},
        teacher={"epochs": 0},
        sweep={"num_samples": 2, "sampler": "random", "asha": None},
        search=TARGET_RANGE,
        finetune={"epochs": 1},
    )


def test_dry_run_checks_the_checkpoint_and_names_the_teacher(tmp_path, folder, capsys) -> None:
    assert main([str(hf_config(tmp_path, folder)), "--dry-run"]) == 0
    out = " ".join(w for w in capsys.readouterr().out.split() if w != "│")  # table rows unwrapped
    assert "0 epochs, the pretrained weights" in out and "from_pretrained" in out
    assert "ViTForImageClassification from" in out and "made prunable" in out
    assert "8x8, mean (0.25, 0.5, 0.75)" in out and "std (0.2, 0.3, 0.4)" in out


@pytest.mark.parametrize(
    "model, field, words",
    [
        ({"name": "./no-such-model"}, "model.name", "no such folder"),
        ({"img_size": 16}, "model.img_size", "image processor takes 8x8"),
        ({"kwargs": {"in_chans": 1}}, "model.kwargs.in_chans", "source hf takes only"),
        ({"checkpoint": "x.pt"}, "model.checkpoint", "loads its weights from model.name"),
    ],
)
def test_what_does_not_fit_is_one_line_naming_the_field(
    tmp_path, folder, capsys, model, field, words
) -> None:
    config = hf_config(tmp_path, folder, **model)
    assert main([str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{field}: " in err and words in err


def _without_img_size(config):
    raw = yaml.safe_load(config.read_text())
    del raw["model"]["img_size"]
    config.write_text(yaml.safe_dump(raw))
    return config


def test_an_omitted_img_size_is_the_image_processors(tmp_path, folder, capsys) -> None:
    """hf: model.img_size may be left out: the image processor's size (8) is used, and every
    copy of the experiment holds it; timm still requires it."""
    config = _without_img_size(hf_config(tmp_path, folder))
    assert load_config(config).model.img_size is None  # filled in the driver, not the schema
    exp = with_img_size(load_config(config), config)
    assert exp.model.img_size == 8 and exp.input_size == (3, 8, 8)
    assert main([str(config), "--dry-run"]) == 0
    out = " ".join(w for w in capsys.readouterr().out.split() if w != "│")
    assert f"{folder}, 10 classes, 8 px" in out and "8x8, mean (0.25, 0.5, 0.75)" in out
    raw = yaml.safe_load(config.read_text())
    raw["model"] = {"name": "flatten_vit_micro", "num_classes": 10}
    config.write_text(yaml.safe_dump(raw))
    assert main([str(config), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().endswith("model.img_size: required for source timm")


def test_an_omitted_img_size_the_processor_cannot_give_is_one_line(
    tmp_path, folder, capsys
) -> None:
    size = {"height": 8, "width": 16}
    other = _edited_copy(folder, tmp_path / "oblong", "preprocessor_config.json", size=size)
    config = _without_img_size(hf_config(tmp_path, other))
    assert main([str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.endswith(
        f"model.img_size: {other}'s image processor takes 8x16, not square images; a sweep "
        "needs square ones"
    )


def test_a_checkpoint_with_other_classes_is_refused_naming_num_classes(
    tmp_path, folder, capsys
) -> None:
    other = _edited_copy(
        folder,
        tmp_path / "five-labels",
        "config.json",
        id2label={str(i): f"c{i}" for i in range(5)},
        label2id={f"c{i}": i for i in range(5)},
    )
    assert main([str(hf_config(tmp_path, other)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"model.num_classes: 10, but {other} has 5 labels")


def test_a_relative_folder_is_made_absolute_in_the_driver(tmp_path, folder, monkeypatch) -> None:
    monkeypatch.chdir(folder.parent)
    config = hf_config(tmp_path, folder.name)
    raw = yaml.safe_load(config.read_text())
    raw["model"]["name"] = f"./{folder.name}"
    config.write_text(yaml.safe_dump(raw))
    assert load_config(config).model.name == str(folder)


def test_transforms_take_mean_std_and_size_from_the_image_processor(tmp_path, folder) -> None:
    exp = load_config(hf_config(tmp_path, folder))
    assert hf_model.preprocessing(exp.model.name) == hf_model.Preprocessing(MEAN, STD, (8, 8))
    for training in (False, True):
        steps = transforms(exp, training).transforms
        norm = next(t for t in steps if type(t).__name__ == "Normalize")
        assert torch.allclose(torch.as_tensor(norm.mean), torch.tensor(MEAN)), training
        assert torch.allclose(torch.as_tensor(norm.std), torch.tensor(STD)), training


def test_the_teacher_is_the_pretrained_model_made_prunable(tmp_path, folder) -> None:
    from orchestrator.model import create_model

    exp = load_config(hf_config(tmp_path, folder))
    model = create_model(exp)
    original = tf.ViTForImageClassification.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (model(x).logits - original(x).logits).abs().max().item() <= 1e-5
    assert len([n for n in model.state_dict() if n.endswith("attention.qkv.weight")]) == 2


@pytest.mark.sweep
def test_a_two_trial_digits_sweep_on_a_save_pretrained_folder(tmp_path, folder) -> None:
    assert main([str(hf_config(tmp_path, folder, experiment="hf-sweep"))]) == 0
    trials = pq.read_table(tmp_path / "results" / "hf-sweep" / "trials.parquet").to_pylist()
    assert len(trials) == 2
    full = pc.count_macs(tf.ViTForImageClassification.from_pretrained(folder), (3, 8, 8))
    for t in trials:  # each pruned to its MAC target in [0.4, 0.8] of the teacher, fine-tuned
        assert t["status"] == "TERMINATED" and t["fully_trained"]
        assert 0.0 <= t["top1"] <= 100.0
        assert 0.3 * full <= t["macs"] <= 0.85 * full
