"""``model: {source: hf, name: ...}``: a Hugging Face ``transformers`` image classifier.

``name`` is a local folder (what ``save_pretrained`` wrote) or a hub id (``owner/model``)
already in the local cache: with ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) nothing
is fetched (``local_files_only``). The pretrained weights are the sweep's teacher and every
trial's start, as a timm ``model.checkpoint`` is. The image processor's configuration
(``preprocessor_config.json``) gives the data transforms their mean, std and size.

``transformers`` is imported here only, on first use (``pip install flatten-prune[hf]``).
Errors are ``ValueError`` with one line naming the config field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a config stays torch-free (orchestrator.config imports is_local)
    from torch import nn

# the checkpoint's transformers config as the sweep's parent run keeps it: what
# ``orchestrator.pick`` rebuilds a picked model from (from_config: nothing downloaded, and no
# name read back from MLflow becomes a path)
CONFIG_ARTIFACT = "hf_config.json"
# keyword arguments model.kwargs may pass to from_pretrained / from_config (nothing that
# changes what is loaded, or from where)
ALLOWED_KWARGS = ("attn_implementation",)


@dataclass(frozen=True)
class Preprocessing:
    """The image processor's normalisation and size: mean, std per channel, (height, width)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]


def offline() -> bool:
    """Whether the hub must not be reached (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def is_local(name: str) -> bool:
    """A folder, not a hub id: an existing directory, or a name a hub id cannot be (absolute,
    ``./``, ``~``, or more than one ``/``)."""
    return (
        Path(name).expanduser().is_dir() or name.startswith((".", "/", "~")) or name.count("/") > 1
    )


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError(
            "model.source: hf needs transformers: pip install flatten-prune[hf]"
        ) from None
    return transformers


def _where(name: str) -> dict:
    """from_pretrained's source arguments for ``name``; a missing folder is one line."""
    if is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"model.name: no such folder: {name}")
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model.name: {name} has no config.json (not a save_pretrained folder)"
            )
        return {"pretrained_model_name_or_path": str(path)}
    return {"pretrained_model_name_or_path": name, "local_files_only": offline()}


def _one_line(err: Exception) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= 300 else text[:300] + " ..."


def model_config(name: str):
    """The checkpoint's ``PretrainedConfig`` (config.json only: no weights read)."""
    tf = _transformers()
    try:
        return tf.AutoConfig.from_pretrained(**_where(name))
    except (OSError, ValueError) as err:
        raise ValueError(f"model.name: {name}: {_one_line(err)}") from None


def config_dict(name: str) -> dict:
    """The checkpoint's whole config (every field, ``model_type`` included) as JSON, as
    ``config.json`` holds it: :data:`CONFIG_ARTIFACT` on the parent run."""
    import json

    return json.loads(model_config(name).to_json_string(use_diff=False))


def preprocessing(name: str) -> Preprocessing:
    """Mean, std and size from the checkpoint's image processor configuration."""
    tf = _transformers()
    try:
        found, _ = tf.image_processing_utils.ImageProcessingMixin.get_image_processor_dict(
            **_where(name)
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.name: {name}: no image processor config: {_one_line(err)}"
        ) from None
    size = found.get("crop_size") or found.get("size")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if isinstance(size, dict) and "shortest_edge" in size and "height" not in size:
        size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    if not isinstance(size, dict) or not {"height", "width"} <= set(size):
        raise ValueError(f"model.name: {name}: the image processor's size {size!r} is not fixed")
    mean, std = found.get("image_mean"), found.get("image_std")
    if mean is None or std is None:
        raise ValueError(f"model.name: {name}: the image processor has no image_mean / image_std")
    return Preprocessing(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        (int(size["height"]), int(size["width"])),
    )


def image_size(name: str) -> int:
    """The side of the square images the checkpoint's image processor makes (pixels): what
    ``model.img_size`` is when an hf sweep omits it. ValueError naming ``model.img_size`` for
    a size that is not square or below the schema's 8 px."""
    height, width = preprocessing(name).size
    if height != width:
        raise ValueError(
            f"model.img_size: {name}'s image processor takes {height}x{width}, not square "
            "images; a sweep needs square ones"
        )
    if height < 8:
        raise ValueError(f"model.img_size: {name}'s image processor takes {height} px, below 8")
    return height


def create(name: str, kwargs: dict, *, pretrained: bool) -> nn.Module:
    """The image classifier of ``name`` in eval mode: pretrained weights (``from_pretrained``),
    or the architecture alone (``from_config``: trials then load the teacher's state)."""
    tf = _transformers()
    unknown = sorted(set(kwargs) - set(ALLOWED_KWARGS))
    if unknown:
        raise ValueError(f"model.kwargs: {unknown} not allowed with source hf: {ALLOWED_KWARGS}")
    try:
        if pretrained:
            model = tf.AutoModelForImageClassification.from_pretrained(**_where(name), **kwargs)
        else:
            config = model_config(name)
            model = tf.AutoModelForImageClassification.from_config(config, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"model.name: {name}: {_one_line(err)}") from None
    return model.eval()


def check(name: str, num_classes: int, img_size: int, channels: int) -> Preprocessing:
    """What a sweep needs of the checkpoint, before anything runs: its classes are
    ``model.num_classes``, its image processor's size is ``model.img_size`` square, and its
    input channels are the data's. Returns the preprocessing."""
    config = model_config(name)
    labels = getattr(config, "num_labels", None)
    if labels != num_classes:
        raise ValueError(f"model.num_classes: {num_classes}, but {name} has {labels} labels")
    prep = preprocessing(name)
    if prep.size != (img_size, img_size):
        raise ValueError(
            f"model.img_size: {img_size}, but {name}'s image processor takes "
            f"{prep.size[0]}x{prep.size[1]}"
        )
    chans = getattr(config, "num_channels", 3)
    if chans != channels or len(prep.mean) != channels:
        raise ValueError(f"model.name: {name} takes {chans} channels, the data gives {channels}")
    return prep


def built_prunable(name: str, kwargs: dict) -> nn.Module:
    """The architecture of ``name`` built on the meta device (shapes only: no memory, no
    weights read; on the CPU where the meta device cannot build it) and made prunable: what
    ``--dry-run`` checks. ValueError names ``model.name`` when make_prunable refuses it."""
    import torch

    import prune_core

    try:
        try:
            with torch.device("meta"):
                return prune_core.make_prunable(
                    create(name, kwargs, pretrained=False), verbose=False
                )
        except (NotImplementedError, RuntimeError):  # reads a value while built (Swin's index)
            return prune_core.make_prunable(create(name, kwargs, pretrained=False), verbose=False)
    except ValueError as err:
        raise ValueError(f"model.name: {name}: {_one_line(err)}") from None


def field_of(err: ValueError) -> tuple[str, str]:
    """(field, message) of one of this module's errors ("model.name: ...")."""
    field, _, message = str(err).partition(": ")
    return (field, message) if field.startswith("model.") else ("model.name", str(err))
