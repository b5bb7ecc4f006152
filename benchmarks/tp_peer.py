"""The peer: Torch-Pruning (``torch-pruning`` on PyPI) on the same model, to the same MACs.

What Torch-Pruning can and cannot do with ``flatten_vit_micro`` (checked by
``native_capability`` and reported in RESULTS.md):

- its dependency graph traces the MLPs (fc1 -> GELU -> fc2) natively and prunes their hidden
  channels;
- it cannot trace our attention modules (fused qkv split into [q | k | v], per-head reweights
  and masks, FLatten's kernel/positional encoding/depthwise conv): ``MetaPruner`` fails with an
  IndexError in the importance of the qkv group. MLP-only pruning cannot reach 0.5 MACs.

So that the peer competes at every target, each attention module is shown to Torch-Pruning as
timm's ``Attention`` holding the *same* ``qkv`` and ``proj`` Linear weights — the layer kind its
ViT recipe supports (``num_heads={qkv: H}``, head-dim pruning). For softmax blocks the stand-in
computes exactly our function; for FLatten blocks it exposes only qkv/proj (the kernel,
positional encoding and conv are invisible to it, which matters only for *which* channels its
magnitude importance picks). Torch-Pruning then chooses the channels (its graph, its grouping,
``MagnitudeImportance(p=2)``, local uniform or global ratio); the kept rows of its pruned qkv/fc1
are read back (exact row matching) into a prune_core ``Plan``, and prune_core's surgery realises
it on the real model, slicing the per-channel parameters Torch-Pruning could not see. Its
head-dim pruning removes the same positions from every head and ties q, k and v, so every plan
it makes is a valid dense multi-head model.

Besides magnitude (local / global ratio) the peer runs Torch-Pruning's *isomorphic* pruning
(``isomorphic=True``: channels ranked globally within each set of structurally identical groups,
Fang et al., ECCV 2024) with first-order Taylor importance |w·∂L/∂w|. The gradients come from
``taylor_grads``: a few backward passes of the cross-entropy through the **real** model (FLatten
blocks included; no weight is updated), copied onto the same qkv/proj/fc Linear weights the
stand-ins expose, so Torch-Pruning's Taylor score sees the gradient of the function we prune.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from timm.models.vision_transformer import Attention
from torch import nn

import prune_core as pc
from prune_core.attention import attention_modules


def _tp():
    try:
        import torch_pruning
    except ImportError as err:  # a benchmark-only extra
        raise SystemExit(
            "torch-pruning is not installed: pip install torch-pruning (the [bench] extra)"
        ) from err
    return torch_pruning


def _ignored_params(model: nn.Module) -> list[nn.Parameter]:
    """Pruning state Torch-Pruning must leave alone (gate logits, reweights)."""
    return [p for m in pc.prunable_modules(model).values() for p in m.pruning_parameters()]


class _StandIn(Attention):
    """timm ``Attention`` that also takes a Swin block's call ``attn(windows, mask=...)``.

    Torch-Pruning only traces it (its output is never used for accuracy), so the shift mask
    and the relative position bias, like FLatten's extra parameters, are invisible to it.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return super().forward(x, **kwargs)


def _stand_ins(model: nn.Module) -> dict[str, nn.Module]:
    """Replace every prunable attention by a timm ``Attention`` with the same qkv/proj."""
    replaced = {}
    for name, attn in attention_modules(model).items():
        if attn.qk_dim != attn.v_dim:
            raise ValueError(f"{name}: Torch-Pruning's recipe needs qk and v widths equal")
        stand_in = _StandIn(attn.dim, attn.num_heads, qkv_bias=attn.qkv.bias is not None)
        stand_in.fused_attn = False
        stand_in.qkv, stand_in.proj = attn.qkv, attn.proj
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, stand_in)
        replaced[name] = stand_in
    return replaced


def _kept_rows(pruned: torch.Tensor, original: torch.Tensor) -> list[int]:
    """Which original rows a pruned weight kept (exact match, in order)."""
    dist = torch.cdist(pruned.detach().double(), original.detach().double(), p=1)
    best = dist.argmin(dim=1)
    if float(dist.gather(1, best[:, None]).max()) > 0:
        raise RuntimeError("Torch-Pruning changed weights instead of slicing them")
    return best.tolist()


def taylor_grads(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """∂(cross-entropy)/∂w summed over ``batches``, per parameter name, for Taylor importance.

    Runs on a copy of ``model`` in eval mode (no dropout, no weight update).
    """
    work = copy.deepcopy(model).cpu().eval()
    work.zero_grad(set_to_none=True)
    for images, labels in batches:
        torch.nn.functional.cross_entropy(work(images), labels).backward()
    return {n: p.grad.detach().clone() for n, p in work.named_parameters() if p.grad is not None}


def plan_from_tp(
    model: nn.Module,
    input_size: tuple[int, int, int],
    ratio: float,
    *,
    global_pruning: bool = False,
    isomorphic: bool = False,
    grads: dict[str, torch.Tensor] | None = None,
    mlp_ratio: float | None = None,
) -> pc.Plan:
    """Torch-Pruning's choice at one pruning ratio, as a prune_core plan for ``model``.

    ``grads`` (from :func:`taylor_grads`): use ``TaylorImportance`` instead of L2 magnitude;
    ``isomorphic``: Torch-Pruning's isomorphic ranking scopes (implies global ranking);
    ``mlp_ratio``: a separate ratio for every MLP's hidden layer (Torch-Pruning's
    ``pruning_ratio_dict``, one local scope per fc1), ``ratio`` then applies to attention.
    """
    tp = _tp()
    work = copy.deepcopy(model).cpu().eval()
    if grads is not None:
        for n, p in work.named_parameters():
            if n in grads:
                p.grad = grads[n].clone()
    original = {n: m for n, m in pc.prunable_modules(model).items()}
    stand_ins = _stand_ins(work)
    num_heads = {a.qkv: original[n].num_heads for n, a in stand_ins.items()}
    ignored: list = [m for m in work.modules() if isinstance(m, (nn.Conv2d,))]
    head = work.get_classifier() if hasattr(work, "get_classifier") else work.head
    ignored += [head, *_ignored_params(work)]
    # Only qkv/proj and the MLPs are pruned, as in every other row: any other Linear (Swin's
    # patch merging) would otherwise let Torch-Pruning narrow a whole stage's residual width.
    pruned = {id(a.qkv) for a in stand_ins.values()} | {id(a.proj) for a in stand_ins.values()}
    for n in original:
        if n not in stand_ins:
            pruned |= {id(work.get_submodule(n).fc1), id(work.get_submodule(n).fc2)}
    ignored += [m for m in work.modules() if isinstance(m, nn.Linear) and id(m) not in pruned]
    example = torch.randn(1, *input_size)
    ratio_dict = None
    if mlp_ratio is not None:
        ratio_dict = {work.get_submodule(n).fc1: mlp_ratio for n in original if n not in stand_ins}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importance = (
            tp.importance.MagnitudeImportance(p=2)
            if grads is None
            else tp.importance.TaylorImportance()
        )
        pruner = tp.pruner.MetaPruner(
            work,
            example,
            importance=importance,
            pruning_ratio=ratio,
            global_pruning=global_pruning or isomorphic,
            isomorphic=isomorphic,
            num_heads=num_heads,
            prune_head_dims=True,
            prune_num_heads=False,
            ignored_layers=ignored,
            pruning_ratio_dict=ratio_dict,
        )
        pruner.step()
    plan = pc.Plan()
    for name, module in original.items():
        if name in stand_ins:
            H, d = module.num_heads, module.qk_dim
            rows = _kept_rows(stand_ins[name].qkv.weight, module.qkv.weight)
            kept: dict[str, dict[int, list[int]]] = {"q": {}, "k": {}, "v": {}}
            for r in rows:
                part, rem = divmod(r, H * d)
                h, c = divmod(rem, d)
                kept["qkv"[part]].setdefault(h, []).append(c)
            q = [sorted(kept["q"].get(h, [])) for h in range(H)]
            k = [sorted(kept["k"].get(h, [])) for h in range(H)]
            v = [sorted(kept["v"].get(h, [])) for h in range(H)]
            if q != k:
                raise RuntimeError(f"{name}: Torch-Pruning kept different q and k channels")
            plan.layers[name] = {"qk": q, "v": v}
        else:
            fc1 = work.get_submodule(name).fc1.weight
            plan.layers[name] = {"mlp": [sorted(_kept_rows(fc1, module.fc1.weight))]}
    return plan


def _ratio_of(model: nn.Module, plan: pc.Plan, input_size: tuple[int, int, int]) -> float:
    probe = copy.deepcopy(model)
    pc.apply_plan(probe, plan)
    return pc.MacModel(probe, input_size).ratio()


def tp_plan_at(
    model: nn.Module,
    input_size: tuple[int, int, int],
    target: float,
    *,
    global_pruning: bool = False,
    isomorphic: bool = False,
    grads: dict[str, torch.Tensor] | None = None,
    step: float = 0.04,
    refine: int = 6,
    tolerance: float | None = None,
) -> tuple[pc.Plan, float]:
    """The plan with the most MACs at or under ``target`` over Torch-Pruning's ratio.

    MACs are not monotone in the ratio under global pruning (at high ratios it spares the
    attention entirely), so: a grid over [0, 0.9], then bisection next to the best grid point.
    ``isomorphic`` and ``grads`` as in :func:`plan_from_tp`. With ``tolerance``, a result more
    than that under ``target`` is refined: under local pruning (one ratio for every layer, so
    the MACs move in coarse steps) the attention keeps that ratio and the MLPs get their own,
    bisected (``mlp_ratio``); under global ranking the bisection goes on (``4 * refine`` steps).
    """
    tried: list[tuple[float, float, pc.Plan]] = []

    def attempt(r: float, mlp: float | None = None) -> float:
        plan = plan_from_tp(
            model,
            input_size,
            r,
            global_pruning=global_pruning,
            isomorphic=isomorphic,
            grads=grads,
            mlp_ratio=mlp,
        )
        ratio = _ratio_of(model, plan, input_size)
        tried.append((r if mlp is None else mlp, ratio, plan))
        return ratio

    grid = [round(i * step, 4) for i in range(int(0.9 / step) + 1)]
    ratios = {r: attempt(r) for r in grid}
    under = [r for r in grid if ratios[r] <= target]
    if not under:
        raise ValueError(
            f"Torch-Pruning does not reach {target} of MACs (least: {min(ratios.values()):.3f})"
        )
    hi = max(under, key=lambda r: ratios[r])
    lo = max([r for r in grid if r < hi and ratios[r] > target], default=None)
    if lo is not None:
        for _ in range(refine):
            mid = (lo + hi) / 2
            if attempt(mid) <= target:
                hi = mid
            else:
                lo = mid
    best_r, ratio, plan = max((t for t in tried if t[1] <= target), key=lambda t: t[1])
    if tolerance is None or ratio >= target - tolerance:
        return plan, ratio
    if global_pruning or isomorphic:
        for _ in range(4 * refine):
            if lo is None or ratio >= target - tolerance:
                break
            mid = (lo + hi) / 2
            if attempt(mid) <= target:
                hi = mid
            else:
                lo = mid
            _, ratio, plan = max((t for t in tried if t[1] <= target), key=lambda t: t[1])
        return plan, ratio
    # local: attention at best_r; the MLPs' own ratio between 0 (full) and best_r
    del tried[:]
    tried.append((best_r, ratio, plan))
    lo_m, hi_m = 0.0, best_r  # MACs fall as the MLP ratio grows: lo_m over target, hi_m under
    if attempt(best_r, 0.0) <= target:
        lo_m = None
    for _ in range(4 * refine if lo_m is not None else 0):
        mid = (lo_m + hi_m) / 2
        if attempt(best_r, mid) <= target:
            hi_m = mid
        else:
            lo_m = mid
        if max(t[1] for t in tried if t[1] <= target) >= target - tolerance:
            break
    _, ratio, plan = max((t for t in tried if t[1] <= target), key=lambda t: t[1])
    return plan, ratio


def native_capability(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, str]:
    """What Torch-Pruning does with the model as it is (no stand-ins): one line per attempt."""
    tp = _tp()
    out = {}
    for scope in ("all", "mlp_only"):
        work = copy.deepcopy(model).cpu().eval()
        ignored: list = [work.head, *_ignored_params(work)]
        ignored += [m for m in work.modules() if isinstance(m, nn.Conv2d)]
        num_heads = {}
        for attn in attention_modules(work).values():
            if scope == "mlp_only":
                ignored.append(attn)
            else:
                num_heads[attn.qkv] = attn.num_heads
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruner = tp.pruner.MetaPruner(
                    work,
                    torch.randn(1, *input_size),
                    importance=tp.importance.MagnitudeImportance(p=2),
                    pruning_ratio=0.9,
                    num_heads=num_heads,
                    prune_head_dims=True,
                    ignored_layers=ignored,
                )
                pruner.step()
            with torch.no_grad():
                flops = 0
                with pc.macs.flop_counter() as counter:
                    work(torch.zeros(1, *input_size))
                flops = counter.get_total_flops() // 2
            out[scope] = (
                f"ok: at pruning ratio 0.9 the model has "
                f"{flops / pc.count_macs(model, input_size):.3f} of the MACs"
            )
        except Exception as err:  # any error: we report whatever it raised
            out[scope] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return out
