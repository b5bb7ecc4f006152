"""Checks that a sweep can run, done before anything runs (``--dry-run`` and every start).

A real start runs the model check (torch and timm: seconds) beside the teacher's task, which
it cancels on a refusal, instead of before Ray starts; the rest comes first, as in ``--dry-run``.

The schema (schema.py) checks each field and config.py the files; this module checks what only
the machine, the data and the model can tell, because each of these passed validation once and
then hung or failed late, after the teacher was paid for:

- a resource request (teacher task, trial, fine-tune worker) larger than Ray will ever have
  never starts: Ray waits forever ("No available node types can fulfill resource request");
- ImageFolder splits whose class folders disagree with each other or with
  ``model.num_classes``, empty class folders, empty splits;
- a batch size larger than the training split: with ``drop_last`` an epoch has no batch, the
  teacher "trains" 0 steps and is kept at chance;
- a model timm cannot build from ``model.kwargs``, or that ``make_prunable`` cannot prune;
  a ``search.min_width`` above a head's channels or a ``search.round_to`` that does not divide
  them (every trial's search would refuse it).

Each failure is a :class:`~orchestrator.config.ConfigError`: one line naming the file and the
field. torch, timm and torchvision are imported inside the functions that need them, so
importing this module (and the CLI) stays cheap.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.schema import Experiment, resolve_split

DIGITS_IMAGES = 1797  # scikit-learn's bundled digits: a fixed set
FASHION_TRAIN_IMAGES = 60_000


def check(exp: Experiment, source: str | Path, *, local: bool, model: bool = True) -> list[str]:
    """Run every check; ``local``: Ray will be started here (not ``--address``); ``model``:
    also :func:`check_model` (the driver runs it beside the teacher instead, to start sooner).

    Returns notes for ``--dry-run``; raises ConfigError at the first problem.
    """
    notes = []
    if local:
        cpus, gpus = local_resources(exp)
        check_resources(exp, source, [{"CPU": cpus, "GPU": gpus}], "local Ray")
        notes.append(f"local Ray: {cpus:g} CPU, {gpus:g} GPU; every request fits")
    notes.append(check_data(exp, source))
    if model:
        notes.append(check_model(exp, source))
    return notes


# ----------------------------------------------------------------------------- resources
def local_resources(exp: Experiment) -> tuple[float, float]:
    """(CPUs, GPUs) a Ray started here gets: ``resources.num_cpus/num_gpus``, else detected."""
    r = exp.resources
    if r.num_cpus is not None:
        cpus = float(r.num_cpus)
    else:  # what this process may run on (a container's or taskset's limit), as Ray counts
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if r.num_gpus is not None:
        return cpus, float(r.num_gpus)
    worker_gpus = r.gpus_per_worker if exp.finetune.workers > 1 else 0.0  # unused below 2
    if max(r.teacher_gpus, r.gpus_per_trial, worker_gpus) == 0:
        return cpus, 0.0  # nothing asks for a GPU: neither import torch (~2 s) nor init CUDA
    import torch  # here: only a config that asks for GPUs pays for importing torch to count

    return cpus, float(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def requests(exp: Experiment) -> list[tuple[str, str, dict[str, float]]]:
    """(field, what, resources) of every Ray request a sweep makes, one node each."""
    r, workers = exp.resources, exp.finetune.workers
    out = [
        ("resources.teacher_cpus", "the teacher task", {"CPU": r.teacher_cpus}),
        ("resources.teacher_gpus", "the teacher task", {"GPU": r.teacher_gpus}),
        ("resources.cpus_per_trial", "a trial", {"CPU": r.cpus_per_trial}),
        ("resources.gpus_per_trial", "a trial", {"GPU": r.gpus_per_trial}),
    ]
    if workers > 1:
        out += [
            ("resources.cpus_per_worker", "a fine-tune worker", {"CPU": r.cpus_per_worker}),
            ("resources.gpus_per_worker", "a fine-tune worker", {"GPU": r.gpus_per_worker}),
        ]
    return out


def check_resources(
    exp: Experiment, source: str | Path, nodes: list[dict[str, float]], where: str
) -> None:
    """Every request fits on one of ``nodes`` (resource name -> amount), and a trial with its
    data-parallel workers fits in their sum (the trial holds its share while the workers
    start, so a sum that does not fit waits forever). ConfigError naming the field."""
    for field, what, need in requests(exp):
        for kind, amount in need.items():
            have = max((n.get(kind, 0.0) for n in nodes), default=0.0)
            if amount > have:
                raise ConfigError(
                    source,
                    field,
                    f"{what} asks for {amount:g} {kind}, but {where} has at most {have:g} per "
                    "node: it would wait forever",
                )
    r, workers = exp.resources, exp.finetune.workers
    if workers > 1:
        for kind, trial, worker in (
            ("CPU", r.cpus_per_trial, r.cpus_per_worker),
            ("GPU", r.gpus_per_trial, r.gpus_per_worker),
        ):
            need, have = trial + workers * worker, sum(n.get(kind, 0.0) for n in nodes)
            if need > have:
                raise ConfigError(
                    source,
                    "finetune.workers",
                    f"a trial and its {workers} fine-tune workers need {need:g} {kind} at once, "
                    f"{where} has {have:g}: it would wait forever",
                )


def gpu_room_warning(exp: Experiment) -> str | None:
    """Why data-parallel fine-tunes will queue, if they will: each waits for GPUs beyond the
    ones its trial holds (``ray.cluster_resources()``: call after ``ray.init``)."""
    import ray

    r, f = exp.resources, exp.finetune
    if f.workers == 1 or r.gpus_per_worker == 0:
        return None
    total = ray.cluster_resources().get("GPU", 0)
    need = exp.sweep.max_concurrent_trials * r.gpus_per_trial + f.workers * r.gpus_per_worker
    if need <= total:
        return None
    return (
        f"{need:g} GPUs needed for {exp.sweep.max_concurrent_trials} concurrent trials plus "
        f"one {f.workers}-worker fine-tune, the cluster has {total:g}; fine-tunes will queue "
        "(or wait for the autoscaler)"
    )


def cluster_nodes() -> tuple[list[dict[str, float]], bool]:
    """(the resources of every node the joined cluster has or may add, whether the node types
    the autoscaler may add are known). Call after ``ray.init``."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:  # the autoscaler's node types: Ray's own private accessor (Ray Data uses it too)
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # any error, on purpose: an older Ray or no GCS config; then unknown
        config = None
    if config is None or not config.node_group_configs:
        return nodes, False
    for group in config.node_group_configs:
        if group.max_count != 0:
            nodes.append({k: float(v) for k, v in group.resources.items()})
    return nodes, True


# ----------------------------------------------------------------------------- data
def check_data(exp: Experiment, source: str | Path) -> str:
    """Classes and image counts per split; the batch size against the training split."""
    d = exp.data
    if d.kind == "digits":
        train = DIGITS_IMAGES - math.ceil(d.test_fraction * DIGITS_IMAGES)  # sklearn's split
        note = f"digits: {train} training images"
    elif d.kind == "fashion_mnist":
        train = d.train_subset or FASHION_TRAIN_IMAGES
        note = f"fashion_mnist: {train} training images"
    elif d.kind == "parquet":
        train, val = (_parquet_rows(resolve_split(d, s)) for s in ("train", "val"))
        for split, rows in (("train", train), ("val", val)):
            if rows == 0:
                raise ConfigError(source, f"data.{split}", f"no rows in {getattr(d, split)}")
            _check_parquet_labels(exp, source, split)
        note = f"parquet: {train} training rows, {val} validation rows"
    else:
        train, note = _check_folders(exp, source)
    workers = exp.finetune.workers
    share = train // workers  # each data-parallel rank sees its share of the split
    if d.batch_size > share:
        per = (
            f" per fine-tune worker ({train} over finetune.workers {workers})"
            if workers > 1
            else ""
        )
        raise ConfigError(
            source,
            "data.batch_size",
            f"{d.batch_size} is larger than the {share} training images{per}: with drop_last "
            "an epoch would have no batch",
        )
    return note


def _parquet_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq  # here: the footers only, and only for parquet data

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _check_parquet_labels(exp: Experiment, source: str | Path, split: str) -> None:
    """Both columns exist and every label is a class index below ``model.num_classes``: a
    larger one failed only in the teacher task ("Target 12 is out of bounds"), after Ray
    started. Reads the label column alone (8 bytes a row)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    d, classes = exp.data, exp.model.num_classes
    for f in resolve_split(d, split):
        names = set(pq.ParquetFile(f).schema_arrow.names)
        for field in ("image_column", "label_column"):
            if getattr(d, field) not in names:
                raise ConfigError(
                    source,
                    f"data.{field}",
                    f"{f} has no column {getattr(d, field)!r} (columns: {sorted(names)})",
                )
        labels = pq.read_table(f, columns=[d.label_column]).column(0)
        if problem := _label_problem(labels):
            raise ConfigError(source, "data.label_column", f"{d.label_column!r} in {f} {problem}")
        low, high = pc.min_max(labels).values()
        if low.is_valid and (low.as_py() < 0 or high.as_py() >= classes):
            raise ConfigError(
                source,
                "model.num_classes",
                f"{classes}, but {f} has labels {low.as_py()}..{high.as_py()} (class indices "
                f"must be 0..{classes - 1})",
            )


def _label_problem(labels) -> str | None:
    """What makes a label column no list of class indices, or None: a type other than
    integers or floats (strings crashed ``--dry-run`` with a traceback), a missing value (it
    passed, then failed the first evaluation) or a float with a fraction (``int()`` in the
    dataset made 8.7 class 8 without a word)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = labels.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return f"holds {kind} values, not class indices (integers)"
    if labels.null_count:
        first = pc.index(pc.is_null(labels), True).as_py()
        return f"has {labels.null_count} missing label(s) (null; the first at row {first})"
    if pa.types.is_floating(kind):
        whole = pc.equal(labels, pc.floor(labels))  # NaN is not equal to itself: not whole
        if not pc.all(whole).as_py():
            first = pc.index(whole, False).as_py()
            value = labels[first].as_py()
            return (
                f"has labels with a fraction ({value} at row {first}): class indices are whole "
                "numbers (the dataset would truncate it)"
            )
    return None


def _check_folders(exp: Experiment, source: str | Path) -> tuple[int, str]:
    """ImageFolder: the training split's class folders are the classes (data.SplitFolder)."""
    # torchvision's own scan (the one ImageFolder does), so the counts are the dataset's
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    d = exp.data
    counts: dict[str, Counter] = {}
    classes: list[str] = []
    for split in ("train", "val"):
        root = resolve_split(d, split)[0]
        try:
            found = find_classes(str(root))[0]
        except FileNotFoundError:
            raise ConfigError(source, f"data.{split}", f"no class folders in {root}") from None
        if split == "train":
            classes = found
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ConfigError(
                source,
                "data.val",
                f"class folder {extra[0]!r} is not in data.train's {len(classes)} classes "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})",
            )
        index = {c: i for i, c in enumerate(classes)}
        samples = make_dataset(str(root), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        counts[split] = Counter(classes[label] for _, label in samples)
        if not samples:
            raise ConfigError(source, f"data.{split}", f"no images in {root}")
    empty = [c for c in classes if not counts["train"][c]]
    if empty:
        raise ConfigError(
            source, "data.train", f"class folder {empty[0]!r} has no images ({len(empty)} empty)"
        )
    if len(classes) != exp.model.num_classes:
        raise ConfigError(
            source,
            "model.num_classes",
            f"{exp.model.num_classes}, but data.train has {len(classes)} class folders",
        )
    train, val = sum(counts["train"].values()), sum(counts["val"].values())
    missing = len(classes) - len(counts["val"])
    lacks = f", {missing} class(es) without validation images" if missing else ""
    return train, f"imagefolder: {len(classes)} classes, {train} training, {val} validation{lacks}"


# ----------------------------------------------------------------------------- model
def check_model(exp: Experiment, source: str | Path) -> str:
    """timm knows ``model.name``; build the model as the trials will and make it prunable, on
    the meta device (shapes only: no memory, no time); a model the meta device cannot build
    is built on the CPU."""
    import timm  # here: parsing a config stays torch-free; only the checks pay for torch
    import torch

    import prune_core  # registers the FLatten models with timm

    m = exp.model
    if m.source == "hf":
        model, note = _check_hf_model(exp, source)
        _check_widths(exp, source, model)
        return note
    if not timm.is_model(m.name):
        raise ConfigError(source, "model.name", f"unknown timm model {m.name!r}")
    field = "model.kwargs" if m.kwargs else "model.name"

    built = []

    def build() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = timm.create_model(
                m.name, pretrained=False, num_classes=m.num_classes, img_size=m.img_size, **m.kwargs
            )
            prune_core.make_prunable(model, verbose=False)
        built.append(model)
        return [str(w.message) for w in caught if "make_prunable" in str(w.message)]

    def refuse(err: Exception) -> ConfigError:
        text = (str(err).strip().splitlines() or [""])[0]
        text = text if len(text) <= 300 else text[:300] + " ..."
        return ConfigError(source, field, f"{m.name}: {type(err).__name__}: {text}")

    device = "the meta device"
    try:
        with torch.device("meta"):
            left = build()
    except (NotImplementedError, RuntimeError):
        # Meta tensors have no data: a model that reads a value while it is built (FLatten's
        # torch.linspace(...).tolist(), Swin's relative position check) fails there; the CPU
        # build answers instead (seconds for a large model), and reproduces a real error.
        device = "CPU (not buildable on the meta device)"
        try:
            left = build()
        except Exception as err:  # any error: timm and the model's own checks raise anything
            raise refuse(err) from None
    except Exception as err:  # TypeError (unknown kwarg), ValueError (make_prunable), ...
        raise refuse(err) from None
    _check_widths(exp, source, built[-1])
    partly = f"; {left[0]}" if left else ""
    return f"model: {m.name} built on {device} and made prunable{partly}"


def _check_widths(exp: Experiment, source: str | Path, model) -> None:
    """Every trial's search and finalize would refuse them (prune_core.check_widths)."""
    import prune_core

    s = exp.search
    try:
        prune_core.check_widths(model, s.groups, s.min_width, s.round_to)
    except ValueError as err:
        field = "search.min_width" if str(err).startswith("min_width") else "search.round_to"
        raise ConfigError(source, field, str(err)) from None


def _check_hf_model(exp: Experiment, source: str | Path):
    """A transformers checkpoint (orchestrator.hf_model): its labels, image processor size and
    channels fit the config, and its architecture is prunable. (model, note)"""
    from orchestrator import hf_model

    m = exp.model
    try:
        prep = hf_model.check(m.name, m.num_classes, m.img_size, exp.input_size[0])
        model = hf_model.built_prunable(m.name, m.kwargs)
    except ValueError as err:
        raise ConfigError(source, *hf_model.field_of(err)) from None
    mean = ", ".join(f"{v:g}" for v in prep.mean)
    std = ", ".join(f"{v:g}" for v in prep.std)
    note = (
        f"model: {type(model).__name__} from {m.name} (transformers) built on the meta device "
        f"and made prunable; its image processor: {prep.size[0]}x{prep.size[1]}, mean ({mean}), "
        f"std ({std})"
    )
    return model, note
