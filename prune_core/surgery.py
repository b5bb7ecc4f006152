"""Plans and surgery: masked model -> smaller dense model (docs/method.md §3, §6).

A :class:`Plan` is the whole pruning decision as data: for every prunable module and group,
the kept channel indices of each head. It round-trips through JSON, so a pruned model is
portable as ``plan.json`` + a plain ``state_dict`` (loaded with ``weights_only=True``, no pickled
modules), and it is what baselines (``magnitude_plan``, ``random_plan``) and the method hand to
``apply_plan``. ``prune`` folds the reweights, then asks every module to slice itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prune_core._atomic import atomic_write
from prune_core.attention import attention_modules
from prune_core.indicator import GateMode
from prune_core.macs import MacModel
from prune_core.prunable import GROUPS, PrunableModule, check_kept, prunable_modules
from prune_core.scoring import unit_magnitude

Kept = dict[str, list[list[int]]]  # group -> kept channel indices per head

PLAN_VERSION = 1


@dataclass
class Plan:
    """Kept channel indices per layer (module path) and group (``qk``, ``v``, ``mlp``)."""

    layers: dict[str, Kept] = field(default_factory=dict)

    def widths(self) -> dict[str, dict[str, int]]:
        return {
            name: {g: len(rows[0]) for g, rows in groups.items()}
            for name, groups in self.layers.items()
        }

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "layers": self.layers}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
            layers = data["layers"]
            plan = cls(
                {
                    name: {
                        g: [[_channel(c) for c in row] for row in rows]
                        for g, rows in groups.items()
                    }
                    for name, groups in layers.items()
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a pruning plan: {err}") from None
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')} is not {PLAN_VERSION}")
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.to_json())  # a reader never sees a half-written file

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"plan file not found: {path}")
        try:
            return cls.from_json(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _channel(value: object) -> int:
    """A channel index from JSON: an integer, never a float or bool (3.9 must not become 3)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"channel index {value!r} is not an integer")
    return value


def _require_prunable(model: nn.Module) -> dict[str, PrunableModule]:
    modules = prunable_modules(model)
    if not attention_modules(model):
        raise ValueError(
            f"{type(model).__name__} has no prunable attention: call "
            "prune_core.make_prunable(model) first"
        )
    return modules


def current_plan(model: nn.Module) -> Plan:
    """The plan the gates currently encode (all channels for gates that are off)."""
    return Plan(
        {
            name: {g: gate.kept_indices() for g, gate in m.gates.items()}
            for name, m in _require_prunable(model).items()
        }
    )


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Set hard masks from a plan; every layer of the model must be in it, and only those."""
    modules = _require_prunable(model)
    missing = sorted(set(modules) - set(plan.layers))
    extra = sorted(set(plan.layers) - set(modules))
    if missing or extra:
        raise ValueError(
            f"plan does not fit the model: missing layers {missing[:4]}, unknown layers {extra[:4]}"
        )
    for name, module in modules.items():
        groups = plan.layers[name]
        if set(groups) != set(module.gates):
            raise ValueError(
                f"plan does not fit layer {name}: groups {sorted(groups)} vs {sorted(module.gates)}"
            )
        for g, gate in module.gates.items():
            rows = groups[g]
            try:
                check_kept(f"{name}.{g}", rows, gate.num_heads, gate.channels, gate.aligned)
            except ValueError as err:
                raise ValueError(f"plan does not fit the model: {err}") from None
            mask = torch.zeros(gate.num_heads, gate.channels)
            for h, row in enumerate(rows):
                mask[h, row] = 1.0
            gate.set_hard(mask)
    return model


def _check_keep(keep: float | dict[str, float]) -> dict[str, float]:
    """Per-group keep ratios; an unknown group name is an error, not a silent no-op."""
    ratios = keep if isinstance(keep, dict) else dict.fromkeys(GROUPS, keep)
    unknown = sorted(set(ratios) - set(GROUPS))
    if unknown:
        raise ValueError(
            f"unknown group {', '.join(map(repr, unknown))} in keep ratios: the groups are "
            f"{', '.join(GROUPS)} (qk: query/key channels, v: value channels, mlp: hidden units)"
        )
    for g, r in ratios.items():
        if isinstance(r, bool) or not 0.0 < float(r) <= 1.0:
            raise ValueError(f"keep ratio for {g} must be in (0, 1], got {r!r}")
    return ratios


def _keep_count(ratio: float, channels: int, where: str) -> int:
    k = round(ratio * channels)
    if k < 1:
        raise ValueError(
            f"keep ratio {ratio} leaves {where} with an empty head ({channels} channels per head)"
        )
    return k


def magnitude_plan(model: nn.Module, keep: float | dict[str, float]) -> Plan:
    """Uniform L1-magnitude baseline: every layer keeps ``keep`` of each group, per head.

    A unit's importance is the L1 norm of the weights that produce and consume it, so the
    baseline needs no data. ``keep`` is one ratio or one per group (``qk``/``v``/``mlp``; a
    group left out keeps every channel).

    Raises:
        ValueError: an unknown group name, a ratio outside (0, 1], or a head left empty.
    """
    ratios = _check_keep(keep)
    plan = Plan()
    for name, module in _require_prunable(model).items():
        plan.layers[name] = {}
        for g, gate in module.gates.items():
            k = _keep_count(float(ratios.get(g, 1.0)), gate.channels, f"{name}.{g}")
            scores = unit_magnitude(module, g).to(gate.similarity)
            if gate.aligned:
                scores = scores.sum(0, keepdim=True).expand_as(scores)
            idx = scores.topk(k, dim=1).indices.sort(dim=1).values
            plan.layers[name][g] = idx.tolist()
    return plan


def uniform_keep(model: nn.Module, input_size: tuple[int, int, int], target: float) -> float:
    """The largest single keep ratio whose :func:`magnitude_plan` is at or under ``target``
    of the model's MACs (bisection on the MAC model; a uniform ratio cannot hit it exactly)."""
    macs = MacModel(model, input_size)
    lo, hi, best = 0.0, 1.0, None
    for _ in range(30):
        mid = (lo + hi) / 2
        try:
            ratio = macs.total(magnitude_plan(model, mid).widths()) / macs.full
        except ValueError:  # a head would be left empty
            lo = mid
            continue
        lo, hi, best = (mid, hi, mid) if ratio <= target else (lo, mid, best)
    if best is None:
        raise ValueError(f"no uniform keep ratio reaches {target} of the MACs")
    return best


def random_plan(model: nn.Module, keep: float | dict[str, float], seed: int = 0) -> Plan:
    """Random channels with equal counts per head (a baseline for benchmarks)."""
    ratios = _check_keep(keep)
    generator = torch.Generator().manual_seed(seed)
    plan = Plan()
    for name, module in _require_prunable(model).items():
        plan.layers[name] = {}
        for g, gate in module.gates.items():
            k = _keep_count(float(ratios.get(g, 1.0)), gate.channels, f"{name}.{g}")
            rows = [
                torch.randperm(gate.channels, generator=generator)[:k].sort().values.tolist()
                for _ in range(gate.num_heads)
            ]
            if gate.aligned:
                rows = [rows[0]] * gate.num_heads
            plan.layers[name][g] = rows
    return plan


def prune(model: nn.Module) -> nn.Module:
    """Physically remove masked channels, in place; outputs equal the masked model's.

    Reweights are folded into the weights first (zero inference cost), then each module slices
    its parameters and updates its shape attributes (heads, widths), so the result is a plain
    dense model of the same classes with no masks left.
    """
    plan = current_plan(model)
    for name, module in prunable_modules(model).items():
        module.fold_reweight_()
        module.shrink_(plan.layers[name])
        for gate in module.gates.values():
            gate.mode = GateMode.OFF
    return model


def save_pruned(model: nn.Module, plan: Plan, directory: str | Path) -> None:
    """``plan.json`` + ``weights.pt`` (a plain state_dict), each written atomically."""
    directory = Path(directory)
    plan.save(directory / "plan.json")
    atomic_write(directory / "weights.pt", lambda tmp: torch.save(model.state_dict(), tmp))


def load_pruned(
    model: nn.Module, plan: Plan | str | Path, weights: str | Path | dict[str, torch.Tensor]
) -> nn.Module:
    """Rebuild a pruned model: ``model`` is a fresh prunable model of the same architecture.

    The plan gives the shapes (shrink), then the state dict fills them; ``torch.load`` runs
    with ``weights_only=True``, so a checkpoint can never execute code.
    """
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    apply_plan(model, plan)
    prune(model)
    if not isinstance(weights, dict):
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"weights file not found: {path}")
        weights = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"pruned weights do not fit the plan: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    return model
