"""What --dry-run refuses (orchestrator/preflight.py): configs that validated, then hung or
failed late. Each case is an example from issue 12; each refusal is one line naming the file
and the field, exit status 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import ROOT, error_of, minimal, run_sweep_cli, write_config
from PIL import Image

from orchestrator.config import parse_config
from orchestrator.data import SplitFolder, build_datasets
from orchestrator.sweep import main


def folders(root: Path, layout: dict[str, int], ext: str = "png") -> Path:
    """``layout``: class folder -> image count; tiny 8x8 images, a colour per class."""
    root.mkdir(parents=True)
    for i, (name, count) in enumerate(layout.items()):
        (root / name).mkdir()
        for j in range(count):
            Image.new("RGB", (8, 8), (40 * i, 10 * j, 0)).save(root / name / f"{j}.{ext}")
    return root


def imagefolder(tmp: Path, train: dict[str, int], val: dict[str, int], **model) -> dict:
    data = {
        "kind": "imagefolder",
        "train": str(folders(tmp / "train", train)),
        "val": str(folders(tmp / "val", val, ext="jpg")),
        "batch_size": 2,
        "calib_images": 2,
    }
    return {"data": data, "model": {**write_model(), "num_classes": len(train), **model}}


def write_model() -> dict:
    return {
        "name": "flatten_vit_micro",
        "img_size": 8,
        "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 4},
    }


def refused(tmp: Path, capsys, **sections) -> str:
    """Run the CLI on TINY + ``sections``: exit 2, one line on stderr, nothing written."""
    config = write_config(tmp, "pre", **sections)
    before = sorted(p.name for p in tmp.iterdir())
    code = main([str(config), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"{config}: "), err
    assert sorted(p.name for p in tmp.iterdir()) == before  # nothing written
    # The real start refuses it the same way. The model check runs beside the teacher there,
    # once Ray is up, and cancels the teacher; no folder is left behind. (-v: the console
    # stays on Python's stderr, which capsys reads, Ray's lines before the refusal.)
    code = main([str(config), "-v"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1:] == err
    assert not (tmp / "results").exists()
    return err[0].removeprefix(f"{config}: ")


# ----------------------------------------------------------------------------- resources
def test_teacher_asking_for_more_cpus_than_local_ray_has_is_refused(tmp_path):
    """Issue 12: `num_cpus: 1, teacher_cpus: 2` waited forever for a node; here the real CLI
    (a subprocess) refuses it in seconds."""
    config = write_config(tmp_path, "cpus", resources={"num_cpus": 1, "teacher_cpus": 2})
    proc = run_sweep_cli(config, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"{config}: resources.teacher_cpus: the teacher task asks for 2 CPU, but local Ray has "
        "at most 1 per node: it would wait forever"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpus.yaml"]


@pytest.mark.parametrize(
    ("resources", "finetune", "expected"),
    [
        (
            {"num_cpus": 2, "cpus_per_trial": 3},
            {},
            "resources.cpus_per_trial: a trial asks for 3 CPU, but local Ray has at most 2",
        ),
        (
            {"num_cpus": 2, "num_gpus": 0, "gpus_per_trial": 1},
            {},
            "resources.gpus_per_trial: a trial asks for 1 GPU, but local Ray has at most 0",
        ),
        (
            {"num_cpus": 2, "num_gpus": 0, "teacher_gpus": 0.5},
            {},
            "resources.teacher_gpus: the teacher task asks for 0.5 GPU",
        ),
        (
            {"num_cpus": 4, "cpus_per_worker": 8, "gpus_per_worker": 0},
            {"workers": 2},
            "resources.cpus_per_worker: a fine-tune worker asks for 8 CPU",
        ),
        (
            {"num_cpus": 2, "cpus_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
            {"workers": 2},
            "finetune.workers: a trial and its 2 fine-tune workers need 3 CPU at once, "
            "local Ray has 2",
        ),
    ],
)
def test_every_resource_request_must_fit_local_ray(tmp_path, capsys, resources, finetune, expected):
    line = refused(tmp_path, capsys, resources=resources, finetune=finetune)
    assert line.startswith(expected), line


def test_requests_that_fit_pass_and_are_reported(tmp_path, capsys):
    config = write_config(
        tmp_path,
        "fits",
        resources={"num_cpus": 3, "cpus_per_trial": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        finetune={"workers": 2},
    )
    assert main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "local Ray: 3 CPU, 0 GPU; every request fits" in out
    assert "digits: 1347 training images" in out


def test_the_teacher_asks_a_local_node_only_for_cpus_no_trial_slot_needs():
    """Trials start while the teacher trains and wait for it (teacher_job.py): on a local node
    the teacher task asks Ray for what the slots leave, at most ``teacher_cpus``; asking for
    more would keep a slot's trial process from starting (and importing) beside it."""
    from orchestrator.teacher_job import reserved_cpus

    def cpus(node: float, **resources) -> float:
        sweep = {"max_concurrent_trials": resources.pop("slots", 2), "num_samples": 8}
        exp = parse_config(minimal(resources=resources, sweep=sweep), "x")
        return reserved_cpus(exp, node)

    assert cpus(2, cpus_per_trial=1, teacher_cpus=1) == 0  # the digits demo: borrowed
    assert cpus(4, cpus_per_trial=1, teacher_cpus=1) == 1  # 2 CPUs left idle by the slots
    assert cpus(4, cpus_per_trial=1, teacher_cpus=4) == 2
    assert cpus(16, cpus_per_trial=4, teacher_cpus=8, slots=4) == 0
    assert cpus(3, cpus_per_trial=1, teacher_cpus=2, slots=8) == 0  # slots past the CPUs
    one = parse_config(minimal(sweep={"num_samples": 1, "max_concurrent_trials": 4}), "x")
    assert reserved_cpus(one, 2) == 1  # one trial: one slot, whatever the concurrency cap


# ----------------------------------------------------------------------------- metric
def test_asha_metric_a_trial_does_not_report_is_refused():
    """Issue 12: `acc` (for top1) ran the teacher, then died in 73 lines and 3 tracebacks."""
    assert error_of(minimal(sweep__asha__metric="acc")).startswith(
        "experiments/x.yaml: sweep.asha.metric: 'acc' is not reported by every trial; one of "
        "top1, macs, macs_ratio,"
    )
    for ok in ("top1", "pruned_top1", "training_iteration"):
        assert parse_config(minimal(sweep__asha__metric=ok), "x").sweep.asha.metric == ok


def test_a_report_without_a_promised_metric_is_refused():
    """The list the config check trusts is the one the reports are held to."""
    from orchestrator.checkpoint import check_reported
    from orchestrator.schema import REPORTED_METRICS

    full = {name: 1.0 for name in REPORTED_METRICS}
    assert check_reported(full) == full
    with pytest.raises(RuntimeError, match=r"lacks \['pruned_top1'\]"):
        check_reported({k: v for k, v in full.items() if k != "pruned_top1"})


# ----------------------------------------------------------------------------- data
def test_more_class_folders_than_model_outputs_is_refused(tmp_path, capsys):
    """Issue 12: 3 class folders, num_classes 2 failed ~30 s in with 'Target 2 is out of
    bounds.'"""
    sections = imagefolder(tmp_path, {"a": 2, "b": 2, "c": 2}, {"a": 1, "b": 1}, num_classes=2)
    line = refused(tmp_path, capsys, **sections)
    assert line == "model.num_classes: 2, but data.train has 3 class folders"


def test_empty_class_folder_is_refused(tmp_path, capsys):
    sections = imagefolder(tmp_path, {"a": 2, "b": 0, "c": 2}, {"a": 1})
    line = refused(tmp_path, capsys, **sections)
    assert line == "data.train: class folder 'b' has no images (1 empty)"


def test_empty_validation_split_is_refused(tmp_path, capsys):
    sections = imagefolder(tmp_path, {"a": 2, "b": 2}, {"a": 0, "b": 0})
    line = refused(tmp_path, capsys, **sections)
    assert line == f"data.val: no images in {tmp_path / 'val'}"


def test_validation_class_the_training_split_lacks_is_refused(tmp_path, capsys):
    sections = imagefolder(tmp_path, {"a": 2, "c": 2}, {"a": 1, "b": 1, "c": 1})
    line = refused(tmp_path, capsys, **sections)
    assert line == "data.val: class folder 'b' is not in data.train's 2 classes (a, c)"


def test_validation_split_takes_the_training_splits_class_indices(tmp_path):
    """Issue 12, the silent one: train {a, b, c}, val {a, c}. torchvision numbered val's own
    folders, so every val image of c was scored as b."""
    sections = imagefolder(tmp_path, {"a": 2, "b": 2, "c": 2}, {"a": 1, "c": 2})
    raw = minimal(**{"data": sections["data"], "model": sections["model"]})
    exp = parse_config(raw, "x.yaml")
    datasets = build_datasets(exp)
    assert datasets.train.classes == ["a", "b", "c"]
    labels = sorted(label for _, label in datasets.val.samples)
    assert labels == [0, 2, 2]  # c is 2, as in training (torchvision alone: [0, 1, 1])
    images, label = datasets.val[2]
    assert label == 2 and images.shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"class folder\(s\) 'b' not in the training split"):
        SplitFolder(tmp_path / "train", ["a", "c"])


def test_batch_size_larger_than_the_training_split_is_refused(tmp_path, capsys):
    """Issue 12: batch 5000 on digits (1,347 images, drop_last) 'trained' the teacher 0 steps
    and kept it at chance as the sweep's teacher."""
    line = refused(tmp_path, capsys, data={"batch_size": 5000})
    assert line == (
        "data.batch_size: 5000 is larger than the 1347 training images: with drop_last an epoch "
        "would have no batch"
    )
    dp = {"num_cpus": 3, "gpus_per_worker": 0}  # room for a trial and its 2 workers
    line = refused(
        tmp_path, capsys, data={"batch_size": 1000}, finetune={"workers": 2}, resources=dp
    )
    assert line.startswith(
        "data.batch_size: 1000 is larger than the 673 training images per fine-tune worker"
    )


# ----------------------------------------------------------------------------- model
def test_kwargs_that_repeat_a_model_field_are_refused():
    """Issue 12: `kwargs: {img_size: 64}` next to `img_size` failed inside the teacher task."""
    assert error_of(minimal(model__kwargs={"img_size": 64})) == (
        "experiments/x.yaml: model.kwargs.img_size: 64 clashes with model.img_size (8): set it "
        "once, in model.img_size"
    )
    assert error_of(minimal(model__kwargs={"num_classes": 5})).startswith(
        "experiments/x.yaml: model.kwargs.num_classes: 5 clashes with model.num_classes (10)"
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (  # timm's differential attention: a class make_prunable does not convert
            {"name": "deit_tiny_patch16_224", "kwargs": {"patch_size": 8, "attn_layer": "diff"}},
            "model.kwargs: deit_tiny_patch16_224: ValueError: make_prunable: VisionTransformer "
            "has no attention module it can prune",
        ),
        (
            {"name": "deit_tiny_patch16_224", "kwargs": {"patch_size": 8, "no_such_arg": 1}},
            "model.kwargs: deit_tiny_patch16_224: TypeError:",
        ),
        (  # a FLatten model: not buildable on the meta device, checked on the CPU instead
            {"name": "flatten_vit_micro", "kwargs": {"depth": 0}},
            "model.kwargs: flatten_vit_micro: ValueError: make_prunable: FlattenViT has no "
            "attention module it can prune",
        ),
    ],
)
def test_a_model_that_cannot_be_built_or_pruned_is_refused(tmp_path, capsys, model, expected):
    line = refused(
        tmp_path, capsys, model={**write_model(), "num_classes": 10, "img_size": 32, **model}
    )
    assert line.startswith(expected), line


def test_models_are_checked_on_the_meta_device_where_possible(tmp_path, capsys):
    config = write_config(
        tmp_path,
        "meta",
        model={
            "name": "deit_tiny_patch16_224",
            "num_classes": 10,
            "img_size": 32,
            "kwargs": {"patch_size": 8, "depth": 2},
        },
    )
    assert main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model: deit_tiny_patch16_224 built on the meta device and made prunable" in out
    config = write_config(tmp_path, "cpu")
    assert main([str(config), "--dry-run"]) == 0
    assert "flatten_vit_micro built on CPU (not buildable on the meta device)" in (
        capsys.readouterr().out
    )


def test_shipped_experiment_passes_every_check(capsys):
    assert main([str(ROOT / "experiments" / "digits.yaml"), "--dry-run"]) == 0
    assert yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())["name"] in (
        capsys.readouterr().out
    )


@pytest.mark.sweep
def test_a_joined_clusters_nodes_are_what_requests_are_checked_against(tmp_path):
    """--address: the nodes come from the running cluster (here a 1-CPU local one); without
    autoscaler node types the driver only warns (a larger node may still be added)."""
    import ray

    from orchestrator import preflight
    from orchestrator.config import ConfigError, load_config

    exp = load_config(write_config(tmp_path, "joined", resources={"teacher_cpus": 2}))
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        nodes, known = preflight.cluster_nodes()
    finally:
        ray.shutdown()
    assert [n["CPU"] for n in nodes] == [1.0] and not known
    with pytest.raises(ConfigError, match="teacher_cpus: the teacher task asks for 2 CPU, but "):
        preflight.check_resources(exp, "x.yaml", nodes, "the cluster")


def test_parquet_labels_beyond_num_classes_or_a_missing_column_are_refused(tmp_path, capsys):
    """Parquet data: labels are class indices below model.num_classes and both columns exist
    (before, a label of 9 with num_classes 5 failed in the teacher task, after Ray started)."""
    from orchestrator.data import export_digits

    export_digits(tmp_path / "digits", shards=2)
    data = {
        "kind": "parquet",
        "train": str(tmp_path / "digits" / "train"),
        "val": str(tmp_path / "digits" / "val"),
        "batch_size": 8,
        "calib_images": 8,
    }
    model = {**write_model(), "num_classes": 5}
    line = refused(tmp_path, capsys, data=data, model=model)
    assert line.startswith("model.num_classes: 5, but ") and "labels 0..9" in line, line
    line = refused(tmp_path, capsys, data={**data, "label_column": "y"}, model=model)
    assert line.startswith("data.label_column: ") and "no column 'y'" in line, line


def refused_dry(tmp: Path, capsys, **sections) -> str:
    """``--dry-run`` on TINY + ``sections``: exit 2, one line on stderr, naming the file."""
    config = write_config(tmp, "pre", **sections)
    code = main([str(config), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"{config}: "), err
    return err[0].removeprefix(f"{config}: ")


def parquet_split(folder: Path, labels) -> Path:
    """One shard of 4 PNG images with ``labels`` (a pyarrow array) as its label column."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    images = []
    for i in range(len(labels)):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(buf, format="PNG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"image": images, "label": labels}), folder / "s.parquet")
    return folder


@pytest.mark.parametrize(
    ("labels", "problem"),
    [  # issue 26: a traceback, a crash at the first evaluation, 8.7 silently class 8
        (["cat", "dog", "cat", "dog"], "holds string values, not class indices (integers)"),
        ([0, None, 1, 2], "has 1 missing label(s) (null; the first at row 1)"),
        ([0.0, 8.7, 1.0, 2.0], "has labels with a fraction (8.7 at row 1)"),
        ([0.0, float("nan"), 1.0, 2.0], "has labels with a fraction (nan at row 1)"),
    ],
)
def test_parquet_label_columns_that_are_no_class_indices_are_refused(
    tmp_path, capsys, labels, problem
):
    import pyarrow as pa

    train = parquet_split(tmp_path / "train", pa.array(labels))
    val = parquet_split(tmp_path / "val", pa.array([0, 1, 2, 3]))
    data = {"kind": "parquet", "train": str(train), "val": str(val)}
    data.update(batch_size=2, calib_images=2)
    line = refused_dry(tmp_path, capsys, data=data, model={**write_model(), "num_classes": 10})
    assert line.startswith(f"data.label_column: 'label' in {train / 's.parquet'} {problem}"), line


def test_whole_float_labels_pass(tmp_path, capsys):
    import pyarrow as pa

    data = {
        "kind": "parquet",
        "train": str(parquet_split(tmp_path / "train", pa.array([0.0, 1.0, 2.0, 3.0]))),
        "val": str(parquet_split(tmp_path / "val", pa.array([0, 1, 2, 3]))),
        "batch_size": 2,
        "calib_images": 2,
    }
    config = write_config(tmp_path, "ok", data=data, model={**write_model(), "num_classes": 10})
    assert main([str(config), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("search", "expected"),
    [  # issue 26: both were clamped without a word (flatten_vit_micro: 8 channels per head)
        (
            {"min_width": {"qk": 12}},
            "search.min_width: min_width['qk'] = 12 is above the 8 channels per head of "
            "blocks.0.attn (qk)",
        ),
        (
            {"round_to": 3},
            "search.round_to: round_to = 3 does not divide the 8 channels per head of "
            "blocks.0.attn (qk)",
        ),
    ],
)
def test_widths_a_head_cannot_hold_are_refused(tmp_path, capsys, search, expected):
    line = refused_dry(tmp_path, capsys, search={"target": 0.5, **search})
    assert line.startswith(expected), line
