"""Parameter groups for the optimisers: timm's weight-decay convention, pruning state apart.

Weight decay pulls a weight towards 0. That is right for matrices, wrong for what sets a scale
or a position: norms, biases, positional encodings and bias tables, FLatten's per-channel
``scale``. timm's ``param_groups_weight_decay`` exempts 1-D parameters and biases, plus the names
a model lists in ``no_weight_decay()``; the prunable modules add theirs
(``PrunableModule.no_weight_decay_names``). Pruning state — gate logits and reweights — is left
out here: search and fine-tune give it its own groups (or none).
"""

from __future__ import annotations

from timm.optim import param_groups_weight_decay
from torch import nn

from prune_core.prunable import prunable_modules


def no_weight_decay_patterns(model: nn.Module) -> set[str]:
    """Parameter names (fnmatch patterns, as timm takes them) that must not be decayed."""
    names: set[str] = set()
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    for prefix, module in prunable_modules(model).items():
        names |= {f"{prefix}.{n}" for n in module.no_weight_decay_names}
    return names


def weight_decay_groups(
    model: nn.Module, weight_decay: float, exclude: set[int] = frozenset()
) -> list[dict]:
    """AdamW groups ``[{params, weight_decay}]`` for the trainable weights of ``model``.

    Pruning state (gate logits, reweights) is never included; ``exclude``: ids of further
    parameters handled elsewhere. Groups left empty are dropped. Source:
    ``timm.optim.param_groups_weight_decay`` (timm's training convention).
    """
    exclude = set(exclude) | {
        id(p) for m in prunable_modules(model).values() for p in m.pruning_parameters()
    }
    groups = param_groups_weight_decay(
        model, weight_decay, no_weight_decay_list=no_weight_decay_patterns(model)
    )
    out = []
    for group in groups:
        params = [p for p in group["params"] if id(p) not in exclude]
        if params:
            out.append({"params": params, "weight_decay": group["weight_decay"]})
    return out
