"""The experiment YAML as a pydantic schema: one file describes one sweep completely.

Configs are data, so everything a sweep does is in its YAML (seeds included) and is logged to
the parent MLflow run. Validation is strict because a typo that is silently ignored costs a
whole GPU sweep: unknown and duplicate keys are errors, and every error is reported as one line
that names the file and the field, e.g.
``experiments/x.yaml: search_space.mac_target.low: must be in (0, 1]``.

Anywhere the search space takes a range, a fixed value is allowed too (``mac_target: 0.5``),
as is a list of choices. File-system checks (paths exist, the timm model is known) are kept
out of the schema in :func:`check_inputs`, so a config for another machine can still be parsed
and printed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from orchestrator.space import INIT_MODES, SearchSpace, Strict, check_point

__all__ = ["INIT_MODES", "ConfigError", "Experiment", "check_inputs", "load_config", "parse_config"]


class ConfigError(Exception):
    """A bad experiment file; ``str()`` is the one line the CLI prints."""

    def __init__(self, source: str | Path, field: str, message: str) -> None:
        self.source, self.field, self.message = str(source), field, message
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + message)


# ----------------------------------------------------------------------------- sections
class ModelConfig(Strict):
    name: str
    num_classes: int = Field(ge=1)
    img_size: int = Field(ge=8)
    checkpoint: Path | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model arguments


class DataConfig(Strict):
    kind: Literal["digits", "fashion_mnist", "imagefolder", "parquet"]
    train: Path | None = None  # imagefolder: a class-per-folder directory; parquet: dir or glob
    val: Path | None = None
    # fashion_mnist: the folder of the four IDX files (else $FASHION_MNIST_DIR, else the Debian
    # package's /usr/share/datasets/fashion-mnist), and a stratified subset of the 60,000
    # training images (a laptop sweep needs far fewer; the test split is always all 10,000).
    root: Path | None = None
    train_subset: int | None = Field(None, ge=1)
    image_column: str = "image"  # parquet: encoded bytes (or a struct with a ``bytes`` field)
    label_column: str = "label"
    test_fraction: float = Field(0.25, gt=0, lt=1)  # digits only
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    calib_images: int = Field(128, ge=2)
    # timm's training transform: RandomResizedCrop(scale=(crop_scale_min, 1)), flip, RandAugment,
    # random erasing; digits ignores these (its own ±1 pixel shift is all a digit survives), so
    # does fashion_mnist (its own flip and ±2 pixel shift: no crop or colour for 28 px grey).
    crop_scale_min: float = Field(0.08, gt=0, le=1)
    hflip: float = Field(0.5, ge=0, le=1)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = Field(0.25, ge=0, le=1)
    crop_pct: float = Field(0.875, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    shuffle_buffer: int = Field(10_000, ge=1)  # parquet training stream


class TeacherConfig(Strict):
    """The unpruned model: the starting point of every trial and its distillation teacher."""

    epochs: int = Field(0, ge=0)  # train (from model.checkpoint or from scratch) this long
    checkpoint: Path | None = None  # or a state dict of the unpruned model, as a whole
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class SearchSchedule(Strict):
    """Fixed settings of the search (prune_core.SearchConfig documents each one)."""

    steps: int = Field(300, ge=1)
    ramp_fraction: float = Field(0.6, gt=0, le=1)
    sim_every: int = Field(50, ge=0)
    penalty: Literal["squared", "one_sided", "log"] = "squared"
    distill_alpha: float = Field(0.5, ge=0, le=1)
    distill_temperature: float = Field(2.0, gt=0)
    use_reweight: bool = True
    tolerance: float = Field(0.02, ge=0, lt=1)
    round_to: int = Field(1, ge=1)
    theta0: float = 0.0
    weight_decay: float = Field(0.05, ge=0)
    logit_optimizer: Literal["adamw", "sgd"] = "adamw"
    mac_step: Literal["joint", "cost_proportional"] = "joint"
    similarity_to: Literal["all", "kept"] = "all"
    reweight_lr: float | None = Field(None, gt=0)  # default: 4 × lr (SearchConfig)
    qk_reweight_init: Literal["one", "sqrt_ratio"] = "one"
    groups: list[Literal["qk", "v", "mlp"]] = Field(["qk", "v", "mlp"], min_length=1)
    min_width: dict[Literal["qk", "v", "mlp"], int] = Field(default_factory=dict)

    @field_validator("min_width")
    @classmethod
    def _positive_widths(cls, widths: dict[str, int]) -> dict[str, int]:
        bad = {g: w for g, w in widths.items() if w < 1}
        if bad:
            raise ValueError(f"widths must be >= 1, got {bad}")
        return widths


class FinetuneSchedule(Strict):
    epochs: int = Field(ge=1)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    distill_alpha: float = Field(0.5, ge=0, le=1)
    distill_temperature: float = Field(2.0, gt=0)
    workers: int = Field(1, ge=1)  # > 1: Ray Train data-parallel fine-tune inside the trial


class AshaConfig(Strict):
    metric: str = "top1"  # reported every epoch by every trial
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    mac_buckets: int = Field(1, ge=1)  # rank trials only against trials of similar MACs


class SweepConfig(Strict):
    num_samples: int = Field(12, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    population_size: int = Field(4, ge=2)  # NSGA-II generation size
    asha: AshaConfig | None = AshaConfig()
    max_failures: int = Field(1, ge=-1)  # retries of a failed trial (-1: forever)
    # Run the next trial in a finished trial's process: saves the worker start-up (a fresh
    # Python, torch and prune_core imports: seconds per trial on a small node). Off by default:
    # with it on, the kill/restart fault tests lost a reported epoch or ran an extra trial.
    reuse_actors: bool = False
    # Settings tried first, in order (Optuna's enqueue_trial): a baseline to compare against,
    # or a known-good point. Each maps explored parameters to values; the rest are sampled.
    points_to_evaluate: list[dict[str, float | str]] = []


class ResourcesConfig(Strict):
    num_cpus: int | None = Field(None, ge=1)  # only when Ray is started locally
    num_gpus: int | None = Field(None, ge=0)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)  # data-parallel fine-tune workers
    gpus_per_worker: float = Field(1.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)  # default: cpus_per_trial, rounded up
    teacher_cpus: float = Field(1.0, gt=0)
    teacher_gpus: float = Field(0.0, ge=0)

    def threads(self) -> int:
        return self.torch_threads or max(1, math.ceil(self.cpus_per_trial))


class TrackingConfig(Strict):
    uri: str | None = None  # default: sqlite:///<storage.path>/mlflow.db (never the file store)
    experiment: str | None = None  # default: the experiment name


BUNDLED_KINDS = ("digits", "fashion_mnist")  # no data.train / data.val: the module finds them
STORAGE_SCHEMES = ("s3", "gs", "gcs")  # resolved by pyarrow.fs (Ray's storage layer)


class StorageConfig(Strict):
    """Where Tune keeps trial checkpoints and results: shared by every node of a cluster.

    ``path`` is a local or mounted (NFS) directory, or ``s3://bucket/prefix`` /
    ``gs://bucket/prefix`` (pyarrow resolves it; credentials come from the usual environment
    or instance role). With a URI, the driver's own files (teacher weights, ``sweep.json``, the
    Pareto tables, the tracking outbox, the default SQLite) live in ``local_dir``.
    """

    path: str = "results"  # Ray storage_path; the sweep lives in <path>/<name>
    local_dir: Path = Path("results")  # driver-side state when path is a URI

    @property
    def is_uri(self) -> bool:
        return "://" in self.path


class Experiment(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    search: SearchSchedule = SearchSchedule()
    finetune: FinetuneSchedule
    search_space: SearchSpace
    sweep: SweepConfig = SweepConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()

    @property
    def sweep_dir(self) -> Path:
        """The driver's directory of this sweep (Tune's too, unless storage is a URI)."""
        base = self.storage.local_dir if self.storage.is_uri else Path(self.storage.path)
        return base / self.name

    @property
    def storage_uri(self) -> str:
        """Tune's ``storage_path``: an absolute local path or an s3:// / gs:// URI."""
        s = self.storage
        if s.is_uri:
            base, sep, query = s.path.partition("?")
            return f"{base.rstrip('/')}{sep}{query}"
        return str(Path(s.path).resolve())

    @property
    def tune_dir(self) -> str:
        """Where Tune keeps this sweep (what ``Tuner.restore`` / ``can_restore`` take).

        A URI may carry pyarrow options after ``?`` (``endpoint_override=...&scheme=http`` for
        MinIO or another S3-compatible store); the sweep's name goes before them.
        """
        base, sep, query = self.storage_uri.partition("?")
        return f"{base.rstrip('/')}/{self.name}{sep}{query}"

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image: channels from ``model.kwargs.in_chans``."""
        return (self.model.kwargs.get("in_chans", 3), self.model.img_size, self.model.img_size)

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.sweep_dir.parent.resolve() / 'mlflow.db'}"


# ----------------------------------------------------------------------------- loading
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


def _expand_paths(raw: dict, source: str) -> None:
    """``~`` and ``$VAR`` in path fields, so one YAML serves machines with different mounts.

    Paths become absolute (against the current directory) here, in the driver: Ray runs each
    trial in its own working directory, where a relative path would point elsewhere.
    """
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
    if config.teacher.epochs == 0 and not (config.teacher.checkpoint or config.model.checkpoint):
        raise ConfigError(
            source,
            "teacher.epochs",
            "must be > 0 when neither "
            "model.checkpoint nor teacher.checkpoint is given (nothing to prune)",
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
            check_point(config.search_space, point)
        except ValueError as err:
            raise ConfigError(source, f"sweep.points_to_evaluate[{i}]", str(err)) from None
    if config.resources.gpus_per_trial > 1 and config.resources.gpus_per_trial % 1:
        raise ConfigError(source, "resources.gpus_per_trial", "above 1 it must be a whole number")


def check_inputs(config: Experiment, source: str | Path) -> None:
    """What the schema cannot know: the model exists in timm and the input files exist."""
    import timm

    import prune_core  # noqa: F401  (registers the FLatten models with timm)

    if not timm.is_model(config.model.name):
        raise ConfigError(source, "model.name", f"unknown timm model {config.model.name!r}")
    files = [
        ("model.checkpoint", config.model.checkpoint),
        ("teacher.checkpoint", config.teacher.checkpoint),
    ]
    for field, path in files:
        if path is not None and not path.is_file():
            raise ConfigError(source, field, f"no such file: {path}")
    if config.data.kind == "fashion_mnist":
        from prune_core.fashion_mnist import load_fashion_mnist

        field = "data.root" if config.data.root else "data.kind"
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
        from orchestrator.data import resolve_split

        for split in ("train", "val"):
            try:
                resolve_split(config.data, split)
            except FileNotFoundError as err:
                raise ConfigError(source, f"data.{split}", str(err)) from None
