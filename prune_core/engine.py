"""Search, finalize, train/fine-tune, evaluate: plain PyTorch loops (DESIGN §3.4).

``search`` trains the pruning indicator (and the weights) against a MAC target with
L = L_task(+distillation) + λ·penalty(MACs/MACs_full, t_s), where the running target t_s
descends linearly from 1 to t over the first ``ramp_fraction`` of the steps, then holds.
``finalize`` turns the learned scores into hard, head-aligned masks that meet the target.
``train`` is one loop for the teacher and the fine-tune (distillation when a teacher is given),
resumable from the state it hands to ``on_epoch``. CUDA with bf16 autocast when present.
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

from prune_core.attention import gated_modules
from prune_core.indicator import GateMode
from prune_core.init import update_similarity
from prune_core.macs import MacModel, count_macs, count_params
from prune_core.surgery import Plan, current_plan

PENALTIES = ("squared", "one_sided", "log")


@dataclass
class SearchConfig:
    target: float
    steps: int = 300
    lr: float = 5e-4
    logit_lr: float = 0.1
    mac_loss_weight: float = 10.0
    penalty: str = "squared"
    ramp_fraction: float = 0.6
    sim_temperature: float = 1.0
    sim_every: int = 50
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    use_reweight: bool = True
    tolerance: float = 0.02
    round_to: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_target(self.target)
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.steps < 1 or not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError("steps must be >= 1 and ramp_fraction in (0, 1]")


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    seed: int = 0


def check_target(target: float) -> None:
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"MAC target must be in (0, 1], got {target}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def default_device(device: str | torch.device | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled,
                    transient=True)


def _cycle(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader


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


def task_loss(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, alpha: float,
              temperature: float, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy, blended with soft-label distillation from the unpruned teacher."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                  reduction="batchmean", log_target=True) * t * t
    return (1 - alpha) * ce + alpha * kd


def mac_penalty(ratio: Tensor, target: float, kind: str) -> Tensor:
    if kind == "squared":  # pulls from both sides: neither over- nor under-shoots
        return (ratio - target) ** 2
    if kind == "one_sided":
        return F.relu(ratio - target) ** 2
    return (torch.log(ratio) - math.log(target)) ** 2


def running_target(step: int, config: SearchConfig) -> float:
    ramp = max(1, round(config.ramp_fraction * config.steps))
    return 1.0 - (1.0 - config.target) * min(1.0, step / ramp)


def _teacher_logits(teacher: nn.Module | None, images: Tensor) -> Tensor | None:
    if teacher is None:
        return None
    with torch.no_grad():
        return teacher(images).float()


def search(model: nn.Module, loader: DataLoader, input_size: tuple[int, int, int],
           config: SearchConfig, *, teacher: nn.Module | None = None,
           device: str | torch.device | None = None,
           on_step: Callable[[int, dict], None] | None = None,
           progress: bool = True) -> list[dict]:
    """Learn which channels to keep (and adapt the weights) against the MAC target."""
    seed_everything(config.seed)
    device = default_device(device)
    model.to(device)
    modules = gated_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no prunable modules: call make_prunable")
    macs = MacModel(model, input_size)
    gates = [g for m in modules.values() for g in m.gates.values()]
    reweights = [p for m in modules.values() for n, p in m.named_parameters(recurse=False)
                 if n.endswith("reweight")]
    logits = [g.logits for g in gates]
    special = {id(p) for p in logits + reweights}
    weights = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    for p in reweights:
        p.requires_grad_(config.use_reweight)
    groups = [{"params": weights, "lr": config.lr, "weight_decay": 0.05},
              {"params": logits, "lr": config.logit_lr, "weight_decay": 0.0}]
    if config.use_reweight:
        groups.append({"params": reweights, "lr": config.logit_lr / 5, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups)
    if teacher is not None:
        teacher.to(device).eval()
    for g in gates:
        g.mode = GateMode.SEARCH
    batches = _cycle(loader)
    calib = next(iter(loader))[0].to(device)
    history = []
    model.train()
    with _progress(progress) as bar:
        task = bar.add_task(f"search → {config.target:.2f} MACs", total=config.steps, info="")
        for step in range(config.steps):
            if config.sim_every and step % config.sim_every == 0 and step > 0:
                update_similarity(model, calib, config.sim_temperature)
                model.train()
            images, labels = (t.to(device) for t in next(batches))
            target_now = running_target(step, config)
            with _autocast(device):
                out = model(images).float()
                loss_task = task_loss(out, labels, _teacher_logits(teacher, images),
                                      config.distill_alpha, config.distill_temperature)
            ratio = macs.soft_total() / macs.full
            loss_mac = config.mac_loss_weight * mac_penalty(ratio, target_now, config.penalty)
            if not torch.isfinite(loss_task + loss_mac):
                raise FloatingPointError(f"search loss is {float(loss_task + loss_mac)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            (loss_task + loss_mac).backward()
            optimizer.step()
            record = {"step": step, "loss": loss_task.item(), "mac_loss": loss_mac.item(),
                      "soft_ratio": ratio.item(), "macs_ratio": macs.ratio(),
                      "target_now": target_now}
            history.append(record)
            if on_step is not None:
                on_step(step, record)
            bar.update(task, advance=1, info=f"loss {record['loss']:.3f} "
                       f"MACs {record['macs_ratio']:.3f}/{target_now:.3f}")
    return history


def _legal_widths(channels: int, round_to: int, min_keep: int) -> list[int]:
    """Widths a head may keep: multiples of ``round_to`` (and the full width), >= min_keep."""
    step = round_to if channels >= round_to else 1
    legal = {w for w in range(step, channels + 1, step) if w >= min_keep} | {channels}
    return sorted(legal)


def finalize(model: nn.Module, input_size: tuple[int, int, int], target: float, *,
             tolerance: float = 0.02, round_to: int = 1) -> Plan:
    """Hard, head-aligned masks from the learned scores, within [t - tol, t] of full MACs.

    Starts from the count each gate learned (Σs / H, rounded to ``round_to``), then greedily
    drops the lowest-ranked channel step (mean e of the units it removes, one per head) while
    over budget, and restores the highest-ranked ones while more than ``tolerance`` under.
    """
    check_target(target)
    macs = MacModel(model, input_size)
    gates = {(name, g): gate for name, m in gated_modules(model).items()
             for g, gate in m.gates.items()}
    rankings = {key: gate.ranking().detach().sort(dim=1, descending=True).values
                for key, gate in gates.items()}
    legal = {key: _legal_widths(gate.channels, round_to, gate.min_keep)
             for key, gate in gates.items()}
    widths: dict[str, dict[str, int]] = {}
    for (name, g), gate in gates.items():
        k = gate.count_from_scores() if gate.mode is GateMode.SEARCH else gate.kept_per_head()
        widths.setdefault(name, {})[g] = min(legal[(name, g)], key=lambda w: abs(w - k))

    def unit_score(key: tuple[str, str], k: int) -> float:  # ranking of the k-th best unit
        return float(rankings[key][:, k - 1].mean())

    def neighbour(key: tuple[str, str], direction: int) -> int | None:
        options = legal[key]
        i = options.index(widths[key[0]][key[1]]) + direction
        return options[i] if 0 <= i < len(options) else None

    budget = target * macs.full
    while macs.total(widths) > budget:
        drops = []
        for key in gates:
            lower = neighbour(key, -1)
            if lower is not None:
                k = widths[key[0]][key[1]]
                score = sum(unit_score(key, j) for j in range(lower + 1, k + 1))
                drops.append((score, key, lower))
        if not drops:
            floor = macs.total(widths) / macs.full
            raise ValueError(f"MAC target {target} is below what this model can reach "
                             f"({floor:.3f} of full MACs with every head at its minimum width)")
        _, (name, g), lower = min(drops)
        widths[name][g] = lower
    while macs.total(widths) < (target - tolerance) * macs.full:
        restores = []
        for key in gates:
            upper = neighbour(key, +1)
            if upper is None:
                continue
            trial = {n: dict(w) for n, w in widths.items()}
            trial[key[0]][key[1]] = upper
            if macs.total(trial) <= budget:
                restores.append((unit_score(key, upper), key, upper))
        if not restores:
            break
        _, (name, g), upper = max(restores)
        widths[name][g] = upper
    for (name, g), gate in gates.items():
        gate.set_hard(gate.topk_mask(widths[name][g]))
    return current_plan(model)


def fold_reweights(model: nn.Module) -> None:
    for module in gated_modules(model).values():
        module.fold_reweight_()


def _lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def train(model: nn.Module, loader: DataLoader, config: TrainConfig, *,
          teacher: nn.Module | None = None, eval_loader: DataLoader | None = None,
          device: str | torch.device | None = None,
          on_epoch: Callable[[int, dict, dict], None] | None = None,
          resume_state: dict | None = None, progress: bool = True) -> list[dict]:
    """Train or fine-tune (with distillation when ``teacher`` is given); resumable."""
    seed_everything(config.seed)
    device = default_device(device)
    model.to(device)
    pruning = {id(p) for m in gated_modules(model).values() for p in m.gates.parameters()}
    params = [p for p in model.parameters() if id(p) not in pruning and p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
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
    with _progress(progress) as bar:
        task = bar.add_task("fine-tune" if teacher is not None else "train",
                            total=config.epochs, completed=start, info="")
        for epoch in range(start, config.epochs):
            seed_everything(config.seed + epoch)  # a resumed run sees the same batches
            model.train()
            total, count = 0.0, 0
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                with _autocast(device):
                    out = model(images).float()
                    loss = task_loss(out, labels, _teacher_logits(teacher, images),
                                     config.distill_alpha, config.distill_temperature,
                                     config.label_smoothing)
                if not all_finite(loss):
                    where = "" if not torch.isfinite(loss) else " on another data-parallel rank"
                    raise FloatingPointError(f"loss is not finite{where} at epoch {epoch}"
                                             f" (here {float(loss)})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(labels)
                count += len(labels)
            metrics = {"epoch": epoch, "train_loss": total / max(1, count),
                       "lr": scheduler.get_last_lr()[0]}
            if eval_loader is not None:
                metrics["top1"] = accuracy(model, eval_loader, device)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics, {"epoch": epoch, "model": model.state_dict(),
                                          "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict()})
            bar.update(task, advance=1, info=" ".join(f"{k} {v:.3g}" for k, v in metrics.items()
                                                       if k != "epoch"))
    fold_reweights(model)
    return history


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader,
             device: str | torch.device | None = None) -> float:
    device = default_device(device)
    was_training = model.training
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        with _autocast(device):
            out = model(images.to(device))
        correct += int((out.argmax(-1).cpu() == labels).sum())
        seen += len(labels)
    model.train(was_training)
    return 100.0 * correct / max(1, seen)


@torch.no_grad()
def throughput(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 64,
               device: str | torch.device | None = None, min_run_time: float = 0.5) -> float:
    """Images per second: median of repeated timed runs after warm-up (torch.utils.benchmark)."""
    from torch.utils import benchmark  # imported here: at module load it warns on CPU machines

    device = default_device(device)
    was_training = model.training
    model.eval().to(device)
    x = torch.randn(batch_size, *input_size, device=device)
    with _autocast(device):
        for _ in range(3):
            model(x)
        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x})
        median = timer.blocked_autorange(min_run_time=min_run_time).median
    model.train(was_training)
    return batch_size / median


def evaluate(model: nn.Module, loader: DataLoader, input_size: tuple[int, int, int], *,
             device: str | torch.device | None = None, throughput_batch: int = 64) -> dict:
    """top1 (percent), MACs and params of one image, images/s at ``throughput_batch``."""
    return {"top1": accuracy(model, loader, device),
            "macs": count_macs(model, input_size),
            "params": count_params(model),
            "throughput": throughput(model, input_size, throughput_batch, device)}
