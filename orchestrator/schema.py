"""The experiment's schema: one pydantic model per YAML section, and ``Experiment`` for the file.

Strict (unknown keys are errors, instances are frozen). Reading a file, the one-line errors and
the rules that span sections are in ``orchestrator.config``; this module only says what each
section holds, with its defaults and ranges.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from orchestrator.space import (
    TUNABLE_SECTIONS,
    FloatSpace,
    Fraction,
    InitMode,
    LogitOptimizer,
    MacStep,
    NonNegative,
    Penalty,
    Positive,
    QkReweightInit,
    SimilarityTo,
    Strict,
    UnitInterval,
)

Channel = Annotated[int, Field(ge=0, le=255)]  # one 8-bit colour channel


class ModelConfig(Strict):
    # timm: name is a timm model; hf: a transformers image classifier, a save_pretrained
    # folder or a cached hub id, whose weights are the teacher (orchestrator/hf_model.py)
    source: Literal["timm", "hf"] = "timm"
    name: str
    num_classes: int = Field(ge=1)
    # required for timm; hf: the image processor's size when omitted (config.with_img_size),
    # and an explicit value must be that size (hf_model.check)
    img_size: int | None = Field(None, ge=8)
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
    # imagefolder / parquet: the colour transparent pixels (RGBA, LA, PA, a palette with
    # transparency) are composited on. Default ImageNet's mean, the grey the model's
    # normalisation maps to zero: content drawn dark or light on a transparent background both
    # stay visible, and what is transparent carries no signal (black, what convert("RGB") gave,
    # hid dark content entirely; white would hide light content).
    alpha_background: tuple[Channel, Channel, Channel] = (124, 116, 104)


def resolve_split(data: DataConfig, split: str) -> list[Path]:
    """The files (parquet) or the directory (imagefolder) of a split; FileNotFoundError if none."""
    where = getattr(data, split)
    if data.kind == "imagefolder":
        if not Path(where).is_dir():
            raise FileNotFoundError(f"no such directory: {where}")
        return [Path(where)]
    if Path(where).is_dir():
        files = sorted(Path(where).glob("*.parquet"))
    else:
        files = sorted(Path(p) for p in glob.glob(str(where)))
    if not files:
        raise FileNotFoundError(f"no parquet files at {where}")
    return files


class TeacherConfig(Strict):
    """The unpruned model: the starting point of every trial and its distillation teacher."""

    epochs: int = Field(0, ge=0)  # train (from model.checkpoint or from scratch) this long
    checkpoint: Path | None = None  # or a state dict of the unpruned model, as a whole
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class SearchSettings(Strict):
    """The pruning phase of a trial: every field of ``prune_core.SearchConfig`` but the seed.

    prune_core's docstring documents each setting; the ranges are checked here. A field typed
    as a space (Fraction, Positive, InitMode, ...) may be fixed or explored (space.py): making
    another setting explorable is changing its type here, nothing else.
    """

    target: Fraction  # MAC target, a fraction of the teacher's MACs
    init_mode: InitMode = InitMode(value="attn_leave_out")
    init_scale: NonNegative = NonNegative(value=1.0)
    theta0: FloatSpace = FloatSpace(value=0.0)
    steps: int = Field(300, ge=1)
    lr: Positive = Positive(value=5e-4)
    weight_decay: NonNegative = NonNegative(value=0.05)
    logit_lr: Positive = Positive(value=0.1)
    logit_optimizer: LogitOptimizer = LogitOptimizer(value="adamw")
    mac_loss_weight: Positive = Positive(value=10.0)
    mac_step: MacStep = MacStep(value="joint")
    penalty: Penalty = Penalty(value="squared")
    ramp_fraction: Fraction = Fraction(value=0.6)
    sim_temperature: Positive = Positive(value=1.0)
    sim_every: int = Field(50, ge=0)
    similarity_to: SimilarityTo = SimilarityTo(value="all")
    distill_alpha: UnitInterval = UnitInterval(value=0.5)
    distill_temperature: Positive = Positive(value=2.0)
    use_reweight: bool = True
    reweight_lr: Positive | None = None  # default: 4 × lr (SearchConfig)
    qk_reweight_init: QkReweightInit = QkReweightInit(value="one")
    groups: list[Literal["qk", "v", "mlp"]] = Field(["qk", "v", "mlp"], min_length=1)
    min_width: dict[Literal["qk", "v", "mlp"], int] = Field(default_factory=dict)
    tolerance: float = Field(0.02, ge=0, lt=1)
    round_to: int = Field(1, ge=1)

    @field_validator("min_width")
    @classmethod
    def _positive_widths(cls, widths: dict[str, int]) -> dict[str, int]:
        bad = {g: w for g, w in widths.items() if w < 1}
        if bad:
            raise ValueError(f"widths must be >= 1, got {bad}")
        return widths


class FinetuneSettings(Strict):
    """The fine-tune of a pruned model: ``prune_core.TrainConfig`` but the seed, plus
    ``workers``. Space-typed fields may be explored, as in ``SearchSettings``."""

    epochs: int = Field(ge=1)
    lr: Positive = Positive(value=1e-3)
    weight_decay: NonNegative = NonNegative(value=0.05)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    distill_alpha: UnitInterval = UnitInterval(value=0.5)
    distill_temperature: Positive = Positive(value=2.0)
    workers: int = Field(1, ge=1)  # > 1: Ray Train data-parallel fine-tune inside the trial


# The metrics in *every* report of every trial (search, each fine-tune epoch, the final one):
# checkpoint.Reporter refuses to send a report without them, and they (with what Tune adds to
# every result) are the only metrics ASHA can rank on: Tune stops the sweep at the first result
# that lacks the scheduler's metric, after the teacher and the first search were paid for.
REPORTED_METRICS = (
    "top1",
    "macs",
    "macs_ratio",
    "pruned_top1",
    "search_final_loss",
    "search_soft_ratio",
    "epoch",
    "fully_trained",
)
TUNE_METRICS = ("training_iteration", "time_total_s", "time_this_iter_s")  # Tune adds these


class AshaConfig(Strict):
    metric: str = "top1"  # one of REPORTED_METRICS or TUNE_METRICS
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    mac_buckets: int = Field(1, ge=1)  # rank trials only against trials of similar MACs

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        if metric not in REPORTED_METRICS + TUNE_METRICS:
            raise ValueError(
                f"{metric!r} is not reported by every trial; one of "
                f"{', '.join(REPORTED_METRICS + TUNE_METRICS)}"
            )
        return metric


class SweepConfig(Strict):
    num_samples: int = Field(12, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    population_size: int = Field(4, ge=2)  # NSGA-II generation size
    asha: AshaConfig | None = AshaConfig()
    max_failures: int = Field(1, ge=-1)  # retries of a failed trial (-1: forever)
    # Run the next trial in a finished trial's process: saves the worker start-up (a fresh
    # Python, torch and prune_core imports: seconds per trial on a small node). The two races
    # it exposed are fixed: a trial retried at once lost result.json rows (tuner.KeepTrialLogs)
    # and a trial Tune forgot with a killed driver stayed in the tables (TrialLogger LOST).
    reuse_actors: bool = True
    # The trials table, the front, pareto.png and the hypervolume are rewritten at most this
    # often (seconds) while trials finish, and once at the end: any number of trials finishing
    # in between costs one rewrite (trial_table.py). 0: after every finished trial.
    refresh_every_s: float = Field(10.0, ge=0)
    # Settings tried first, in order (Optuna's enqueue_trial): a baseline to compare against,
    # or a known-good point. Each is nested like the file ({search: {target: 0.5}}) and sets
    # explored parameters; the rest are sampled.
    points_to_evaluate: list[dict[str, dict[str, float | str]]] = []


class ResourcesConfig(Strict):
    num_cpus: int | None = Field(None, ge=1)  # only when Ray is started locally
    num_gpus: int | None = Field(None, ge=0)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)  # data-parallel fine-tune workers
    gpus_per_worker: float = Field(1.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)  # default: cpus_per_trial, rounded up
    # the teacher's threads; on a local Ray its task asks only for the CPUs the trial slots
    # leave (trials start beside it and wait for it: teacher_job.reserved_cpus)
    teacher_cpus: float = Field(1.0, gt=0)
    teacher_gpus: float = Field(0.0, ge=0)

    def threads(self, cpus: float | None = None) -> int:
        """torch threads for a process holding ``cpus`` Ray CPUs (default: a trial's): the one
        rule for trials, the teacher (``teacher_cpus``), the front's timing and data-parallel
        workers (``cpus_per_worker``): ``torch_threads`` when set, else the CPUs rounded up,
        at least 1 (1.5 CPUs: 2 threads, so the teacher trains and is timed alike)."""
        return self.torch_threads or max(
            1, math.ceil(self.cpus_per_trial if cpus is None else cpus)
        )


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
    search: SearchSettings
    finetune: FinetuneSettings
    sweep: SweepConfig = SweepConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()

    @property
    def tunable_sections(self) -> dict[str, Strict]:
        """The sections whose leaves may be distributions (space.py), by name."""
        return {name: getattr(self, name) for name in TUNABLE_SECTIONS}

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
