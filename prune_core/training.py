"""Train/fine-tune and evaluate: plain PyTorch loops, and the pieces the search shares.

``train`` is one loop for the teacher and the fine-tune (distillation when a teacher is given),
resumable from the state it hands to ``on_epoch``. CUDA with bf16 autocast when present. The
search itself lives in ``prune_core.pruning_search``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn
from torch.utils.data import DataLoader

from prune_core.macs import count_macs, count_params
from prune_core.optim import weight_decay_groups
from prune_core.prunable import prunable_modules
from prune_core.reweight import reweights


@dataclass
class TrainConfig:
    """Settings of a training run (teacher) or a fine-tune (student, with a teacher).

    Attributes:
        epochs: passes over the loader; lr: peak AdamW learning rate (cosine after warm-up).
        weight_decay: AdamW decay; norms, biases, positional tables, bias tables and
            per-channel scales are exempt (timm's convention, ``prune_core.optim``).
        warmup_epochs: linear warm-up; label_smoothing: of the cross-entropy.
        distill_alpha, distill_temperature: soft-label distillation when a teacher is given.
        seed: re-seeds the global generators at the start and at every epoch (resumable).
    """

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    seed: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def default_device(device: str | torch.device | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def _no_batch(loader, what: str) -> ValueError:
    """The error for a loader without a batch, with the numbers that explain it."""
    dataset, size = getattr(loader, "dataset", None), getattr(loader, "batch_size", None)
    try:
        samples = f"{len(dataset)} samples" if dataset is not None else "no length"
    except TypeError:  # an IterableDataset without __len__
        samples = "an iterable dataset"
    drop = ", drop_last" if getattr(loader, "drop_last", False) else ""
    return ValueError(
        f"{what}: the loader yields no batch ({samples}, batch_size {size}{drop}); "
        "a smaller batch size or more data"
    )


def require_batches(loader, what: str) -> None:
    """ValueError when ``loader`` is known to yield no batch (``len`` 0: e.g. fewer samples
    than ``batch_size`` with ``drop_last``). A loader without ``len`` is checked as it is
    read (``train``, ``batches_forever``)."""
    try:
        count = len(loader)
    except TypeError:
        return
    if count == 0:
        raise _no_batch(loader, what)


def batches_forever(loader: DataLoader, what: str = "search") -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches, pass after pass; ValueError if a pass yields none (it would
    otherwise spin forever on an empty loader)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise _no_batch(loader, what)


def all_finite(loss: Tensor) -> bool:
    """Whether ``loss`` is finite on every data-parallel rank (just this one when alone).

    Ranks must agree: one rank stopping before ``backward`` while the others wait in DDP's
    gradient all-reduce would hang them until the collective times out.
    """
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def task_loss(
    logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy, blended with soft-label distillation from the unpruned teacher."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = temperature
    kd = (
        F.kl_div(
            F.log_softmax(logits / t, -1),
            F.log_softmax(teacher_logits / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
    return (1 - alpha) * ce + alpha * kd


def logits_of(output: object) -> Tensor:
    """Class scores (B, classes) from a model's output: the tensor itself (timm, prune_core),
    or the ``logits`` field of a Hugging Face output object (``ImageClassifierOutput``).

    Raises:
        ValueError: an output with neither, such as a base ``*Model``'s hidden states (search,
            fine-tuning and accuracy need a classifier: ``*ForImageClassification``).
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ValueError(
        f"the model's output ({type(output).__name__}) has no class scores: training, search "
        "and accuracy need a classifier (a tensor, or an output with logits, such as a "
        "transformers *ForImageClassification)"
    )


def teacher_forward(teacher: nn.Module | None, images: Tensor) -> Tensor | None:
    if teacher is None:
        return None
    with torch.no_grad():
        return logits_of(teacher(images)).float()


def student_loss(
    model: nn.Module,
    teacher: nn.Module | None,
    images: Tensor,
    labels: Tensor,
    config: object,
    device: torch.device,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``task_loss`` of one batch under ``autocast``: ``model``'s float32 logits, distilled
    from ``teacher``'s (when given) by ``config.distill_alpha`` and ``distill_temperature``
    (a ``TrainConfig`` or a ``SearchConfig``: fine-tuning and search train the same way)."""
    with autocast(device):
        out = logits_of(model(images)).float()
        return task_loss(
            out,
            labels,
            teacher_forward(teacher, images),
            config.distill_alpha,
            config.distill_temperature,
            label_smoothing,
        )


def fold_reweights(model: nn.Module) -> None:
    """Fold every reweight into its weights (outputs unchanged; reweights become 1)."""
    for module in prunable_modules(model).values():
        module.fold_reweight_()


def _lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def train(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    eval_loader: DataLoader | None = None,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, dict, dict], None] | None = None,
    resume_state: dict | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train or fine-tune (with distillation when ``teacher`` is given); resumable.

    Side effects: re-seeds the global generators (``config.seed`` + epoch) so that a resumed
    run sees the same batches, calls ``loader.sampler.set_epoch(epoch)`` when the sampler has
    it (a ``DistributedSampler`` then shuffles each epoch anew, as PyTorch's DDP recipe asks),
    and folds the reweights into the weights at the end (outputs unchanged). Gate logits are
    never trained here; frozen reweights stay frozen. Raises FloatingPointError on a
    non-finite loss (on any data-parallel rank); ValueError when the loader yields no batch
    (nothing would be trained, silently).
    """
    require_batches(loader, "train")
    seed_everything(config.seed)
    device = default_device(device)
    model.to(device)
    gate_params = {id(p) for m in prunable_modules(model).values() for p in m.gates.parameters()}
    rw = [p for r in reweights(model) if r.trainable for p in r.parameters()]
    groups = weight_decay_groups(model, config.weight_decay, gate_params | {id(p) for p in rw})
    if rw:  # a scale, not a weight: never decayed
        groups.append({"params": rw, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, len(loader)))
    start = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start = resume_state["epoch"] + 1
    if teacher is not None:
        teacher.to(device).eval()
    history = []
    with progress_bar(progress) as bar:
        task = bar.add_task(
            "fine-tune" if teacher is not None else "train",
            total=config.epochs,
            completed=start,
            info="",
        )
        for epoch in range(start, config.epochs):
            seed_everything(config.seed + epoch)  # a resumed run sees the same batches
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: without it, every epoch
                sampler.set_epoch(epoch)  # repeats the first epoch's order on every rank
            model.train()
            total, count = 0.0, 0
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                loss = student_loss(
                    model, teacher, images, labels, config, device, config.label_smoothing
                )
                if not all_finite(loss):
                    where = "" if not torch.isfinite(loss) else " on another data-parallel rank"
                    raise FloatingPointError(
                        f"loss is not finite{where} at epoch {epoch} (here {float(loss)})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(labels)
                count += len(labels)
            if count == 0:  # a loader without len() that turned out empty
                raise _no_batch(loader, "train")
            metrics = {
                "epoch": epoch,
                "train_loss": total / max(1, count),
                "lr": scheduler.get_last_lr()[0],
            }
            if eval_loader is not None:
                metrics["top1"] = accuracy(model, eval_loader, device)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(
                    epoch,
                    metrics,
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                )
            bar.update(
                task,
                advance=1,
                info=" ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k != "epoch"),
            )
    fold_reweights(model)
    return history


@torch.no_grad()
def accuracy(
    model: nn.Module, loader: DataLoader, device: str | torch.device | None = None
) -> float:
    """Top-1 accuracy in percent over ``loader`` (eval mode; the mode is restored)."""
    device = default_device(device)
    was_training = model.training
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        with autocast(device):
            out = logits_of(model(images.to(device)))
        correct += int((out.argmax(-1).cpu() == labels).sum())
        seen += len(labels)
    model.train(was_training)
    return 100.0 * correct / max(1, seen)


@torch.no_grad()
def throughput(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    min_run_time: float = 0.5,
) -> float:
    """Images per second: median of repeated timed runs after warm-up (torch.utils.benchmark)."""
    from torch.utils import benchmark  # imported here: at module load it warns on CPU machines

    device = default_device(device)
    was_training = model.training
    model.eval().to(device)
    x = torch.randn(batch_size, *input_size, device=device)
    with autocast(device):
        for _ in range(3):
            model(x)
        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x})
        median = timer.blocked_autorange(min_run_time=min_run_time).median
    model.train(was_training)
    return batch_size / median


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    input_size: tuple[int, int, int],
    *,
    device: str | torch.device | None = None,
    throughput_batch: int = 64,
) -> dict:
    """top1 (percent), MACs and params of one image, images/s at ``throughput_batch``."""
    return {
        "top1": accuracy(model, loader, device),
        "macs": count_macs(model, input_size),
        "params": count_params(model),
        "throughput": throughput(model, input_size, throughput_batch, device),
    }
