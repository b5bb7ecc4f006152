"""Reading the official FLatten-Swin checkpoint into our model (models/flatten_swin.py).

The state-dict names of ``FlattenSwinTransformer`` follow the public code
(LeapLabTHU/FLatten-Transformer), so loading is copying tensors: strictly (every trained tensor
present with its shape, nothing unknown), ignoring the buffers we rebuild from the architecture
and keeping our pruning state (gates, reweights) as freshly initialised.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from prune_core.prunable import prunable_modules
from prune_core.reweight import Reweight

# Buffers the official model saves that we rebuild from the architecture instead.
_REBUILT_BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")


def _pruning_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys that hold pruning state (gates, reweights), not trained weights."""
    keys: set[str] = set()
    for name, module in prunable_modules(model).items():
        keys |= {f"{name}.gates.{k}" for k in module.gates.state_dict()}
        keys |= {
            f"{name}.{child}.{k}"
            for child, m in module.named_children()
            if isinstance(m, Reweight)
            for k in m.state_dict()
        }
    return keys


def _some(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused by torch.load(weights_only=True), it holds more than tensors "
            f"(e.g. a training config object). If you trust the file, re-save only its weights: "
            f"torch.save({{'model': torch.load(p, weights_only=False)['model']}}, new_path). "
            f"Detail: {str(err).splitlines()[0]}"
        ) from err
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    elif isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(
            f"{path}: expected a state dict (bare, or under 'model' / 'state_dict') of tensors"
        )
    return {k.removeprefix("module."): v for k, v in raw.items()}


def load_flatten_checkpoint(
    model: nn.Module, path: str | Path, *, drop_head: bool = False
) -> nn.Module:
    """Load an official FLatten-Swin checkpoint into ``model``, strictly; returns ``model``.

    Every trained tensor must be present with the right shape, and nothing else may be there:
    a silent partial load would leave random weights in a model that looks fine. Buffers the
    model rebuilds (shift masks, relative position indices) are ignored, and the pruning state
    (gates, reweights) stays as freshly initialised. ``drop_head=True`` keeps the model's own
    classifier, for fine-tuning on a different number of classes.
    """
    path = Path(path)
    ckpt = _read_state_dict(path)
    own = model.state_dict()
    pruning = _pruning_state_keys(model)
    trained = set(own) - pruning
    ignored = {k for k in ckpt if k not in own and k.rsplit(".", 1)[-1] in _REBUILT_BUFFERS}
    if drop_head:
        head = {k for k in set(own) | set(ckpt) if k.startswith("head.")}
        trained -= head
        ignored |= head
    missing = trained - set(ckpt)
    unexpected = set(ckpt) - trained - ignored - pruning
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match {type(model).__name__}: missing keys "
            f"{_some(missing)}; unexpected keys {_some(unexpected)}"
        )
    wrong = [
        f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(trained)
        if ckpt[k].shape != own[k].shape
    ]
    if wrong:
        hint = (
            " (a different number of classes? pass drop_head=True)"
            if any(w.startswith("head.") for w in wrong)
            else ""
        )
        raise ValueError(f"{path}: {len(wrong)} shape mismatches{hint}: " + "; ".join(wrong[:5]))
    model.load_state_dict({**own, **{k: ckpt[k] for k in trained}}, strict=True)
    return model
