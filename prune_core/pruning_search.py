"""The search for which channels to keep (docs/method.md §4), and ``search_plan``: the whole
pruning phase (initialize → search → finalize) driven by one ``SearchConfig``.

``search`` trains the pruning indicator (and the weights) against a MAC target with
L = L_task(+distillation) + λ·penalty(MACs/MACs_full, t_s), where the running target t_s
descends linearly from 1 to t over the first ``ramp_fraction`` of the steps, then holds. The
search starts at the full model: every gate is anchored (``ChannelGate.anchor_``), so the first
hard model keeps every channel and sits at exactly t_s = 1.

The MAC penalty and its step in proportion to each unit's cost (``mac_step``) are in
``mac_pressure.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from prune_core.calibration import INIT_MODES, initialize, update_similarity
from prune_core.finalize import finalize
from prune_core.indicator import ChannelGate, GateMode
from prune_core.mac_pressure import PENALTIES, MacPressure
from prune_core.macs import MacModel, check_target
from prune_core.optim import weight_decay_groups
from prune_core.prunable import GROUPS, check_groups, check_widths, prunable_modules
from prune_core.reweight import reweights
from prune_core.surgery import Plan
from prune_core.training import (
    batches_forever,
    default_device,
    progress_bar,
    require_batches,
    seed_everything,
    student_loss,
)

LOGIT_OPTIMIZERS = ("adamw", "sgd")
MAC_STEPS = ("joint", "cost_proportional")
QK_REWEIGHT_INITS = ("one", "sqrt_ratio")
# Default reweight lr = this × the weights' lr. It was logit_lr / 5 (0.02, 40× the weights):
# on Fashion-MNIST (short budget, 3 seeds) 4× gives 85.19 / 87.89 % top-1 right after pruning
# at 0.3 / 0.5 MACs against 84.71 / 87.31 %, and a higher top-1 after the fine-tune in all
# six (seed, target) cells (docs/method.md §8).
REWEIGHT_LR_FACTOR = 4.0


@dataclass
class SearchConfig:
    """Settings of the pruning phase: the indicator's init, the search, and the finalize.

    One object for the phase: ``search_plan`` passes the init fields to ``initialize`` and
    the finalize fields to ``finalize``; ``search`` alone reads only the search fields.

    Attributes:
        target: MAC target t, a fraction of the full model's MACs in (0, 1]; the search
            descends to it, the finalize lands in [t - tolerance, t].
        init_mode: how ``initialize`` scores channels, one of ``INIT_MODES``.
        init_scale: spread of the initial logits in units of the per-head standardised score.
        theta0: centre of the initial logits (0: s = sigmoid(θ) in its steep range).
        steps: search iterations (one batch each); they count against a training budget.
        lr: learning rate of the weights (AdamW) during the search.
        weight_decay: AdamW decay of the weights; norms, biases, positional tables and
            per-channel scales are exempt (timm's convention, ``prune_core.optim``).
        logit_lr: step size of the logits, for the task step and the MAC step alike.
        logit_optimizer: ``adamw`` or ``sgd`` (momentum 0.9) for the logits' task gradient.
        mac_loss_weight: λ of the MAC penalty.
        penalty: ``squared`` (pulls from both sides), ``one_sided`` (only above), ``log``.
        ramp_fraction: share of the steps over which t_s descends from 1 to t.
        sim_temperature: τ of the similarity weights; ``inf`` makes them uniform.
        sim_every: refresh the similarity weights every this many steps (0: never).
        similarity_to: ``all`` head-mates, or the ``kept`` ones at each refresh (a channel
            whose twin is already dropped is no longer redundant).
        distill_alpha, distill_temperature: soft-label distillation from the teacher.
        use_reweight: learn the reweights; False freezes them at 1 in every later phase.
        reweight_lr: learning rate of the reweights (None: ``REWEIGHT_LR_FACTOR`` × lr, a
            scale trained a little faster than the weights it multiplies; docs/method.md §8).
        qk_reweight_init: ``one``, or ``sqrt_ratio``: softmax qk reweights carry sqrt(d / k)
            for the current width k (q·kᵀ keeps its full-width variance).
        groups: which channel groups are pruned; the others stay at full width.
        min_width: minimum channels per head of a group, e.g. ``{"qk": 4}`` (default 1).
        tolerance: finalize lands in [t - tolerance, t] of the full MACs.
        round_to: finalize keeps widths that are multiples of this (8 for tensor cores).
        seed: seeds the batches and every random choice; same seed, same CPU, same plan.
    """

    target: float
    init_mode: str = "attn_leave_out"
    init_scale: float = 1.0
    theta0: float = 0.0
    steps: int = 300
    lr: float = 5e-4
    weight_decay: float = 0.05
    logit_lr: float = 0.1
    logit_optimizer: str = "adamw"
    mac_loss_weight: float = 10.0
    mac_step: str = "joint"
    penalty: str = "squared"
    ramp_fraction: float = 0.6
    sim_temperature: float = 1.0
    sim_every: int = 50
    similarity_to: str = "all"
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    use_reweight: bool = True
    reweight_lr: float | None = None
    qk_reweight_init: str = "one"
    groups: tuple[str, ...] = GROUPS
    min_width: dict[str, int] = field(default_factory=dict)
    tolerance: float = 0.02
    round_to: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_target(self.target)
        checks = (
            (self.penalty, PENALTIES, "penalty"),
            (self.logit_optimizer, LOGIT_OPTIMIZERS, "logit_optimizer"),
            (self.mac_step, MAC_STEPS, "mac_step"),
            (self.similarity_to, ("all", "kept"), "similarity_to"),
            (self.qk_reweight_init, QK_REWEIGHT_INITS, "qk_reweight_init"),
            (self.init_mode, INIT_MODES, "init_mode"),
        )
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.steps < 1 or not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError("steps must be >= 1 and ramp_fraction in (0, 1]")
        self.groups = tuple(self.groups)
        check_groups(self.groups, self.min_width)


def running_target(step: int, config: SearchConfig) -> float:
    """t_s: 1 at step 0, linearly down to ``config.target`` at ``ramp_fraction``, then flat."""
    ramp = max(1, round(config.ramp_fraction * config.steps))
    return 1.0 - (1.0 - config.target) * min(1.0, step / ramp)


def configure_gates(
    model: nn.Module, groups: Iterable[str], min_width: dict[str, int], mode: GateMode
) -> list[ChannelGate]:
    """Put the gates of ``groups`` in ``mode`` (others OFF, full width); return the active."""
    groups = set(groups)
    active = []
    for module in prunable_modules(model).values():
        for name, gate in module.gates.items():
            gate.min_keep = max(1, min(int(min_width.get(name, 1)), gate.channels))
            if name in groups:
                gate.mode = mode
                active.append(gate)
            else:
                gate.mode = GateMode.OFF
    return active


def _optimizer(
    model: nn.Module, logits: list[nn.Parameter], config: SearchConfig
) -> torch.optim.Optimizer:
    """Weights (timm decay groups) and reweights in AdamW; logits in their own optimiser."""
    rw = [p for r in reweights(model) for p in r.parameters()]
    for r in reweights(model):
        r.trainable = config.use_reweight
    special = {id(p) for p in logits + rw}
    groups = [
        dict(g, lr=config.lr) for g in weight_decay_groups(model, config.weight_decay, special)
    ]
    if config.use_reweight and rw:
        groups.append(
            {
                "params": rw,
                "lr": config.reweight_lr or REWEIGHT_LR_FACTOR * config.lr,
                "weight_decay": 0.0,
            }
        )
    if config.logit_optimizer == "adamw":
        groups.append({"params": logits, "lr": config.logit_lr, "weight_decay": 0.0})
        return torch.optim.AdamW(groups)
    return _Pair(
        torch.optim.AdamW(groups), torch.optim.SGD(logits, lr=config.logit_lr, momentum=0.9)
    )


class _Pair(torch.optim.Optimizer):
    """Two optimisers stepped as one (weights in AdamW, logits in SGD)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable | None = None) -> None:
        for opt in self.optimizers:
            opt.step()


def search(
    model: nn.Module,
    loader: DataLoader,
    input_size: tuple[int, int, int],
    config: SearchConfig,
    *,
    teacher: nn.Module | None = None,
    calib: Tensor | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Learn which channels to keep (and adapt the weights) against the MAC target.

    Args:
        model: a prunable model (``make_prunable``), usually after ``initialize``.
        loader: training batches (images (B, C, H, W), labels (B,)); cycled.
        input_size: (C, H, W) of one image, for the MAC model.
        teacher: the unpruned model, for distillation (None: labels only).
        calib: the fixed calibration images (B, C, H, W) for the similarity refresh; None
            takes the loader's first batch (shuffled and augmented: pass the real one).
    Returns:
        One record per step: task ``loss``, ``mac_loss``, ``soft_ratio``, ``macs_ratio``
        (hard masks, before the step), ``target_now``.
    Raises:
        ValueError: no prunable module, or a loader that yields no batch;
        FloatingPointError: a non-finite loss.
    """
    seed_everything(config.seed)
    device = default_device(device)
    model.to(device)
    if not prunable_modules(model):
        raise ValueError(f"{type(model).__name__} has no prunable modules: call make_prunable")
    require_batches(loader, "search")
    gates = configure_gates(model, config.groups, config.min_width, GateMode.SEARCH)
    for module in prunable_modules(model).values():
        for gate in module.gates.values():
            gate.anchor_()  # the search starts at the full model (module doc)
        if hasattr(module, "qk_reweight") and not module.qk_reweight.positive:
            module.qk_reweight.width_compensation = config.qk_reweight_init == "sqrt_ratio"
    logits = [g.logits for g in gates]
    macs = MacModel(model, input_size)
    pressure = MacPressure(macs, logits)
    optimizer = _optimizer(model, logits, config)
    # AdamW normalises each logit's step, so the MAC term's raw size only sets its balance
    # against the task term; SGD steps by the raw gradient, which shrinks with the number of
    # units, so there it is normalised by the mean cost sensitivity (MacPressure.scale).
    joint_scale = 1.0 if config.logit_optimizer == "adamw" else 1.0 / pressure.scale
    if teacher is not None:
        teacher.to(device).eval()
    batches = batches_forever(loader, "search")
    calib = next(iter(loader), (None,))[0] if calib is None else calib
    if calib is None:
        raise ValueError("search: the loader yields no batch (and no calib was given)")
    calib = calib.to(device)
    history = []
    model.train()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"search → {config.target:.2f} MACs", total=config.steps, info="")
        for step in range(config.steps):
            if config.sim_every and step % config.sim_every == 0 and step > 0:
                update_similarity(
                    model, calib, config.sim_temperature, kept_only=config.similarity_to == "kept"
                )
                model.train()
            images, labels = (t.to(device) for t in next(batches))
            target_now = running_target(step, config)
            hard_ratio = macs.ratio()
            loss_task = student_loss(model, teacher, images, labels, config, device)
            ratio, loss_mac = pressure.loss(target_now, config.mac_loss_weight, config.penalty)
            if not torch.isfinite(loss_task + loss_mac):
                raise FloatingPointError(
                    f"search loss is {float(loss_task + loss_mac)} at step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            if config.mac_step == "joint":
                (loss_task + loss_mac * joint_scale).backward()
                optimizer.step()
            else:  # the task step, then the MAC step in proportion to cost (module doc)
                loss_task.backward()
                optimizer.step()
                pressure.step(loss_mac, config.logit_lr)
            record = {
                "step": step,
                "loss": loss_task.item(),
                "mac_loss": loss_mac.item(),
                "soft_ratio": ratio.item(),
                "macs_ratio": hard_ratio,
                "target_now": target_now,
            }
            history.append(record)
            if on_step is not None:
                on_step(step, record)
            bar.update(
                task,
                advance=1,
                info=f"loss {record['loss']:.3f} MACs {record['macs_ratio']:.3f}/{target_now:.3f}",
            )
    return history


def search_plan(
    model: nn.Module,
    loader: DataLoader,
    input_size: tuple[int, int, int],
    config: SearchConfig,
    *,
    calib: Tensor,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> tuple[Plan, list[dict]]:
    """The pruning phase from one config: ``initialize`` → ``search`` → ``finalize``.

    Args:
        model: a prunable model (``make_prunable``) at the teacher's weights; trained in place.
        loader, input_size, teacher, device, on_step, progress: as for ``search``.
        calib: (B, C, H, W) fixed, un-augmented calibration images, for the init scores and
            the similarity weights (at the start and at every refresh).
    Returns:
        The plan (every gate HARD or OFF, within [t - tolerance, t] of the full MACs) and the
        search's per-step records. ``prune(model)`` then removes the dropped channels.
    Raises:
        ValueError: no prunable module, a target below what minimum widths reach, or a
            ``min_width`` / ``round_to`` a head cannot hold (``prunable.check_widths``);
        FloatingPointError: a non-finite search loss.
    """
    # before the search is paid for: finalize would refuse these settings at its end
    check_widths(model, config.groups, config.min_width, config.round_to)
    initialize(
        model,
        calib,
        mode=config.init_mode,
        init_scale=config.init_scale,
        theta0=config.theta0,
        sim_temperature=config.sim_temperature,
    )
    history = search(
        model,
        loader,
        input_size,
        config,
        teacher=teacher,
        calib=calib,
        device=device,
        on_step=on_step,
        progress=progress,
    )
    plan = finalize(
        model,
        input_size,
        config.target,
        tolerance=config.tolerance,
        round_to=config.round_to,
        groups=config.groups,
        min_width=config.min_width,
    )
    return plan, history
