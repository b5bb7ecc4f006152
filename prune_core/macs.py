"""Analytic MAC model, differentiable in the kept widths (docs/method.md §4).

A model's multiply-accumulates split into a *fixed* part (patch embedding, classifier, patch
merging, anything we do not prune) and the prunable modules, whose cost is a closed formula of
their kept widths per head (``PrunableModule.macs``). One traced forward pass records each prunable
module's token count and sequence count (windows × images); the fixed part is what torch's own
counter (``FlopCounterMode``, total / 2) sees beyond the prunable modules at full width.

So ``MacModel`` answers, without running the model again:
- ``total(widths)`` for any integer widths (finalize's greedy search, plan checks),
- ``soft_total()`` from the gates' soft keep counts, with gradients to the logits (search loss),
and ``count_macs`` is the MACs of the model as if masked channels were removed. Tests check
the per-module formulas against ``FlopCounterMode`` and the pruned model against the prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from prune_core.prunable import MacValue, PrunableModule, prunable_modules


def check_target(target: float) -> None:
    """Raises ValueError unless the MAC target is a fraction of the full MACs in (0, 1]."""
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"MAC target must be in (0, 1], got {target}")


Widths = dict[str, dict[str, MacValue]]


def flop_counter() -> FlopCounterMode:
    """torch's counter, also counting CPU SDPA (which it leaves out): timm models use it.

    The CPU kernel takes the same q, k, v as the flash kernel, so it gets the flash formula.
    Registry formulas are already shape-wrapped; ``custom_mapping`` wraps again unless the
    function says ``_get_raw``, and the double wrap raised "sdpa_flop() got multiple values
    for keyword argument 'out_shape'" on every plain timm ViT on CPU.
    """
    aten = torch.ops.aten
    flash = flop_registry[aten._scaled_dot_product_flash_attention]

    def cpu_sdpa(*args, **kwargs) -> int:
        return flash(*args, **kwargs)

    cpu_sdpa._get_raw = True  # type: ignore[attr-defined]
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    return FlopCounterMode(display=False, custom_mapping=mapping)


@contextmanager
def counting(model: nn.Module) -> Iterator[FlopCounterMode]:
    """``flop_counter()`` around one forward of ``model``, without autograd.

    Parameters are switched to ``requires_grad=False`` for the count (and restored): torch's
    module tracker, inside the counter, hooks every module input that requires grad, and under
    ``no_grad`` it fails ("Expected gradient function to be set") on a parameter passed as a
    module's input, as timm's attention-pool head does with its latent query.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), flop_counter() as counter:
            yield counter
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class _Site:
    module: PrunableModule
    tokens: int
    batch: int  # sequences per image (windows for Swin, 1 for a ViT)
    calls: int = 1


class MacModel:
    """MACs of one image as a function of the kept widths of every prunable module."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int] | None = None) -> None:
        input_size = default_input_size(model) if input_size is None else input_size
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {input_size}")
        self.input_size = tuple(input_size)
        self.sites: dict[str, _Site] = {}
        modules = prunable_modules(model)
        handles = [
            m.register_forward_pre_hook(self._recorder(name), with_kwargs=True)
            for name, m in modules.items()
        ]
        param = next(model.parameters())
        x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
        was_training = model.training
        model.eval()
        try:
            with counting(model) as counter:
                model(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        torch_total = counter.get_total_flops() // 2
        full = self._prunable_total(
            {name: site.module.full_widths() for name, site in self.sites.items()}
        )
        self.fixed = int(torch_total - round(float(full)))
        if self.fixed < 0:
            raise RuntimeError("MAC model exceeds torch's count: a module formula is wrong")
        self.full = self.total(self.full_widths())

    def _recorder(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["x"]
            if name in self.sites:
                self.sites[name].calls += 1
            else:
                self.sites[name] = _Site(
                    module, tokens=x.shape[-2], batch=int(x.numel() // (x.shape[-2] * x.shape[-1]))
                )

        return hook

    def _prunable_total(self, widths: Widths) -> MacValue:
        total: MacValue = 0
        for name, site in self.sites.items():
            total = total + site.calls * site.module.macs(widths[name], site.tokens, site.batch)
        return total

    # -- queries ----------------------------------------------------------------------------
    def full_widths(self) -> dict[str, dict[str, int]]:
        return {name: site.module.full_widths() for name, site in self.sites.items()}

    def current_widths(self) -> dict[str, dict[str, int]]:
        """Widths under the gates' current modes (masked channels count as removed)."""
        return {name: site.module.widths() for name, site in self.sites.items()}

    def total(self, widths: Widths | None = None) -> int:
        widths = self.current_widths() if widths is None else widths
        return self.fixed + round(float(self._prunable_total(widths)))

    def soft_total(self) -> Tensor:
        """Differentiable MACs from the soft keep counts Σ sigmoid(θ) / H of every gate."""
        soft = {name: site.module.soft_widths() for name, site in self.sites.items()}
        return self.fixed + self._prunable_total(soft)

    def ratio(self, widths: Widths | None = None) -> float:
        return self.total(widths) / self.full


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the model was built for, when a caller leaves it out.

    The model's own image size first: timm's ``patch_embed.img_size`` or a FLatten model's
    ``img_size``, with the channels of the patch embedding's conv; then a Hugging Face model's
    ``config.num_channels`` and ``config.image_size``. timm's data config comes last because
    it keeps the pretrained config's size: ``vit_tiny_patch16_224`` created with
    ``img_size=32`` still says (3, 224, 224) there.
    """
    embed = getattr(model, "patch_embed", None)
    conv = getattr(embed, "proj", embed)
    chans = getattr(conv, "in_channels", None) or getattr(model, "in_chans", None)
    size = getattr(embed, "img_size", None) or getattr(model, "img_size", None)
    if chans and size:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(chans), int(h), int(w))
    config = getattr(model, "config", None)  # transformers: the model's own configuration
    chans, size = getattr(config, "num_channels", None), getattr(config, "image_size", None)
    if chans and size:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(chans), int(h), int(w))
    import timm.data  # here: only models without their own size need timm's data config

    return tuple(timm.data.resolve_model_data_config(model)["input_size"])


def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_size``.

    For a masked model this is the cost after ``prune``; for a plain one it equals torch's
    ``FlopCounterMode`` total / 2. ``input_size`` defaults to :func:`default_input_size`.
    """
    input_size = default_input_size(model) if input_size is None else input_size
    if not prunable_modules(model):
        with counting(model) as counter:
            param = next(model.parameters())
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
        return counter.get_total_flops() // 2
    return MacModel(model, input_size).total()


def count_params(model: nn.Module) -> int:
    """Trainable weights a deployed model carries (pruning state — gates — excluded)."""
    skip = {id(p) for m in prunable_modules(model).values() for p in m.pruning_parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
