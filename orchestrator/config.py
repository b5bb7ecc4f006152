"""Reading an experiment YAML: one file describes one sweep completely (schema: schema.py).

Configs are data, so everything a sweep does is in its YAML (seeds included) and is logged to
the parent MLflow run. Validation is strict because a typo that is silently ignored costs a
whole GPU sweep: unknown and duplicate keys are errors, and every error is reported as one line
that names the file and the field, e.g.
``experiments/x.yaml: search.target.low: must be in (0, 1]``.

A setting of ``search:`` or ``finetune:`` typed as a space (schema.py) is a fixed value
(``target: 0.5``), a range (``{low: 0.3, high: 0.7}``) or a list of choices (space.py).
File-system checks (paths exist, the timm model is known) are kept out of the schema in
:func:`check_inputs`, so a config for another machine can still be parsed and printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator._redact import redact
from orchestrator.hf_model import ALLOWED_KWARGS as HF_KWARGS
from orchestrator.hf_model import is_local
from orchestrator.schema import BUNDLED_KINDS, STORAGE_SCHEMES, Experiment, resolve_split
from orchestrator.space import INIT_MODES, check_point

__all__ = [
    "INIT_MODES",
    "ConfigError",
    "Experiment",
    "check_inputs",
    "load_config",
    "parse_config",
    "with_img_size",
]


class ConfigError(Exception):
    """A bad experiment file; ``str()`` is the one line the CLI prints."""

    def __init__(self, source: str | Path, field: str, message: str) -> None:
        self.source, self.field, self.message = str(source), field, message
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + message)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)

_PATH_FIELDS = (
    ("model", "checkpoint"),
    ("data", "train"),
    ("data", "val"),
    ("data", "root"),
    ("teacher", "checkpoint"),
    ("storage", "path"),
    ("storage", "local_dir"),
)
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# Paths a trial would otherwise read from its own environment, by the field they fill when the
# YAML leaves it empty (prune_core.fashion_mnist.ENV_VAR: named here, config.py stays torch-free)
_ENV_PATHS = {("data", "root"): ("FASHION_MNIST_DIR", {"kind": "fashion_mnist"})}


def _expand_paths(raw: dict, source: str) -> None:
    """``~`` and ``$VAR`` in path fields, so one YAML serves machines with different mounts.

    Paths become absolute (against the current directory) here, in the driver: Ray runs each
    trial in its own working directory, where a relative path would point elsewhere. So does a
    path a trial would read from the environment (``FASHION_MNIST_DIR`` for an unset
    ``data.root``): it becomes the field, resolved here, before any trial starts (a relative
    one passed ``--dry-run``, trained the teacher, then failed every trial).
    """
    for (section, key), (var, when) in _ENV_PATHS.items():
        block = raw.get(section)
        value = os.environ.get(var)
        if (
            value
            and isinstance(block, dict)
            and block.get(key) is None
            and all(block.get(k) == v for k, v in when.items())
        ):
            block[key] = value  # made absolute below, as if the YAML had said it
    model = raw.get("model")
    if (
        isinstance(model, dict)
        and model.get("source") == "hf"
        and isinstance(model.get("name"), str)
    ):
        name = os.path.expanduser(os.path.expandvars(model["name"]))
        if is_local(name):  # a save_pretrained folder: absolute, as the path fields below
            model["name"] = os.path.abspath(name)
    for section, key in _PATH_FIELDS:
        block = raw.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), str):
            value = os.path.expanduser(os.path.expandvars(block[key]))
            unset = _UNSET_VAR.search(value)
            if unset:
                raise ConfigError(
                    source, f"{section}.{key}", f"environment variable {unset.group(1)} is not set"
                )
            if "://" in value:
                scheme = value.split("://", 1)[0].lower()
                if redact(value) != value:  # Tune keeps storage_path in its state, whole
                    raise ConfigError(
                        source,
                        f"{section}.{key}",
                        f"{redact(value)}: no credentials in the URI (Tune would store them "
                        "in tuner.pkl); give them through the environment or the node's role",
                    )
                if (section, key) == ("storage", "path") and scheme in STORAGE_SCHEMES:
                    if not value.split("://", 1)[1].strip("/"):
                        raise ConfigError(source, "storage.path", f"{value}: no bucket")
                    block[key] = value
                    continue
                allowed = (
                    "a local/NFS path, s3://bucket/prefix or gs://bucket/prefix"
                    if (section, key) == ("storage", "path")
                    else "only local or mounted (NFS) paths"
                )
                raise ConfigError(
                    source,
                    f"{section}.{key}",
                    f"{value}: unsupported scheme {scheme!r}; use {allowed}",
                )
            block[key] = os.path.abspath(value)
    tracking = raw.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("uri"), str):
        uri = os.path.expandvars(tracking["uri"])
        unset = _UNSET_VAR.search(uri)
        if unset:
            raise ConfigError(
                source, "tracking.uri", f"environment variable {unset.group(1)} is not set"
            )
        tracking["uri"] = uri


def _message(error: dict) -> str:
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required"
    return msg[:1].lower() + msg[1:]


def parse_config(raw: Any, source: str | Path = "<config>") -> Experiment:
    """Validate an already-loaded mapping; raises :class:`ConfigError` (first problem only)."""
    source = str(source)
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "expected a mapping of sections (model, data, ...)")
    _expand_paths(raw, source)
    try:
        config = Experiment.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(source, field, _message(first) + more) from None
    _cross_checks(config, source)
    return config


def load_config(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML; every failure is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "", "no such file")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(path, where, f"invalid YAML: {problem}") from None
    if raw is None:
        raise ConfigError(path, "", "the file is empty")
    return parse_config(raw, path)


def _cross_checks(config: Experiment, source: str) -> None:
    """Rules that span fields (pydantic reports these without a field, so we name it)."""
    if config.data.kind not in BUNDLED_KINDS:
        for split in ("train", "val"):
            if getattr(config.data, split) is None:
                raise ConfigError(source, f"data.{split}", f"required for kind {config.data.kind}")
    hf = config.model.source == "hf"
    if not hf and config.model.img_size is None:
        raise ConfigError(source, "model.img_size", "required for source timm")
    for field in ("model", "teacher"):
        if hf and getattr(config, field).checkpoint is not None:
            raise ConfigError(
                source, f"{field}.checkpoint", "source hf loads its weights from model.name"
            )
    pretrained = hf or config.teacher.checkpoint or config.model.checkpoint
    if config.teacher.epochs == 0 and not pretrained:
        raise ConfigError(
            source,
            "teacher.epochs",
            "must be > 0 when neither model.checkpoint nor teacher.checkpoint is given "
            "and model.source is not hf (nothing to prune)",
        )
    kwargs = config.model.kwargs
    unknown = sorted(set(kwargs) - set(HF_KWARGS))
    if hf and unknown:
        raise ConfigError(
            source, f"model.kwargs.{unknown[0]}", f"source hf takes only {', '.join(HF_KWARGS)}"
        )
    for key in ("num_classes", "img_size"):  # model.create_model passes these itself
        if key in kwargs:
            raise ConfigError(
                source,
                f"model.kwargs.{key}",
                f"{kwargs[key]!r} clashes with model.{key} ({getattr(config.model, key)}): "
                f"set it once, in model.{key}",
            )
    if "pretrained" in kwargs:
        raise ConfigError(
            source, "model.kwargs.pretrained", "weights are never downloaded: use model.checkpoint"
        )
    if config.data.kind in BUNDLED_KINDS and config.model.num_classes != 10:
        raise ConfigError(source, "model.num_classes", f"{config.data.kind} has 10 classes")
    # digits, imagefolder and parquet give RGB (3 channels); fashion_mnist grey or repeated to 3
    channels = (1, 3) if config.data.kind == "fashion_mnist" else (3,)
    if config.input_size[0] not in channels:
        raise ConfigError(
            source,
            "model.kwargs.in_chans",
            f"must be {' or '.join(map(str, channels))} for {config.data.kind}",
        )
    asha = config.sweep.asha
    if asha is not None and asha.grace_period > config.finetune.epochs + 1:
        raise ConfigError(
            source,
            "sweep.asha.grace_period",
            f"must be <= finetune.epochs + 1 ({config.finetune.epochs + 1})",
        )
    for i, point in enumerate(config.sweep.points_to_evaluate):
        try:
            check_point(config.tunable_sections, point)
        except ValueError as err:
            raise ConfigError(source, f"sweep.points_to_evaluate[{i}]", str(err)) from None
    if config.resources.gpus_per_trial > 1 and config.resources.gpus_per_trial % 1:
        raise ConfigError(source, "resources.gpus_per_trial", "above 1 it must be a whole number")


def with_img_size(config: Experiment, source: str | Path) -> Experiment:
    """``config`` with the ``model.img_size`` an hf sweep omitted, read from its image
    processor's config (``hf_model.image_size``: square, at least 8 px), so every copy of the
    experiment (the trials', Tune's state, ``config.json``, what ``--resume`` compares) holds
    the size the sweep runs at. Driver-side, like :func:`check_inputs`; any other config is
    returned as it is. ConfigError (one line naming the field) when the size cannot be read."""
    m = config.model
    if m.source != "hf" or m.img_size is not None:
        return config
    from orchestrator import hf_model

    try:
        size = hf_model.image_size(m.name)
    except ValueError as err:
        raise ConfigError(source, *hf_model.field_of(err)) from None
    return config.model_copy(update={"model": m.model_copy(update={"img_size": size})})


def check_inputs(config: Experiment, source: str | Path) -> None:
    """What the schema cannot know: the input files exist (whether timm knows the model is
    ``preflight.check_model``'s, which imports timm: seconds)."""
    files = [
        ("model.checkpoint", config.model.checkpoint),
        ("teacher.checkpoint", config.teacher.checkpoint),
    ]
    for field, path in files:
        if path is not None and not path.is_file():
            raise ConfigError(source, field, f"no such file: {path}")
    name = config.model.name
    if config.model.source == "hf" and is_local(name) and not Path(name).expanduser().is_dir():
        raise ConfigError(source, "model.name", f"no such folder: {name}")
    if config.data.kind == "fashion_mnist":
        from prune_core.fashion_mnist import load_fashion_mnist

        var = os.environ.get(_ENV_PATHS[("data", "root")][0])
        from_env = var and config.data.root == Path(os.path.abspath(os.path.expanduser(var)))
        field = "data.root" if config.data.root and not from_env else "data.kind"
        try:  # reads the whole set (~1 s): a truncated file fails here, not in the teacher task
            train_labels = load_fashion_mnist(config.data.root)[1]
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(source, field, str(err)) from None
        subset = config.data.train_subset
        if subset is not None and subset > len(train_labels):
            raise ConfigError(
                source, "data.train_subset", f"{subset} > the {len(train_labels)} training images"
            )
    elif config.data.kind != "digits":
        for split in ("train", "val"):
            try:
                resolve_split(config.data, split)
            except FileNotFoundError as err:
                raise ConfigError(source, f"data.{split}", str(err)) from None
